"""What an S3 failure means to the pipeline: botocore's exceptions mapped to our errors.

S3 servers (AWS, MinIO, SeaweedFS) name the same conditions with different codes; they are
grouped here by what the pipeline does about them: a missing object (ObjectNotFound), a
fault a later try may not meet (TransientStorageError), and a refusal that no retry fixes
(StorageError). Messages name the bucket, key and endpoint, never the credentials.
An endpoint that sends nothing at all is bounded apart from the retries (`Silence`).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from pneumo_core.errors import ObjectNotFound, StorageError, TransientStorageError

NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
TRANSIENT_CODES = {
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
}
CONDITION_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
CREDENTIAL_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "403",
    "Forbidden",
    "InvalidToken",
    "ExpiredToken",
}


class S3Target(Protocol):
    """What the messages name: the store a request went to (S3Store)."""

    bucket: str
    endpoint: str
    uri: str
    max_attempts: int

    def url(self, key: str) -> str: ...

    def where(self, key: str | None) -> str: ...

    def bucket_exists(self) -> bool: ...


def error_code(response: dict[str, Any]) -> str:
    """The S3 error code of a botocore ClientError's response ('' if it has none)."""
    return str(response.get("Error", {}).get("Code", ""))


def attempts_text(attempts: int) -> str:
    return f"{attempts} attempt" if attempts == 1 else f"{attempts} attempts"


def translate(
    exc: Exception, action: str, key: str | None, store: S3Target, attempts: int | None = None
) -> Exception | None:
    """Map a boto3 failure to our error types (None: not an S3 failure, raise it as it is).
    `attempts`: how many tries the request had, when not the store's `max_attempts`."""
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, Exception):
        return translate(exc.__context__, action, key, store, attempts)
    if isinstance(exc, RetriesExceededError) and isinstance(exc.last_exception, Exception):
        return translate(exc.last_exception, action, key, store, attempts)
    where = store.where(key)
    tries = attempts_text(attempts or store.max_attempts)
    if isinstance(exc, ConnectionError | HTTPClientError):
        return TransientStorageError(f"S3 {action} of {where} failed after {tries}: {exc}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StorageError(
            f"S3 {action} of {where}: no complete credentials; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or an AWS profile)"
        )
    if not isinstance(exc, ClientError):
        return None
    code = error_code(exc.response)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    if 400 <= status < 500 and not any(h.lower().startswith("x-amz-") for h in headers):
        return StorageError(  # every S3 server (AWS, MinIO, SeaweedFS) sends x-amz-*
            f"S3 {action} of {where}: the endpoint answered HTTP {status} without any "
            "S3 header: it is not an S3 endpoint (check AWS_ENDPOINT_URL)"
        )
    if code == "NoSuchBucket" or (code in NOT_FOUND_CODES and not store.bucket_exists()):
        return StorageError(
            f"S3 bucket {store.bucket!r} does not exist at endpoint {store.endpoint}"
        )
    if code in NOT_FOUND_CODES:
        return ObjectNotFound(f"{store.url(key) if key else store.uri} does not exist")
    if code in TRANSIENT_CODES or status >= 500:
        return TransientStorageError(
            f"S3 {action} of {where} failed after {tries} ({code or status})"
        )
    if code in CREDENTIAL_CODES:
        return StorageError(
            f"S3 {action} of {where} was refused ({code}): check the credentials "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the bucket's permissions"
        )
    message = exc.response.get("Error", {}).get("Message", "")
    return StorageError(f"S3 {action} of {where} failed ({code or status}): {message}")


class Silence:
    """How long the endpoint has sent nothing, shared by every request of one store, so that
    a silent endpoint costs a command `budget_s` in all however many requests wait on it.

    A try waits `read_timeout_s` for each byte (botocore's read timeout is per socket read:
    a download that keeps receiving bytes is never cut). A try that got no byte adds its wait
    here and any answer clears it; a try, first or retry, that could not end within the
    budget is not sent but fails at once, so the requests after the first give-up cost
    nothing. A silence older than the budget is forgotten: a long-lived store tries again.
    """

    def __init__(
        self, store: S3Target, budget_s: float, read_timeout_s: float, connect_timeout_s: float
    ) -> None:
        self.store, self.budget_s = store, budget_s
        self.read_timeout_s, self.connect_timeout_s = read_timeout_s, connect_timeout_s
        self._lock = threading.Lock()
        self._since: float | None = None  # when the first unanswered try began
        self._last = 0.0  # when the latest unanswered try gave up

    def watch(self, client: Any) -> None:
        """Hook into a boto3 S3 client: every try is checked before it is sent and counted."""
        client.meta.events.register("before-send.s3", self._before_send)
        client.meta.events.register("needs-retry.s3", self._after_try)

    def silent_s(self) -> float:
        """For how long the endpoint has sent nothing (0: it answered its latest try)."""
        with self._lock:
            return 0.0 if self._since is None else time.monotonic() - self._since

    def error(self, what: str) -> TransientStorageError:
        return TransientStorageError(
            f"S3 {what} of {self.store.where(None)}: the endpoint has sent nothing for "
            f"{self.silent_s():.0f} s; gave up (a silent endpoint is waited for at most "
            f"{self.budget_s:g} s, PNEUMO_S3_SILENCE_S)"
        )

    def _before_send(self, event_name: str = "", **_: Any) -> None:
        with self._lock:
            if self._since is not None and time.monotonic() - self._last > self.budget_s:
                self._since = None
        self._check(event_name)

    def _after_try(
        self, event_name: str = "", response: Any = None, caught_exception: Any = None, **_: Any
    ) -> None:
        from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

        now = time.monotonic()
        with self._lock:
            if isinstance(caught_exception, ReadTimeoutError | ConnectTimeoutError):
                waited = (
                    self.connect_timeout_s
                    if isinstance(caught_exception, ConnectTimeoutError)
                    else self.read_timeout_s
                )
                self._since = now - waited if self._since is None else self._since
                self._last = now
            elif response is not None:
                self._since = None
                return
        self._check(event_name)  # no wait before a retry that could not end within the budget

    def _check(self, event_name: str) -> None:
        """Raise when a try sent now could not end within the budget."""
        with self._lock:
            since = self._since
        if since is not None and time.monotonic() - since + self.read_timeout_s > self.budget_s:
            raise self.error(event_name.rpartition(".")[2] or "request")
