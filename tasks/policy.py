"""How pneumo's tasks retry, and where their results live.

Retrying helps only with faults that may pass (a dropped connection, a store that was
briefly unreachable); bad input or a bad configuration fails the same way every time, so
those end the task at once instead of burning the retry budget.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun
from prefect.tasks import exponential_backoff

from pneumo_core.errors import InputError, StorageError

RETRIES = 3
RETRY_DELAY = exponential_backoff(backoff_factor=2)  # 2, 4, 8 s
RETRY_JITTER = 0.5  # each delay may grow by up to half, so workers do not retry in step

DETERMINISTIC: tuple[type[BaseException], ...] = (
    InputError,  # bad input or configuration (pneumo_core raises it for both)
    StorageError,  # permanent: missing object, no bucket, access denied
    ValueError,
    TypeError,
    KeyError,
    NotImplementedError,
    ArithmeticError,  # e.g. a NaN loss: resuming from the same checkpoint meets it again
)


def is_transient(task: Task[..., Any], task_run: TaskRun, state: State) -> bool:
    """retry_condition_fn: retry anything but a deterministic failure."""
    return not isinstance(failure_of(state), DETERMINISTIC)


def failure_of(state: State) -> BaseException | None:
    """The exception a failed state carries (None when it carries none)."""
    data = state.data
    if isinstance(data, BaseException):
        return data
    result = state.result(raise_on_failure=False)
    return result if isinstance(result, BaseException) else None


RETRY_OPTIONS: dict[str, Any] = {
    "retries": RETRIES,
    "retry_delay_seconds": RETRY_DELAY,
    "retry_jitter_factor": RETRY_JITTER,
    "retry_condition_fn": is_transient,
}
"""Keyword arguments for @task on everything that touches the network or the store."""


def result_storage(storage: str) -> Any | None:
    """A saved S3Bucket block for results beside the data when the store is S3, else None.

    Persisted results (and so cache hits) then reach every worker that reaches the store.
    A block named by PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK wins: the operator chose it.
    Credentials come from the environment (boto3's chain), never from the block; Prefect
    needs the block saved, under a name derived from the store URI.
    """
    if not storage.startswith("s3://") or os.environ.get("PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"):
        return None
    from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

    bucket, _, prefix = storage.removeprefix("s3://").partition("/")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    credentials = AwsCredentials(aws_client_parameters=AwsClientParameters(endpoint_url=endpoint))
    folder = "/".join(p for p in (prefix.strip("/"), "prefect-results") if p)
    block = S3Bucket(bucket_name=bucket, bucket_folder=folder, credentials=credentials)
    name = "pneumo-results-" + hashlib.sha256(f"{storage}|{endpoint}".encode()).hexdigest()[:16]
    block.save(name, overwrite=True)
    return block
