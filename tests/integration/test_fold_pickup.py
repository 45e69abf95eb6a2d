"""The deployment fold runner against a real Prefect server: a fold's run that no worker
picks up fails the pipeline naming the work pool (and is cancelled, so no worker starts it
later), while a fold that has started may take longer than that bound."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.pipeline import pipeline
from pneumo_core import synthetic
from tasks.training import train_fold_on_worker
from tasks.worker_runs import NotPickedUp
from tests.integration.conftest import REPO, PrefectServer

IDLE_POOL = "pneumo-no-worker"
DEPLOYMENT = "train-fold/no-worker"
BOUND_S = 10.0  # long enough for the stand-in worker thread to mark the run Running


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


def test_a_fold_no_worker_picks_up_fails_the_pipeline_naming_the_pool(
    idle_deployment: str, tmp_path: Path
) -> None:
    data = synthetic.generate(tmp_path / "data", n_train=12, n_test=2, image_size=64, seed=3)
    before = {r.id for r in runs_of(idle_deployment)}
    state = pipeline(
        source=str(data), storage=(tmp_path / "store").as_uri(), preset="ci",
        overrides={"image_size": 64, "epochs": 1}, folds=[0], fold_runner="deployment",
        fold_deployment=idle_deployment, fold_pickup_timeout_s=3, return_state=True,
    )  # fmt: skip
    assert state.is_failed()
    assert f"work pool {IDLE_POOL!r}" in state.message, state.message
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
