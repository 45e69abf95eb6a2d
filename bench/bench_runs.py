"""`pneumo runs` on a store with hundreds of runs: pneumo_core.runs.list_runs (one listing of
runs/, the small records read in parallel) against a plain loop that lists each run's folder
and reads its records one after the other. On a local folder and on SeaweedFS (S3).

    .venv/bin/python bench/bench_runs.py --runs 300 [--s3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from pathlib import Path

from bench.record import emit
from pneumo_core.config.run import preset
from pneumo_core.layout import run_key
from pneumo_core.runs.catalog import list_runs
from pneumo_core.runs.run import create_run
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.local import LocalStore
from pneumo_core.storage.s3 import S3Store

SUBMISSION = "patientId,PredictionString\n" + "".join(
    f"{uuid.UUID(int=i)},0.9 10 20 30 40\n" for i in range(3000)
)


def fill(store: ObjectStore, n_runs: int) -> None:
    """Runs as the pipeline leaves them: 4 folds of checkpoints and records each."""
    config = preset("default")
    for i in range(n_runs):
        run_id = f"20260101-{i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}-{i:06x}"
        create_run(store, config, run_id)
        for k in range(4):
            for name in ("checkpoint-last.pt", "checkpoint-best.pt"):
                store.put_bytes(run_key(run_id, f"fold-{k}/{name}"), b"x")
            store.put_text(run_key(run_id, f"fold-{k}/metrics.jsonl"), "{}\n")
            store.put_text(run_key(run_id, f"fold-{k}/oof_predictions.csv"), "patientId\n")
            store.put_json(run_key(run_id, f"fold-{k}/done.json"), {"fold": k})
        store.put_json(run_key(run_id, "evaluation.json"), {"oof_map": 0.2})
        store.put_text(run_key(run_id, "submission.csv"), SUBMISSION)
        store.put_text(run_key(run_id, "report.md"), "# Run\n")


def plain_loop(store: ObjectStore) -> int:
    """What a hand-written listing does: every run's folder listed, records read in turn."""
    run_ids = sorted({k.split("/")[1] for k in store.list("runs/") if k.endswith("/config.json")})
    for run_id in run_ids:
        files = store.list(run_key(run_id, ""))
        json.loads(store.get_text(run_key(run_id, "config.json")))
        if run_key(run_id, "evaluation.json") in files:
            store.get_json(run_key(run_id, "evaluation.json"))
        if run_key(run_id, "submission.csv") in files:
            store.get_text(run_key(run_id, "submission.csv")).count("\n")
    return len(run_ids)


def measure(store: ObjectStore, kind: str, n_runs: int) -> None:
    fill(store, n_runs)
    timings = {}
    candidates = {"list_runs": lambda: len(list_runs(store)), "loop": lambda: plain_loop(store)}
    for name, run in candidates.items():
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            found = run()
            best = min(best, time.perf_counter() - started)
        assert found == n_runs, (name, found)
        timings[name] = best
    emit(
        f"pneumo runs, {n_runs} runs, {kind} store",
        timings["list_runs"],
        "s",
        baseline=timings["loop"],
        higher_is_better=False,
        note="baseline: list each run's folder and read its records one after the other",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--s3", action="store_true", help="also on a SeaweedFS server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pneumo-bench-runs-") as tmp:
        measure(LocalStore(Path(tmp) / "store"), "file", args.runs)
        if args.s3:
            from tests import seaweedfs

            (Path(tmp) / "weed").mkdir()
            process, server = seaweedfs.start(
                Path(tmp) / "weed", "bench", access_key="bench", secret_key=uuid.uuid4().hex
            )
            try:
                store = S3Store(
                    server.bucket, "runs-bench", endpoint_url=server.endpoint,
                    region=server.region, access_key=server.access_key,
                    secret_key=server.secret_key, cache_dir=Path(tmp) / "cache",
                )  # fmt: skip
                measure(store, "SeaweedFS S3", args.runs)
            finally:
                seaweedfs.stop(process)


if __name__ == "__main__":
    main()
