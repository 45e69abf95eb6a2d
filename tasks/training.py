"""Training as Prefect tasks: one run's configuration, one fold's training, and one fold
handed to a GPU worker through its deployment.

Training is resumable in the core (checkpoint-last, done.json), so a retried task or a
re-run pipeline continues where it stopped and never retrains a finished fold.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from pneumo_core.config.run import RunConfig
from pneumo_core.errors import PneumoError
from pneumo_core.layout import CONFIG
from pneumo_core.runs.ids import key_slug
from pneumo_core.runs.records import FoldResult
from pneumo_core.runs.run import Run
from pneumo_core.storage.open import open_store
from pneumo_core.train import fold as fold_training
from tasks.deployment_names import GPU_TRAIN_TAG
from tasks.policy import RETRY_OPTIONS
from tasks.worker_runs import PICKUP_TIMEOUT_S, ended, run_on_worker

FOLD_RETRIES = 2


class FoldRunFailed(PneumoError):
    """A fold's child flow run did not complete (failed, crashed or cancelled)."""


@task(name="create-run", task_run_name="create-run", **RETRY_OPTIONS)
def create_run(
    storage: str,
    config: RunConfig,
    run_id: str | None,
    source: str | None = None,
    manifest_digest: str | None = None,
) -> str:
    """A new run (config.json and its record written), or the existing run `run_id` resumed
    (its recipe and data unchanged; new execution settings stored)."""
    store = open_store(storage)
    run = Run.create(store, config, run_id, source, manifest_digest)
    get_run_logger().info("run %s: %s", run.run_id, run.url(CONFIG))
    return run.run_id


def progress_key(run_id: str, fold: int) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return f"train-{key_slug(run_id)}-fold-{fold}"


@task(name="train-fold", tags=[GPU_TRAIN_TAG], task_run_name="train-fold-{fold}", **RETRY_OPTIONS)
def train_fold(storage: str, run_id: str, fold: int) -> FoldResult:
    """One fold, with its progress as a Prefect progress artifact and log lines per epoch."""
    logger = get_run_logger()
    store = open_store(storage)
    epochs = Run(store, run_id).config().epochs
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

    result = fold_training.train_fold(store, run_id, fold, on_epoch=on_epoch)
    update_progress_artifact(artifact, 100.0)
    logger.info(
        "fold %d done: %s epochs, best epoch %s, best val mAP %s",
        fold,
        result.epochs,
        result.best_epoch,
        _short(result.best_val_map),
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
    `job_variables` (the fold's own GPU, tasks/gpu_jobs.py) apply to this run only. A run
    that no worker starts within `pickup_timeout_s` is cancelled and fails the task naming
    the work pool; once started, a fold may train as long as it needs.
    """
    parameters = {"run_id": run_id, "fold": fold, "storage": storage}
    flow_run = run_on_worker(deployment, parameters, job_variables, pickup_timeout_s)
    failure = ended(flow_run)
    if failure:
        raise FoldRunFailed(
            f"fold {fold} of run {run_id}: child flow run {flow_run.name!r} ({flow_run.id}) "
            f"ended {failure}"
        )
    get_run_logger().info("fold %d trained by flow run %s", fold, flow_run.name)
    return {"fold": fold, "flow_run_id": str(flow_run.id), "flow_run_name": flow_run.name}


def _short(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value
