"""The Prefect server restarted while `pneumo run` trains against it: the run goes on or fails
in one clear line, a resume finishes it, and its state is in the API afterwards."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pneumo_core.data.synthetic import generate
from tests.integration.conftest import REPO, server_settings, start_server, stop_tree

pytestmark = pytest.mark.slow


def _run(server_env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", *args],
        cwd=REPO, env={**server_env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_prefect_server_restart_during_a_run(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    data = generate(tmp_path / "data", n_train=48, n_test=4, image_size=96, seed=8)
    store = tmp_path / "store"
    server, port = server_settings(tmp_path / "prefect")
    first = start_server(server, port)
    args = ["--source", str(data), "--storage", str(store), "--preset", "ci", "--epochs", "3",
            "--set", "image_size=64", "--run-id", "restart"]  # fmt: skip
    run = None
    try:
        run = _run(server.env, *args)
        deadline = time.monotonic() + 400
        while not list(store.glob("runs/restart/fold-*/checkpoint-last.pt")):
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1]
            time.sleep(0.2)
        stop_tree(first)  # the server goes away in the middle of training ...
        time.sleep(2)
        start_server(server, port)  # ... and comes back: same port, same database
        out, err = run.communicate(timeout=900)
        if run.returncode != 0:  # failed: in one clear line, and a resume finishes the run
            lines = [line for line in err.splitlines() if line.startswith("pneumo run: error")]
            assert len(lines) == 1, err[-3000:]
            resumed = _run(server.env, *args)
            out, err = resumed.communicate(timeout=900)
            assert resumed.returncode == 0, err[-3000:]
        assert "run restart: OOF mAP" in out
        with (
            temporary_settings({PREFECT_API_URL: server.api_url}),
            get_client(sync_client=True) as client,
        ):
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["pipeline"]))
            )
        states = sorted(r.state_type.value for r in runs)
        assert "COMPLETED" in states, states
        print(f"\npipeline flow runs after the restart: {states} (exit {run.returncode} first)")
    finally:
        if run is not None and run.poll() is None:
            run.kill()  # its guard ends what it started
        server.stop_all()
