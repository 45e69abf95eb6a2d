"""How pneumo's tasks retry, and where their results live.

One layer owns each retry. The object store retries its own requests (botocore's standard
mode, pneumo_core/storage.py), so a storage failure that reaches a task has used up its
attempts and is not retried again here. Tasks retry the rest of what may pass (a dropped
Kaggle download, a crashed fold worker). Bad input or configuration, a full or read-only
disk, a permission error and running out of GPU memory fail the same way every time, so
those end the task at once instead of burning the retry budget.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sys
from typing import Any

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun
from prefect.tasks import exponential_backoff

from pneumo_core.errors import InputError, PneumoError, StorageError, TransientStorageError

RETRIES = 3


class NotRetried(PneumoError):
    """A failure a task knows another try cannot fix (no worker on a pool, for example)."""


RETRY_DELAY = exponential_backoff(backoff_factor=2)  # 2, 4, 8 s
RETRY_JITTER = 0.5  # each delay may grow by up to half, so workers do not retry in step

DETERMINISTIC: tuple[type[BaseException], ...] = (
    InputError,  # bad input or configuration (pneumo_core raises it for both)
    StorageError,  # permanent: missing object, no bucket, access denied
    TransientStorageError,  # the store already retried it (its own layer)
    NotRetried,
    ValueError,
    TypeError,
    KeyError,
    NotImplementedError,
    ArithmeticError,  # e.g. a NaN loss: resuming from the same checkpoint meets it again
)


# OSErrors of the machine, not of the moment: a full disk, a read-only or forbidden path.
MACHINE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR,
     errno.ENOTDIR, errno.EEXIST, errno.EFBIG, errno.ENAMETOOLONG}
)  # fmt: skip


def is_transient(task: Task[..., Any], task_run: TaskRun, state: State) -> bool:
    """retry_condition_fn: retry anything but a deterministic failure."""
    return not is_deterministic(failure_of(state))


def is_deterministic(error: BaseException | None) -> bool:
    """True for a failure that a retry would meet again."""
    if isinstance(error, DETERMINISTIC):
        return True
    if isinstance(error, OSError) and error.errno in MACHINE_ERRNOS:
        return True
    torch = sys.modules.get("torch")  # CUDA out of memory: the same batch runs out again
    return torch is not None and isinstance(error, torch.OutOfMemoryError)


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
