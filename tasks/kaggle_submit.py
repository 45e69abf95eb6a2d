"""Submitting a run to Kaggle as a Prefect task, with the run's submissions as an artifact.

No Prefect retries: pneumo_core.kaggle_submit already retries what is transient, and a
retry of a whole task could submit twice (each submission counts against the daily limit).
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from pneumo_core.runs import kaggle_submit
from pneumo_core.runs.run import Run
from pneumo_core.storage.open import open_store

ARTIFACT_KEY = "kaggle-submissions"


@task(name="kaggle-submit", task_run_name="kaggle-submit")
def submit_to_kaggle(storage: str, run_id: str, message: str | None = None) -> dict:
    """Check and submit runs/<id>/submission.csv; every try of the run in a table artifact."""
    store = open_store(storage)
    try:
        record = kaggle_submit.submit_run(store, run_id, message)
    finally:
        rows = Run(store, run_id).kaggle_records()
        if rows:
            create_table_artifact(
                rows, key=ARTIFACT_KEY, description=f"run {run_id}: submissions to Kaggle"
            )
    get_run_logger().info("submitted run %s to Kaggle: %s", run_id, record.answer)
    return record.to_dict()
