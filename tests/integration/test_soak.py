"""Soak: the pipeline N times back to back on generated data, against SeaweedFS and a real
Prefect server, as `pneumo run` processes. Not in the default run (marker `soak`):

    .venv/bin/python -m pytest -m soak tests/integration/test_soak.py -s   # PNEUMO_SOAK_RUNS=N

Checks that every run completed (exit 0 and COMPLETED in the API), that no object in the
store is orphaned (each one belongs to the manifest, the prepared cache's checksums, a run
that completed, or the champion), and that the memory and open files of the long-lived
servers did not grow run over run; prints the figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pneumo_core import DEFAULT_DATASET
from pneumo_core.data.synthetic import generate
from pneumo_core.layout import manifest_key
from pneumo_core.storage.open import open_store
from tests.integration.conftest import REPO, PrefectServer, descendants
from tests.seaweedfs import S3Server

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600)]
RUNS = int(os.environ.get("PNEUMO_SOAK_RUNS", "3"))
OWN_PREFIXES = ("prefect-results/",)  # Prefect's persisted task results (cache of ingest/prepare)


def _usage(pids: list[int]) -> tuple[int, int]:
    """Resident memory (KiB) and open file descriptors of these processes, summed."""
    rss = fds = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            rss += int(
                next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
            )
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, StopIteration):
            continue
    return rss, fds


def _open_files(pids: list[int]) -> list[str]:
    """What the processes' descriptors point at (sockets as 'socket', files by path)."""
    targets = []
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with_target = os.readlink(fd)
                targets.append("socket" if with_target.startswith("socket:") else with_target)
        except OSError:
            continue
    return targets


def _orphans(storage: str, run_ids: list[str]) -> list[str]:
    store = open_store(storage)
    manifest = store.get_json(manifest_key(DEFAULT_DATASET))
    known = {m["key"] for m in manifest["members"]} | {manifest_key(DEFAULT_DATASET)}
    for summary_key in [k for k in store.list("prepared/") if k.endswith("/summary.json")]:
        prefix = summary_key.removesuffix("summary.json")
        known |= {prefix + name for name in store.get_json(summary_key)["sha256"]} | {summary_key}
    known.add("models/champion.json")
    return [
        key for key in store.list()
        if key not in known and not key.startswith(OWN_PREFIXES)
        and not any(key.startswith(f"runs/{r}/") for r in run_ids)
    ]  # fmt: skip


def test_back_to_back_runs(
    prefect_server: PrefectServer, s3_env: str, seaweedfs: S3Server, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    data = generate(tmp_path / "data", n_train=32, n_test=4, image_size=96, seed=11)
    env = {**os.environ, **prefect_server.env, "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_HOME", None)
    servers = [p.pid for p in prefect_server.processes]
    servers += [d for pid in list(servers) for d in descendants(pid)]
    port = seaweedfs.endpoint.rsplit(":", 1)[1]
    weed = [int(p.name) for p in Path("/proc").glob("[0-9]*") if _is_weed(p, port)]
    run_ids, figures, weed_files = [], [], []
    for n in range(RUNS):
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "run", "--source", str(data), "--storage",
             s3_env, "--preset", "ci", "--epochs", "1", "--set", "image_size=64"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        run_ids.append(done.stdout.split("run ", 1)[1].split(":", 1)[0])
        figures.append((n, time.monotonic() - started, *_usage(servers), *_usage(weed)))
        weed_files.append(_open_files(weed))
    with (
        temporary_settings({PREFECT_API_URL: prefect_server.api_url}),
        get_client(sync_client=True) as client,
    ):
        pipelines = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["pipeline"]))
        )
    assert len(pipelines) == RUNS
    assert all(r.state_type.value == "COMPLETED" for r in pipelines), pipelines
    assert not _orphans(s3_env, run_ids)
    print("\nrun  seconds  prefect RSS KiB  prefect fds  seaweedfs RSS KiB  seaweedfs fds")
    for row in figures:
        print("{:>3}  {:>7.1f}  {:>15}  {:>11}  {:>17}  {:>13}".format(*row))
    first, last = Counter(weed_files[0]), Counter(weed_files[-1])
    print("seaweedfs descriptors new since run 0:", dict((last - first).most_common(20)))
    (_, _, rss_1, fds_1, wrss_1, wfds_1), (*_, rss_n, fds_n, wrss_n, wfds_n) = (
        figures[0],
        figures[-1],
    )
    assert fds_n <= fds_1 + 5 and wfds_n <= wfds_1 + 20, figures  # open files: flat
    assert rss_n <= rss_1 * 1.25 and wrss_n <= wrss_1 * 1.25, figures  # memory: no steady climb


def _is_weed(proc: Path, port: str) -> bool:
    try:
        args = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return args[1:2] == [b"mini"] and f"-s3.port={port}".encode() in args
