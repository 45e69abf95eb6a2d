"""Prediction as Prefect tasks: a checked Kaggle submission from a run's fold models."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact

from pneumo_core.errors import InputError, ObjectNotFound, PneumoError
from pneumo_core.evaluation import submission
from pneumo_core.layout import SAMPLE_SUBMISSION, SUBMISSION, raw_key
from pneumo_core.model import predict
from pneumo_core.runs.records import TestPrediction
from pneumo_core.runs.run import Run
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.open import open_store
from tasks.evaluation import store_link
from tasks.gpu_jobs import deployment_gpu_jobs
from tasks.policy import RETRY_OPTIONS
from tasks.worker_runs import PICKUP_TIMEOUT_S, ended, run_on_worker

PREDICT_TIMEOUT = 6 * 3600.0


@task(
    name="predict-test-images",
    task_run_name="predict-test-images",
    timeout_seconds=PREDICT_TIMEOUT,
    **RETRY_OPTIONS,
)
def predict_test_images(storage: str, run_id: str) -> TestPrediction:
    """runs/<id>/submission.csv for the test images prepare recorded, checked before storing;
    returns its URL and the quarantined test images (empty PredictionString each)."""
    store = open_store(storage)
    run = Run(store, run_id)
    dataset = run.config().dataset
    logger = get_run_logger()
    with tempfile.TemporaryDirectory(prefix="pneumo-predict-") as tmp:
        result = predict.predict_test_set(store, run_id, Path(tmp) / SUBMISSION)
        sample = _sample_submission(store, dataset, Path(tmp))
        problems = submission.check_submission(result.path, sample=sample)
        if problems:
            raise InputError(f"run {run_id}: submission is invalid: {'; '.join(problems[:5])}")
        key = run.submission_key
        store.put_file(key, result.path)
    for item in result.quarantined:
        logger.warning(
            "test image %s was quarantined by prepare (%s): empty PredictionString in the "
            "submission", item["key"], item["reason"],
        )  # fmt: skip
    logger.info("submission for run %s: %s", run_id, store.url(key))
    return TestPrediction(submission=store.url(key), quarantined=result.quarantined)


class PredictRunFailed(PneumoError):
    """The `predict` deployment run for a run's test images did not complete."""


@task(
    name="predict-test-images-on-worker",
    task_run_name="predict-test-images-on-worker",
    **RETRY_OPTIONS,
)
def predict_test_images_on_worker(
    deployment: str,
    storage: str,
    run_id: str,
    gpus_per_worker: int,
    pickup_timeout_s: float = PICKUP_TIMEOUT_S,
) -> TestPrediction:
    """predict-test-images as a `predict` deployment run on a GPU worker (when folds train on
    workers, the orchestrating container has no GPU): GPU 0 of the worker's host, as fold 0
    (none when `gpus_per_worker` is 0). The same result as predict_test_images, read from
    the store; a Crashed child is retried."""
    (job_variables,) = deployment_gpu_jobs(deployment, [0], gpus_per_worker)
    parameters = {"storage": storage, "run_id": run_id, "images": None}
    flow_run = run_on_worker(deployment, parameters, job_variables, pickup_timeout_s)
    failure = ended(flow_run)
    if failure:
        raise PredictRunFailed(
            f"run {run_id}: predict flow run {flow_run.name!r} ({flow_run.id}) ended {failure}"
        )
    store = open_store(storage)
    get_run_logger().info("submission for run %s by flow run %s", run_id, flow_run.name)
    return TestPrediction(
        submission=store.url(Run(store, run_id).submission_key),
        quarantined=predict.quarantined_test_images(store, run_id),
    )


@task(
    name="predict-images",
    task_run_name="predict-images",
    timeout_seconds=PREDICT_TIMEOUT,
    **RETRY_OPTIONS,
)
def predict_images(storage: str, run_id: str, images: str, out: str) -> str:
    """A submission for any folder or store prefix of DICOMs, written to `out` and kept in the
    store under runs/<id>/predictions/, since a worker's disk goes away with its container."""
    store = open_store(storage)
    written = predict.predict_images(store, run_id, images, out)
    problems = submission.check_submission(written)
    if problems:
        raise InputError(f"{written}: submission is invalid: {'; '.join(problems[:5])}")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    key = Run(store, run_id).prediction_key(f"{stamp}-{Path(written).name}")
    store.put_file(key, written)
    create_link_artifact(
        store_link(store, key), link_text=store.url(key), key="prediction",
        description=f"predictions of run {run_id} for {images} (also written to {written})",
    )  # fmt: skip
    get_run_logger().info(
        "predictions of run %s for %s: %s and %s", run_id, images, written, store.url(key)
    )
    return store.url(key)


def _sample_submission(store: ObjectStore, dataset: str, folder: Path) -> Path | None:
    """The archive's sample submission, when ingested, to check every test id is present."""
    path = folder / SAMPLE_SUBMISSION
    try:
        store.get_file(raw_key(dataset, SAMPLE_SUBMISSION), path)
    except ObjectNotFound:
        return None
    return path
