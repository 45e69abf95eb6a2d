"""The `predict` flow: a submission from a trained run (the champion by default) on demand,
or a run's own test images on a GPU worker for the pipeline (`images` empty)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.core_logs import core_info_to_run_logs
from pneumo_core.layout import SUBMISSION
from pneumo_core.runs.champion import champion_run_id
from pneumo_core.storage.open import open_store
from tasks.deployment_names import PREDICT_FLOW
from tasks.prediction import predict_images, predict_test_images


@flow(name=PREDICT_FLOW, log_prints=True)
def predict_flow(
    storage: str, images: str | None = None, run_id: str | None = None, out: str = SUBMISSION
) -> str:
    """Predict `images` (a folder or store URI of DICOMs) with `run_id`, else the champion.
    Without `images`: the run's prepared test images, as runs/<run_id>/submission.csv."""
    core_info_to_run_logs()
    if run_id is None:
        run_id = champion_run_id(open_store(storage))
        get_run_logger().info("predicting with the champion, run %s", run_id)
    if images is None:
        return predict_test_images(storage, run_id).submission
    return predict_images(storage, run_id, images, out)
