"""The object store's interface and the key rules every backend shares.

Everything the pipeline keeps lives in one store, so a worker's disk is never the only copy.
Writes are atomic on every backend: a reader sees the old object or the new one, never a part.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from pneumo_core.errors import InputError, ObjectNotFound

T = TypeVar("T")

MiB = 1024 * 1024
CHUNK = 8 * MiB
TMP_SUFFIX = ".pneumo-tmp"  # temp files carry it so listings can hide half-written objects
PROBE_DATA = b"pneumo probe\n"
_UMASK = os.umask(0)
os.umask(_UMASK)


def check_key(key: str) -> str:
    """Reject keys that could escape the store root or mean different things on each backend."""
    if not isinstance(key, str) or not key:
        raise InputError(f"invalid storage key {key!r}: it is empty")
    if (
        key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or any(part in ("", ".", "..") for part in key.split("/"))
    ):
        raise InputError(
            f"invalid storage key {key!r}: keys are relative and '/'-separated, "
            "without '..', '.', backslashes or empty parts"
        )
    return key


def check_prefix(prefix: str) -> str:
    """A prefix is a key, or the start of one; '' and a trailing '/' are allowed."""
    if prefix:
        check_key(prefix.removesuffix("/"))
    return prefix


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temp path beside `dest` and move it over `dest` only when the block succeeds.

    Same folder, so `os.replace` is an atomic rename; on failure the old `dest` stays intact.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid in the name lets the next run remove what a killed one left (temporaries.py)
    prefix = f".{dest.name}.{os.getpid()}."
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=prefix, suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def probe_key() -> str:
    """A fresh key for `ObjectStore.probe`'s object, hidden from listings like a temp file."""
    return f"probe-{secrets.token_hex(4)}{TMP_SUFFIX}"


def source_file(path: str | Path) -> Path:
    source = Path(path)
    if not source.is_file():
        raise InputError(f"cannot upload {source}: it is not a file")
    return source


class ObjectStore(ABC):
    """The few operations the pipeline needs, identical on every backend."""

    uri: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> None: ...

    @abstractmethod
    def get_file(self, key: str, path: str | Path) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def sha256(self, key: str) -> str: ...

    @abstractmethod
    def local_path(self, key: str) -> Path: ...

    @abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and a version tag for `put_bytes_if`; None when it is missing."""

    @abstractmethod
    def put_bytes_if(self, key: str, data: bytes, version: str | None) -> bool:
        """Write only if the object still has `version` (None: only if it does not exist);
        False, writing nothing, when another writer got there first. The one concurrency
        primitive: the champion and the ingest lock are built on it."""

    @abstractmethod
    def url(self, key: str) -> str: ...

    @abstractmethod
    def presigned_url(
        self, key: str, expires_s: int = 7 * 86400, endpoint_url: str | None = None
    ) -> str | None:
        """An http(s) GET link (None where the store has none); `endpoint_url` signs it
        for another address of the same server, e.g. the one a browser reaches."""

    def probe(self) -> None:
        """Write and delete a small hidden object, once, without the retries the pipeline's
        own operations get: the pre-run check, so that a store that is unreachable, silent,
        read-only, full or missing fails with one line at once, before any work."""
        key = probe_key()
        self.put_bytes(key, PROBE_DATA)
        self.delete(key)

    @contextlib.contextmanager
    def writing_file(self, key: str) -> Iterator[Path]:
        """A local path to fill with the object's bytes (a memmap, say); the object appears
        whole when the block ends, and not at all when it raises. This backend stages it in a
        temp folder and uploads it; the local one renames it into place without a copy."""
        check_key(key)
        with tempfile.TemporaryDirectory(prefix="pneumo-stage-") as folder:
            path = Path(folder) / key.rpartition("/")[2]
            path.touch()
            yield path
            self.put_file(key, path)

    def put_text(self, key: str, text: str) -> None:
        self.put_bytes(key, text.encode("utf-8"))

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode("utf-8")

    def put_json(self, key: str, obj: Any) -> None:
        self.put_text(key, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def get_json(self, key: str) -> Any:
        return self._parsed_json(key, self.get_text(key))

    def get_text_or_none(self, key: str) -> str | None:
        """An optional object's text: None when it does not exist (yet)."""
        try:
            return self.get_text(key)
        except ObjectNotFound:
            return None

    def get_json_or_none(self, key: str) -> Any:
        """An optional object's JSON: None when it does not exist, InputError if not JSON."""
        text = self.get_text_or_none(key)
        return None if text is None else self._parsed_json(key, text)

    def _parsed_json(self, key: str, text: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{self.url(key)} is not valid JSON: {exc}") from exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"
