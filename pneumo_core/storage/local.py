"""A local folder (file://): the embedded default; temp file + rename makes every write atomic."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pneumo_core.errors import ObjectNotFound, StorageError
from pneumo_core.storage.base import (
    TMP_SUFFIX,
    ObjectStore,
    atomic_path,
    check_key,
    check_prefix,
    file_sha256,
    source_file,
)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on a folder: conditional writes in it happen one at a time, across
    processes (released by the kernel if the holder dies)."""
    import fcntl

    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:  # a parent that is a file, a read-only or forbidden disk
        raise StorageError(f"cannot write in {folder.as_uri()}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class LocalStore(ObjectStore):
    """A folder; the embedded default. Temp file + rename makes every write atomic. The folder
    is made by the first write, not on opening, so reading a store, or a command refused
    before its work, leaves nothing behind (a missing folder reads as an empty store)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"cannot use {self.root} as a store: it is a file, not a folder")
        self.uri = self.root.as_uri()

    def probe(self) -> None:
        """Whether the first write can make the store's folder and write in it, checked
        without writing: a refused run leaves no folder behind."""
        if self.root.is_dir():
            return super().probe()
        parent = next(p for p in self.root.parents if p.exists())
        if not parent.is_dir():
            raise StorageError(f"cannot use {self.root} as a store: {parent} is a file")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise StorageError(f"cannot create the store {self.root}: {parent} is not writable")

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"{self.url(key)} does not exist")
        return path

    @contextlib.contextmanager
    def _writing(self, key: str) -> Iterator[Path]:
        path = self._path(key)
        try:
            with atomic_path(path) as tmp:
                yield tmp
        except OSError as exc:  # a full, read-only or forbidden disk: the machine's problem
            raise StorageError(f"cannot write {self.url(key)}: {exc.strerror}") from exc

    @contextlib.contextmanager
    def writing_file(self, key: str) -> Iterator[Path]:
        with self._writing(key) as tmp:
            yield tmp

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._writing(key) as tmp:
            tmp.write_bytes(data)

    def get_bytes(self, key: str) -> bytes:
        return self._existing(key).read_bytes()

    def put_file(self, key: str, path: str | Path) -> None:
        source = source_file(path)
        with self._writing(key) as tmp:
            shutil.copyfile(source, tmp)

    def get_file(self, key: str, path: str | Path) -> None:
        source = self._existing(key)
        with atomic_path(Path(path)) as tmp:
            shutil.copyfile(source, tmp)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        base = self.root / prefix.rpartition("/")[0]
        keys = []
        for folder, _dirs, files in os.walk(base):
            for name in files:
                if name.endswith(TMP_SUFFIX):
                    continue
                key = (Path(folder) / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self._path(key).unlink()

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        base = self.root / prefix.rpartition("/")[0]
        for folder, _dirs, _files in os.walk(base, topdown=False):
            if Path(folder) != self.root:
                with contextlib.suppress(OSError):  # not empty: another object lives there
                    os.rmdir(folder)
        return len(keys)

    def size(self, key: str) -> int:
        return self._existing(key).stat().st_size

    def sha256(self, key: str) -> str:
        return file_sha256(self._existing(key))

    def local_path(self, key: str) -> Path:
        return self._existing(key)

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return data, hashlib.sha256(data).hexdigest()

    def put_bytes_if(self, key: str, data: bytes, version: str | None) -> bool:
        path = self._path(key)
        with _folder_lock(path.parent):
            current = self.read_versioned(key)
            if (current[1] if current else None) != version:
                return False
            self.put_bytes(key, data)
        return True

    def url(self, key: str) -> str:
        return self._path(key).as_uri()

    def presigned_url(
        self, key: str, expires_s: int = 7 * 86400, endpoint_url: str | None = None
    ) -> str | None:
        check_key(key)
        return None
