"""What an S3 failure means to the pipeline: botocore's exceptions mapped to our errors.

S3 servers (AWS, MinIO, SeaweedFS) name the same conditions with different codes; they are
grouped here by what the pipeline does about them: a missing object (ObjectNotFound), a
fault a later try may not meet (TransientStorageError), and a refusal that no retry fixes
(StorageError). Messages name the bucket, key and endpoint, never the credentials.
"""

from __future__ import annotations

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


def translate(exc: Exception, action: str, key: str | None, store: S3Target) -> Exception | None:
    """Map a boto3 failure to our error types (None: not an S3 failure, raise it as it is)."""
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, Exception):
        return translate(exc.__context__, action, key, store)
    if isinstance(exc, RetriesExceededError) and isinstance(exc.last_exception, Exception):
        return translate(exc.last_exception, action, key, store)
    where = store.where(key)
    if isinstance(exc, ConnectionError | HTTPClientError):
        return TransientStorageError(
            f"S3 {action} of {where} failed after {store.max_attempts} attempts: {exc}"
        )
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
            f"S3 {action} of {where} failed after {store.max_attempts} attempts ({code or status})"
        )
    if code in CREDENTIAL_CODES:
        return StorageError(
            f"S3 {action} of {where} was refused ({code}): check the credentials "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the bucket's permissions"
        )
    message = exc.response.get("Error", {}).get("Message", "")
    return StorageError(f"S3 {action} of {where} failed ({code or status}): {message}")
