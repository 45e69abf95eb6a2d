"""The deployment fold runner against a real Prefect server: a fold's run that no worker
picks up fails the pipeline naming the work pool (and is cancelled, so no worker starts it
later), while a fold that has started may take longer than that bound."""

from __future__ import annotations

import contextvars
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pneumo_core.data.synthetic import generate
from tasks.training import train_fold_on_worker
from tasks.worker_runs import NotPickedUp
from tests.integration.conftest import REPO, PrefectServer, stop_tree

IDLE_POOL = "pneumo-no-worker"
DEPLOYMENT = "train-fold/no-worker"
BOUND_S = 10.0  # long enough for the stand-in worker thread to mark the run Running
PICKUP_S = 3.0  # the bound in the pipeline test
DEADLINE_S = 300.0  # that test's own: its pipeline takes 17 s idle, 69 s on a loaded machine


@pytest.fixture(scope="module")
def idle_deployment(prefect_server: PrefectServer) -> Iterator[str]:
    """The real train-fold flow deployed to a process pool that no worker polls."""
    from prefect import flow, get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=IDLE_POOL, type="process"))
        fold_flow = flow.from_source(
            source=str(REPO), entrypoint="flows/train_fold.py:train_fold_flow"
        )
        fold_flow.deploy(name="no-worker", work_pool_name=IDLE_POOL, print_next_steps=False)
        yield DEPLOYMENT


def runs_of(deployment: str) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["no-worker"]))
        )


# The pipeline in a process of its own, so that the test ends at its own deadline whatever the
# bound does (a fold task that waited for ever would also keep a thread of pytest's alive).
PIPELINE = textwrap.dedent(
    """
    import json, sys
    from flows.pipeline import pipeline
    data, storage, deployment, pickup_s = sys.argv[1:5]
    state = pipeline(
        source=data, storage=storage, preset="ci", overrides={"image_size": 64, "epochs": 1},
        folds=[0], fold_runner="deployment", fold_deployment=deployment,
        fold_pickup_timeout_s=float(pickup_s), return_state=True,
    )
    print(json.dumps({"failed": state.is_failed(), "message": state.message}), flush=True)
    """
)


def test_a_fold_no_worker_picks_up_fails_the_pipeline_naming_the_pool(
    prefect_server: PrefectServer, idle_deployment: str, tmp_path: Path
) -> None:
    data = generate(tmp_path / "data", n_train=12, n_test=2, image_size=64, seed=3)
    before = {r.id for r in runs_of(idle_deployment)}
    process = subprocess.Popen(
        [sys.executable, "-c", PIPELINE, str(data), (tmp_path / "store").as_uri(),
         idle_deployment, str(PICKUP_S)],
        cwd=REPO, env={**prefect_server.env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = process.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        stop_tree(process)
        out, err = process.communicate()
        killed = True
    else:
        killed = False
    if killed:
        children = [r.state_type.value for r in runs_of(idle_deployment) if r.id not in before]
        pytest.fail(
            f"the pipeline had not ended {DEADLINE_S:g} s after it started, with a pickup "
            f"timeout of {PICKUP_S:g} s; its fold runs: {children}; its last output:\n"
            + "\n".join(err.splitlines()[-8:])
        )
    assert process.returncode == 0, err[-3000:]
    state = json.loads(out.strip().splitlines()[-1])
    assert state["failed"]
    assert f"work pool {IDLE_POOL!r}" in state["message"], state["message"]
    children = [r for r in runs_of(idle_deployment) if r.id not in before]
    assert len(children) == 1  # not retried: another try would wait on the same pool
    assert children[0].state_type.value == "CANCELLED"


def test_a_started_fold_may_run_longer_than_the_pickup_bound(idle_deployment: str) -> None:
    """The child run is moved through the API as a worker would move it: Running at once,
    Completed after twice the bound."""
    from prefect import flow, get_client
    from prefect.states import Completed, Running

    before = {r.id for r in runs_of(idle_deployment)}

    def act_as_worker() -> None:
        while not (new := [r for r in runs_of(idle_deployment) if r.id not in before]):
            time.sleep(0.2)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(new[0].id, Running(), force=True)
            time.sleep(2 * BOUND_S)
            client.set_flow_run_state(new[0].id, Completed(), force=True)

    # with this test's Prefect settings (a context variable, which threads do not inherit)
    worker = threading.Thread(target=contextvars.copy_context().run, args=(act_as_worker,))
    worker.start()

    @flow
    def one_fold() -> dict:
        return train_fold_on_worker(idle_deployment, "file:///unused", "exp-1", 0, None, BOUND_S)

    result = one_fold()
    worker.join(timeout=30)
    assert result["fold"] == 0


def test_pickup_failure_is_not_retried() -> None:
    from tasks.policy import is_deterministic

    assert is_deterministic(NotPickedUp("no worker"))
