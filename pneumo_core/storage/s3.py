"""S3-compatible storage (s3://: AWS, MinIO, SeaweedFS) through boto3, with botocore's retries."""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pneumo_core.errors import InputError, ObjectNotFound, StorageError, TransientStorageError
from pneumo_core.settings import settings
from pneumo_core.storage.backoff import sleep_before_retry
from pneumo_core.storage.base import (
    CHUNK,
    PROBE_DATA,
    TMP_SUFFIX,
    MiB,
    ObjectStore,
    T,
    atomic_path,
    check_key,
    check_prefix,
    file_sha256,
    probe_key,
    source_file,
)
from pneumo_core.storage.s3_errors import (
    CONDITION_CODES,
    NOT_FOUND_CODES,
    Silence,
    error_code,
    translate,
)


class S3Store(ObjectStore):
    """S3-compatible storage (AWS, MinIO, SeaweedFS) through boto3.

    The endpoint, region and credentials come from the usual AWS_* variables
    (AWS_ENDPOINT_URL[_S3], AWS_REGION, AWS_ACCESS_KEY_ID, ...) unless given here.
    Retries are this layer's alone (tasks do not retry a storage failure again): each
    request is tried up to `max_attempts` times (env PNEUMO_S3_MAX_ATTEMPTS, default 10)
    by botocore's `standard` retry mode, which retries connection errors, timeouts, 5xx and
    throttling with jittered exponential backoff (each wait at most 20 s); multipart parts
    and downloads are requests too, and s3transfer retries a download's broken stream the
    same number of times. What botocore does not retry, a GET whose body breaks off while
    being read, is retried here (`_get`), the first wait `backoff_s` (env
    PNEUMO_S3_BACKOFF_S, default 0.5 s) doubling up to 20 s. Permanent failures (missing
    bucket, refused credentials, a server that is not S3) raise StorageError at once, and a
    request that used up its attempts TransientStorageError.

    An endpoint that sends nothing is bounded apart from the attempts: all the store's
    requests together wait at most `silence_s` (env PNEUMO_S3_SILENCE_S, default 120 s) for
    it (`Silence`), each try a quarter of that for each byte, so a download that keeps
    receiving bytes is never cut. `probe` is one try with short waits, for the pre-run check.
    """

    MAX_BACKOFF_S = 20.0
    SILENCE_S = 120.0  # default of `silence_s`
    PROBE_TIMEOUT_S = 10.0  # the probe's wait for a byte, at most

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        max_attempts: int | None = None,
        backoff_s: float | None = None,
        silence_s: float | None = None,
        multipart_threshold: int = 64 * MiB,
        cache_dir: str | Path | None = None,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if not bucket:
            raise InputError("an S3 store needs a bucket name")
        self.bucket = bucket
        self.prefix = check_prefix(prefix.strip("/")).strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        knobs = settings()
        self.max_attempts = max(1, int(max_attempts or knobs.s3_max_attempts))
        self.backoff_s = backoff_s if backoff_s is not None else knobs.s3_backoff_s
        self.cache_dir = Path(cache_dir or knobs.cache_dir).expanduser()
        if silence_s is None:
            silence_s = knobs.s3_silence_s
        self.read_timeout = max(0.1, silence_s / 4)  # per socket read: no byte for this long
        connect_timeout = min(5.0, self.read_timeout)
        session = boto3.session.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key
        )
        config = Config(
            region_name=region or session.region_name or "us-east-1",
            signature_version="s3v4",
            s3={"addressing_style": "path"},  # SeaweedFS/MinIO have no virtual-host buckets
            retries={"total_max_attempts": self.max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=self.read_timeout,
            request_checksum_calculation="when_required",  # S3 clones lag behind AWS here
            response_checksum_validation="when_required",
        )
        self._client = session.client("s3", endpoint_url=endpoint_url, config=config)
        self._new_client = functools.partial(session.client, "s3", config=config)
        self.endpoint = self._client.meta.endpoint_url
        self.silence = Silence(self, silence_s, self.read_timeout, connect_timeout)
        self.silence.watch(self._client)
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=max(5 * MiB, multipart_threshold),
            max_concurrency=4,
            num_download_attempts=self.max_attempts,
        )
        self._bucket_seen = False

    # -- keys and urls -----------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(check_key(key))}"

    # -- retries and error translation (the mapping itself: s3_errors.py) ---------------------

    def _call(
        self, action: str, key: str | None, fn: Callable[[], T], attempts: int | None = None
    ) -> T:
        """Run one S3 operation (botocore has retried what a retry can fix); translate errors."""
        try:
            return fn()
        except Exception as exc:
            error = translate(exc, action, key, self, attempts)
            if error is None:
                raise
            raise error from exc

    def _get(self, key: str, read: Callable[[dict[str, Any]], T]) -> T:
        """GET an object and `read` its response; a body that breaks off while being read
        (botocore retries only until the response starts) is fetched again, boundedly."""
        from botocore.exceptions import IncompleteReadError, ReadTimeoutError
        from botocore.exceptions import ResponseStreamingError as Broken

        full = self._full(check_key(key))
        stalled = 0.0  # the bodies' waits for a byte that never came, bounded like a silence
        for attempt in range(1, self.max_attempts + 1):
            response = self._call(
                "GET", key, lambda: self._client.get_object(Bucket=self.bucket, Key=full)
            )
            try:
                return read(response)
            except (Broken, IncompleteReadError, ReadTimeoutError) as exc:
                stalled += self.read_timeout if isinstance(exc, ReadTimeoutError) else 0.0
                if (
                    attempt == self.max_attempts
                    or stalled + self.read_timeout > self.silence.budget_s
                ):
                    raise TransientStorageError(
                        f"S3 GET of {self.where(key)}: the body broke off in each of "
                        f"{attempt} attempts ({exc})"
                    ) from exc
                sleep_before_retry(attempt, self.backoff_s, self.MAX_BACKOFF_S)
        raise AssertionError("unreachable")  # pragma: no cover

    def where(self, key: str | None) -> str:
        """The object (or the store) and the endpoint, as error messages name them."""
        target = f"s3://{self.bucket}/{self._full(key)}" if key is not None else self.uri
        return f"{target} (endpoint {self.endpoint})"

    def bucket_exists(self) -> bool:
        """A HEAD's 404 does not say whether the key or the bucket is missing; ask once."""
        from botocore.exceptions import ClientError

        if not self._bucket_seen:
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                return error_code(exc.response) not in NOT_FOUND_CODES | {"NoSuchBucket"}
            except Exception:
                return True  # cannot tell; the caller reports the missing key
            self._bucket_seen = True
        return True

    def _head(self, key: str) -> dict[str, Any]:
        full = self._full(check_key(key))
        return self._call(
            "HEAD", key, lambda: self._client.head_object(Bucket=self.bucket, Key=full)
        )

    # -- operations --------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._full(check_key(key))
        digest = hashlib.sha256(data).hexdigest()
        self._call(
            "PUT",
            key,
            lambda: self._client.put_object(
                Bucket=self.bucket,
                Key=full,
                Body=data,
                Metadata=_checksum(digest, len(data)),
                ContentMD5=_content_md5(data),
            ),
        )

    def get_bytes(self, key: str) -> bytes:
        return self._get(key, lambda response: response["Body"].read())

    def put_file(self, key: str, path: str | Path) -> None:
        """Streams the file; above the threshold it goes up as a multipart upload."""
        full = self._full(check_key(key))
        source = source_file(path)
        digest = file_sha256(source)
        self._call(
            "upload",
            key,
            lambda: self._client.upload_file(
                str(source),
                self.bucket,
                full,
                ExtraArgs={"Metadata": _checksum(digest, source.stat().st_size)},
                Config=self._transfer,
            ),
        )

    def get_file(self, key: str, path: str | Path) -> None:
        full = self._full(check_key(key))

        def download() -> None:
            with atomic_path(Path(path)) as tmp:
                self._client.download_file(self.bucket, full, str(tmp), Config=self._transfer)

        self._call("download", key, download)

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        full = root + prefix

        def list_all() -> list[str]:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

        keys = self._call("LIST", prefix or None, list_all)
        return sorted(k[len(root) :] for k in keys if not k.endswith("/"))

    def delete(self, key: str) -> None:
        full = self._full(check_key(key))
        self._call("DELETE", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=full))

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = {"Objects": [{"Key": self._full(k)} for k in keys[start : start + 1000]]}
            result = self._call(
                "DELETE",
                prefix or None,
                lambda b=batch: self._client.delete_objects(Bucket=self.bucket, Delete=b),
            )
            if result.get("Errors"):
                first = result["Errors"][0]
                raise StorageError(
                    f"S3 DELETE of {self.where(prefix or None)}: {len(result['Errors'])} keys "
                    f"failed, e.g. {first.get('Key')} ({first.get('Code')})"
                )
        return len(keys)

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def sha256(self, key: str) -> str:
        """From the metadata our writes store; objects written by others are hashed as a stream."""
        head = self._head(key)
        metadata, length = head.get("Metadata", {}), str(head["ContentLength"])
        stored = metadata.get("sha256")
        # SeaweedFS stores a PUT whose body never came as an empty object carrying the full one's
        # metadata. put_bytes sends a Content-MD5 that prevents it (`_content_md5`), but
        # put_file's single-request uploads (upload_file) do not, nor did older writers: trust
        # the recorded sha256 only when the length agrees.
        if stored and metadata.get("size", length) == length:
            return stored

        def stream_hash(response: dict[str, Any]) -> str:
            digest = hashlib.sha256()
            for chunk in response["Body"].iter_chunks(CHUNK):
                digest.update(chunk)
            return digest.hexdigest()

        return self._get(key, stream_hash)

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            return self._get(key, lambda response: (response["Body"].read(), response["ETag"]))
        except ObjectNotFound:
            return None

    def put_bytes_if(self, key: str, data: bytes, version: str | None) -> bool:
        """S3 conditional PUT (If-Match / If-None-Match: *), enforced by AWS, MinIO and
        SeaweedFS (checked under concurrency in tests/integration/test_concurrency.py)."""
        from botocore.exceptions import ClientError

        full = self._full(check_key(key))
        condition = {"IfMatch": version} if version is not None else {"IfNoneMatch": "*"}
        digest = hashlib.sha256(data).hexdigest()

        def put() -> bool:
            try:
                self._client.put_object(
                    Bucket=self.bucket, Key=full, Body=data, Metadata=_checksum(digest, len(data)),
                    ContentMD5=_content_md5(data), **condition,
                )  # fmt: skip
            except ClientError as exc:
                if error_code(exc.response) in CONDITION_CODES:
                    return False
                raise
            return True

        return self._call("conditional PUT", key, put)

    def local_path(self, key: str) -> Path:
        """A cached download, reused while the object's etag and size are unchanged."""
        head = self._head(key)
        etag = str(head.get("ETag", "")).strip('"').replace("-", "_")
        size = int(head["ContentLength"])
        name = hashlib.sha256(
            f"{self.endpoint}|{self.bucket}|{self._full(key)}".encode()
        ).hexdigest()
        folder = self.cache_dir / "s3"
        path = folder / f"{name[:40]}-{etag}-{size}{Path(key).suffix}"
        if path.is_file() and path.stat().st_size == size:
            return path
        self.get_file(key, path)
        for stale in folder.glob(f"{name[:40]}-*"):
            if stale != path and not stale.name.endswith(TMP_SUFFIX):
                stale.unlink(missing_ok=True)
        return path

    def probe(self) -> None:
        """Write and delete a hidden object, one try each with short waits: a refused or
        silent endpoint, missing bucket or refused credentials is one line within seconds."""
        from botocore.config import Config

        quick = min(self.PROBE_TIMEOUT_S, self.read_timeout)
        once = self._client.meta.config.merge(
            Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=quick)
        )
        client = self._new_client(endpoint_url=self.endpoint, config=once)
        full = self._full(probe_key())

        def write_and_delete() -> None:
            md5 = _content_md5(PROBE_DATA)
            client.put_object(Bucket=self.bucket, Key=full, Body=PROBE_DATA, ContentMD5=md5)
            client.delete_object(Bucket=self.bucket, Key=full)

        self._call("probe", None, write_and_delete, attempts=1)

    def presigned_url(
        self, key: str, expires_s: int = 7 * 86400, endpoint_url: str | None = None
    ) -> str | None:
        full = self._full(check_key(key))
        client = self._client
        if endpoint_url and endpoint_url.rstrip("/") != self.endpoint.rstrip("/"):
            client = self._new_client(endpoint_url=endpoint_url)  # signing only: no request
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=expires_s
        )


def _content_md5(data: bytes) -> str:
    """Content-MD5 for a single-request PUT. SeaweedFS stores an EMPTY object (honouring even
    If-Match) when a PUT's body never arrives after its "100 Continue"; with the MD5 it
    refuses instead, and botocore's retry sends the whole body again."""
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def _checksum(sha256: str, size: int) -> dict[str, str]:
    """Object metadata our writes carry: what `S3Store.sha256` answers without a download."""
    return {"sha256": sha256, "size": str(size)}
