"""Training as Prefect tasks: one run's configuration, one fold's training, and one fold
handed to a GPU worker through its deployment.

Training is resumable in the core (checkpoint-last, done.json), so a retried task or a
re-run pipeline continues where it stopped and never retrains a finished fold.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from prefect import get_client, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.states import Cancelled

from flows.deployment_names import GPU_TRAIN_TAG
from pneumo_core import train
from pneumo_core.config import RunConfig
from pneumo_core.errors import PneumoError
from pneumo_core.run_ids import key_slug
from pneumo_core.storage import open_store
from tasks.policy import RETRY_OPTIONS, NotRetried

FOLD_RETRIES = 2
PICKUP_TIMEOUT_S = 600.0  # how long a fold's run may wait (Scheduled/Pending) for a worker
POLL_S = 2.0


class FoldRunFailed(PneumoError):
    """A fold's child flow run did not complete (failed, crashed or cancelled)."""


class FoldNotPickedUp(NotRetried):
    """No worker started a fold's run in time: another try would wait on the same pool."""


@task(name="create-run", task_run_name="create-run", **RETRY_OPTIONS)
def create_run(storage: str, config: dict[str, Any], run_id: str | None) -> str:
    """A new run (config.json written), or the existing run `run_id` resumed unchanged."""
    store = open_store(storage)
    run_id = train.create_run(store, RunConfig.from_dict(config), run_id=run_id)
    get_run_logger().info("run %s: %s", run_id, store.url(train.run_key(run_id, "config.json")))
    return run_id


def progress_key(run_id: str, fold: int) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return f"train-{key_slug(run_id)}-fold-{fold}"


@task(name="train-fold", tags=[GPU_TRAIN_TAG], task_run_name="train-fold-{fold}", **RETRY_OPTIONS)
def train_fold(storage: str, run_id: str, fold: int) -> dict:
    """One fold, with its progress as a Prefect progress artifact and log lines per epoch."""
    logger = get_run_logger()
    store = open_store(storage)
    epochs = train.load_run_config(store, run_id).epochs
    artifact = create_progress_artifact(
        0.0, key=progress_key(run_id, fold), description=f"run {run_id} fold {fold}"
    )

    def on_epoch(record: dict[str, Any]) -> None:
        done = int(record["epoch"]) + 1  # records count epochs from 0
        update_progress_artifact(artifact, min(100.0, 100.0 * done / epochs))
        shown = ", ".join(
            f"{k}={_short(v)}" for k, v in record.items() if k not in ("epoch", "fold")
        )
        logger.info("fold %d epoch %d/%d: %s", fold, done, epochs, shown)

    result = train.train_fold(store, run_id, fold, on_epoch=on_epoch)
    update_progress_artifact(artifact, 100.0)
    logger.info(
        "fold %d done: %s epochs, best epoch %s, best val mAP %s",
        fold,
        result.get("epochs"),
        result.get("best_epoch"),
        _short(result.get("best_val_map")),
    )
    return result


@task(
    name="train-fold-on-worker",
    task_run_name="train-fold-{fold}-on-worker",
    **(RETRY_OPTIONS | {"retries": FOLD_RETRIES}),
)
def train_fold_on_worker(
    deployment: str,
    storage: str,
    run_id: str,
    fold: int,
    job_variables: dict[str, Any] | None = None,
    pickup_timeout_s: float = PICKUP_TIMEOUT_S,
) -> dict:
    """Start the fold's `train-fold` deployment run and wait; raise unless it completed.

    Flow retries do not cover a Crashed child (killed container, out of memory); this task's
    retries do, each starting a fresh child that resumes from the fold's last checkpoint.
    `job_variables` (the fold's own GPU, flows/gpu_jobs.py) apply to this run only. A run
    that no worker starts within `pickup_timeout_s` is cancelled and fails the task naming
    the work pool; once started, a fold may train as long as it needs.
    """
    parameters = {"run_id": run_id, "fold": fold, "storage": storage}
    flow_run = run_deployment(
        deployment, parameters=parameters, job_variables=job_variables, timeout=0
    )
    flow_run = _watch(flow_run.id, deployment, pickup_timeout_s)
    state = flow_run.state
    if state is None or not state.is_completed():
        kind = state.type.value if state is not None else "UNKNOWN"
        message = state.message if state is not None else ""
        raise FoldRunFailed(
            f"fold {fold} of run {run_id}: child flow run {flow_run.name!r} ({flow_run.id}) "
            f"ended {kind}: {message}"
        )
    get_run_logger().info("fold %d trained by flow run %s", fold, flow_run.name)
    return {"fold": fold, "flow_run_id": str(flow_run.id), "flow_run_name": flow_run.name}


def _watch(flow_run_id: UUID, deployment: str, pickup_timeout_s: float) -> FlowRun:
    """The child run once final; FoldNotPickedUp (the run cancelled) when it stays Scheduled
    or Pending for longer than `pickup_timeout_s` at a time."""
    with get_client(sync_client=True) as client:
        waiting_since = time.monotonic()
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            state = flow_run.state
            if state is not None and state.is_final():
                return flow_run
            if state is not None and not (state.is_scheduled() or state.is_pending()):
                waiting_since = time.monotonic()  # running: no bound on training time
            elif time.monotonic() - waiting_since > pickup_timeout_s:
                pool = client.read_deployment_by_name(deployment).work_pool_name
                reason = f"no worker of work pool {pool!r} started it in {pickup_timeout_s:g} s"
                client.set_flow_run_state(flow_run_id, Cancelled(message=reason), force=True)
                raise FoldNotPickedUp(
                    f"{deployment} run {flow_run.name!r} ({flow_run_id}) cancelled: {reason}; "
                    f"start a worker (prefect worker start --pool {pool}) and resume the run"
                )
            time.sleep(POLL_S)


def _short(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value
