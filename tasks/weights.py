"""The pipeline's first step for a pretrained recipe: the backbone's weights in the store."""

from __future__ import annotations

from prefect import get_run_logger, task

from pneumo_core.model import weights
from pneumo_core.storage.open import open_store
from tasks.policy import RETRY_OPTIONS


@task(name="pretrained-weights", task_run_name="pretrained-weights-{backbone}", **RETRY_OPTIONS)
def ensure_pretrained_weights(storage: str, backbone: str) -> None:
    """Fetch torchvision's published weights into the store unless it holds them already,
    so that every fold loads the same verified file; InputError (not retried) offline."""
    store = open_store(storage)
    if weights.in_store(store, backbone):
        return
    for key in weights.fetch(store, backbone):
        get_run_logger().info("pretrained weights stored at %s", store.url(key))
