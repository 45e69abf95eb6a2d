"""Prefect's overhead on the demo: `pneumo run` (the pipeline flow on Prefect's ephemeral API,
what `pneumo demo` runs) against the same core functions called directly, on the same data.

Both sides run as fresh processes on fresh stores, so each pays for its own imports:

- prefect: `pneumo run --preset ci` with its own PREFECT_HOME (the ephemeral server's
  database), whole wall time; then each task's run time read back from that database;
- direct: `direct_steps` in a fresh process, the pipeline's steps as plain calls (ingest,
  prepare, create the run, train the folds as the local runner does, evaluate, predict and
  check the submission, promote, model card and report), each step timed.

One JSON line for the whole run (ours = Prefect's wall time, baseline = the direct one, so the
ratio is the slowdown; the overhead in seconds and as a share of the Prefect run in the
note), then one per step (Prefect's task time against the direct call's).

    .venv/bin/python -m bench.bench_orchestration [--out DIR] [--epochs N] [--fresh-database]

`make bench` passes `--epochs 2`: the folds' training is shorter on both sides, Prefect's
work around it is not, so its share of the wall time is a stricter figure than the 10-epoch
demo's, and the run-to-run noise of training (a few seconds) weighs less.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.demo_training import train_folds
from bench.record import emit

# Prefect task run names (pipeline) -> the direct side's step names
STEPS = {
    "ingest": "ingest",
    "prepare": "prepare",
    "create-run": "create-run",
    "train-fold": "train-folds",
    "evaluate": "evaluate",
    "predict-test-images": "predict",
    "promote": "promote",
    "report": "report",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: temporary)")
    parser.add_argument(
        "--fresh-database",
        action="store_true",
        help="first a run that creates the Prefect database (as a user's very first run)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs per fold (default: the demo's); Prefect's overhead does not grow with "
        "them, so fewer make a quicker and stricter measurement of its share",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-orchestration-") as tmp:
        compare(args.out or Path(tmp), args.fresh_database, args.epochs)


def compare(root: Path, fresh_database: bool, epochs: int | None) -> None:
    from flows.cli.pipeline import DEMO_PIXELS, DEMO_TEST, DEMO_TRAIN
    from pneumo_core.data.synthetic import generate
    from pneumo_core.layout import TRAIN_LABELS

    source = root / "data"
    if not (source / TRAIN_LABELS).exists():
        generate(source, DEMO_TRAIN, DEMO_TEST, DEMO_PIXELS)
    env = os.environ | {"PREFECT_HOME": str(root / "prefect-home")}
    env.pop("PREFECT_API_URL", None)  # the ephemeral API, as `pneumo demo` on a fresh machine
    first = prefect_run(source, root, env, epochs)[0] if fresh_database else None
    if first is None:  # the database exists, as on a machine in use: create it
        prefect = str(Path(sys.executable).with_name("prefect"))
        subprocess.run([prefect, "server", "database", "upgrade", "-y"], env=env, check=True,
                       capture_output=True)  # fmt: skip
    prefect_wall, since = prefect_run(source, root, env, epochs)
    tasks = task_seconds(env, since)

    store = (root / f"store-direct-{time.time_ns()}").as_uri()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", DIRECT, str(source), store, str(epochs or "")],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    direct_wall = time.perf_counter() - started
    steps = json.loads(done.stdout.strip().splitlines()[-1])

    overhead = prefect_wall - direct_wall
    demo = f"demo at {epochs} epochs" if epochs else "demo"
    # training dominates both and varies by a few seconds run to run: the rest compares better
    outside = (prefect_wall - tasks["train-fold"]) - (direct_wall - steps["train-folds"])
    if first is not None:
        emit(
            f"{demo} under Prefect, first run on a fresh Prefect database, vs core calls, "
            "wall time",
            first,
            "s",
            baseline=direct_wall,
            higher_is_better=False,
            note=f"overhead {first - direct_wall:.1f} s = {(first - direct_wall) / first:.1%}: "
            "the temporary server creates its database first",
            overhead_s=round(first - direct_wall, 1),
        )
    emit(
        f"{demo} under Prefect (pneumo run, ephemeral API) vs core calls, wall time",
        prefect_wall,
        "s",
        baseline=direct_wall,
        higher_is_better=False,
        note=f"overhead {overhead:.1f} s = {overhead / prefect_wall:.1%} of the Prefect run "
        "(target < 10 %); both fresh processes on fresh stores, same data; the Prefect "
        f"database exists (not the machine's first run); outside the folds' training "
        f"{outside:.1f} s",
        overhead_s=round(overhead, 1),
        overhead_outside_training_s=round(outside, 1),
        overhead_share=round(overhead / prefect_wall, 4),
    )
    for task_name, step in STEPS.items():
        if task_name in tasks and step in steps:
            emit(
                f"{demo} under Prefect, task {task_name} vs core call",
                tasks[task_name],
                "s",
                baseline=steps[step],
                higher_is_better=False,
                note="Prefect's task run time (its database) against the direct call's",
                overhead_s=round(tasks[task_name] - steps[step], 2),
            )


def prefect_run(
    source: Path, root: Path, env: dict[str, str], epochs: int | None
) -> tuple[float, float]:
    """`pneumo run` of the demo's recipe on a fresh store: (wall seconds, start time)."""
    pneumo = str(Path(sys.executable).with_name("pneumo"))
    store = (root / f"store-prefect-{time.time_ns()}").as_uri()
    command = [pneumo, "run", "--source", str(source), "--storage", store, "--preset", "ci"]
    if epochs:
        command += ["--epochs", str(epochs)]
    began, started = time.time(), time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started, began


def task_seconds(env: dict[str, str], since: float) -> dict[str, float]:
    """Each pipeline step's task run time (started after `since`) from the ephemeral server's
    database; the folds' tasks as one span (first start to last end), as they run at once."""
    script = (
        "import asyncio, json\n"
        "from prefect.client.orchestration import get_client\n"
        "async def main():\n"
        "    async with get_client() as client:\n"
        "        runs = await client.read_task_runs()\n"
        "    print(json.dumps([[r.name, r.start_time.timestamp(), r.end_time.timestamp()]\n"
        "                      for r in runs if r.start_time and r.end_time]))\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True
    )
    spans: dict[str, tuple[float, float]] = {}
    for name, start, end in json.loads(done.stdout.strip().splitlines()[-1]):
        if start < since:
            continue
        key = next((k for k in STEPS if name.startswith(k)), None)
        if key is None or name.endswith("-here"):  # -here: the local runner's fold wrapper
            continue
        low, high = spans.get(key, (start, end))
        spans[key] = (min(low, start), max(high, end))
    return {key: end - start for key, (start, end) in spans.items()}


# The direct side's process. Run with -c, not -m: prepare's workers are spawned, and a spawned
# child imports the parent's main module first (this benchmark's imports: ~8 s per worker
# here), which `pneumo run`'s children do not pay.
DIRECT = (
    "import json, sys\n"
    "from bench.bench_orchestration import direct_steps\n"
    "print(json.dumps(direct_steps(sys.argv[1], sys.argv[2], int(sys.argv[3] or 0) or None)))\n"
)


def direct_steps(source: str, uri: str, epochs: int | None) -> dict[str, float]:
    """The pipeline's steps for a new `ci` run as plain core calls, each timed."""
    from pneumo_core.config.run import preset
    from pneumo_core.data.ingest import ingest
    from pneumo_core.data.prepare import prepare_dataset
    from pneumo_core.evaluation import evaluate, submission
    from pneumo_core.layout import manifest_key, run_key
    from pneumo_core.model import predict
    from pneumo_core.reports import model_card, report
    from pneumo_core.runs import champion
    from pneumo_core.runs.run import create_run
    from pneumo_core.storage.open import open_store

    seconds: dict[str, float] = {}

    @contextmanager
    def timed(step: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        seconds[step] = time.perf_counter() - started

    store = open_store(uri)
    config = preset("ci", **({"epochs": epochs} if epochs else {}))
    with timed("ingest"):
        ingest(source, store, progress=False)
    with timed("prepare"):
        prepare_dataset(
            store, image_size=config.image_size, n_folds=config.n_folds, seed=config.seed,
            progress=False,
        )  # fmt: skip
    with timed("create-run"):
        run_id = create_run(store, config)
    with timed("train-folds"):
        train_folds(store, run_id, config)
    with timed("evaluate"):
        evaluation = evaluate.evaluate_run(store, run_id)
    with timed("predict"), tempfile.TemporaryDirectory() as tmp:
        result = predict.predict_test_set(store, run_id, Path(tmp) / "submission.csv")
        if problems := submission.check_submission(result.path):
            raise RuntimeError(f"invalid submission: {problems[:3]}")
        store.put_file(run_key(run_id, "submission.csv"), result.path)
    with timed("promote"):
        digests = champion.data_digests(store, manifest_key(config.dataset))
        new = champion.candidate(
            run_id, evaluation.oof_map, config.config_hash(), *digests, evaluation.protocol
        )
        decision = champion.promote_if_better(store, new)
    with timed("report"):
        model_card.write_model_card(store, run_id)
        report.write_report(store, run_id, evaluation, range(config.n_folds), decision)
    return seconds


if __name__ == "__main__":
    main()
