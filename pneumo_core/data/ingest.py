"""Ingest: copy a source of the competition archive into the store, under a manifest.

A source is `kaggle://<competition>`, a local `.zip`, a local folder already unpacked, or an
`s3://bucket/key.zip`. Every member's name is checked, the competition's files and valid
labels must be there, and every member's bytes are read in full before the first write
(archive.py), so a hostile, corrupt or wrong source leaves the store exactly as it was.
Members already stored byte for byte are not uploaded again. `manifest.json` is written
last and marks a complete ingest; it is removed before the first object changes, so a reader
never pairs an old manifest with new bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pneumo_core import DEFAULT_DATASET
from pneumo_core.data.archive import (
    Member,
    check_kaggle_shape,
    folder_members,
    read_checked,
    zip_members,
)
from pneumo_core.data.kaggle import KAGGLE_SCHEME, downloaded_competition
from pneumo_core.errors import InputError, ObjectNotFound
from pneumo_core.layout import ingest_lock_key, manifest_key, raw_prefix
from pneumo_core.progress import progress_reporter
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.lease import lease
from pneumo_core.storage.local import LocalStore
from pneumo_core.storage.open import local_path, open_store

log = logging.getLogger(__name__)

UPLOAD_WORKERS = 8  # concurrent puts and HEADs; botocore keeps 10 connections per client


@dataclass(frozen=True)
class IngestResult:
    dataset: str
    members: int
    bytes: int
    skipped: int
    uploaded: int
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def manifest_digest(members: list[dict[str, Any]]) -> str:
    """One checksum for the whole ingest: sha256 over sorted `key:sha256` lines."""
    lines = sorted(f"{m['key']}:{m['sha256']}\n" for m in members)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def ingest(
    source: str,
    store: ObjectStore,
    dataset: str = DEFAULT_DATASET,
    progress: bool | None = None,
) -> IngestResult:
    """Copy the source's members to `raw/<dataset>/`, skipping those already stored intact.
    Every check of `check_source` runs first (for a download, once it is here), so a refused
    source leaves the store, and its current manifest, as they were."""
    _check_form(source, store)
    with _members_of(source) as members:
        check_kaggle_shape(members, _describe(source))
        # one ingest at a time per dataset: the manifest describes exactly what is stored
        with lease(store, ingest_lock_key(dataset), f"ingest of {_describe(source)}"):
            return _store_members(members, _describe(source), store, dataset, progress)


# --- sources --------------------------------------------------------------------------------


def check_source(source: str, store: ObjectStore) -> None:
    """Every check ingest makes before writing, for a source already on this machine: its
    form, the member names and a zip's inflation ceilings, the competition's files present
    and labels prepare would accept. Reads a zip's directory and the two label tables, never
    an image, so `pneumo run` refuses a bad source in about a second. A `kaggle://` or
    `s3://` source is checked for its form only here, and in full by ingest once downloaded."""
    _check_form(source, store)
    if source.startswith((KAGGLE_SCHEME, "s3://")):
        return
    with _members_of(source) as members:
        check_kaggle_shape(members, _describe(source))


def _check_form(source: str, store: ObjectStore) -> None:
    """The cheap checks of a source: its form, that a local one exists, and that the store
    is not inside a source folder (each ingest would then copy the store into itself, and the
    second one would remove the manifest it is reading)."""
    if source.startswith(KAGGLE_SCHEME):
        if not source.removeprefix(KAGGLE_SCHEME).strip("/"):
            raise InputError(f"source {source!r} names no competition")
        return
    if source.startswith("s3://"):
        parent, _, name = source.rpartition("/")
        if parent == "s3:/" or not name:
            raise InputError(f"source {source!r} is not an s3://bucket/key of a zip")
        return
    path = _local_path(source).resolve()
    if not path.exists():
        raise InputError(f"source {source!r}: no such folder or .zip file")
    if isinstance(store, LocalStore) and path.is_dir() and store.root.is_relative_to(path):
        raise InputError(
            f"the store {store.root} is inside the source folder {path}: "
            "put the store somewhere else"
        )


@contextlib.contextmanager
def _members_of(source: str) -> Iterator[list[Member]]:
    """The checked members of a source, readable while the context is open."""
    if source.startswith(KAGGLE_SCHEME):
        competition = source.removeprefix(KAGGLE_SCHEME).strip("/")
        with downloaded_competition(competition) as archive, zip_members(archive) as members:
            yield members
        return
    if source.startswith("s3://"):
        parent, _, name = source.rpartition("/")
        with zip_members(open_store(parent).local_path(name)) as members:
            yield members
        return
    path = _local_path(source)
    if path.is_dir():
        yield folder_members(path)
    elif path.is_file():
        with zip_members(path) as members:
            yield members
    else:
        raise InputError(f"source {source!r}: no such folder or .zip file")


def _local_path(source: str) -> Path:
    """A local source: a path, or a file: URI read as the store's URIs are."""
    return local_path(source).expanduser()


def _describe(source: str) -> str:
    """The source as the manifest records it: local paths made absolute."""
    if source.startswith((KAGGLE_SCHEME, "s3://")):
        return source
    return str(_local_path(source).resolve())


# --- store ----------------------------------------------------------------------------------


def _store_members(
    members: list[Member], source: str, store: ObjectStore, dataset: str, bar: bool | None
) -> IngestResult:
    """Two passes: every member is read (a corrupt one fails) and compared with the store
    before the first write, then only the changed ones are read again and written."""
    prefix = raw_prefix(dataset)
    key_of_manifest = manifest_key(dataset)
    previous = _stored_manifest(store, key_of_manifest)
    entries: list[dict[str, Any]] = []
    unproven: list[tuple[Member, str, str]] = []
    proven = _proven_by_manifest(store, prefix, previous)
    with tempfile.TemporaryDirectory(prefix="pneumo-ingest-") as tmp:
        spill = Path(tmp) / "member"
        with progress_reporter(f"check {dataset}", len(members), bar=bar) as advance:
            for member in members:
                key = prefix + member.name
                _, size, sha = read_checked(member, spill, source)
                entries.append({"key": key, "size": size, "sha256": sha})
                if proven.get(key) != sha:
                    unproven.append((member, key, sha))
                advance(1)
        with ThreadPoolExecutor(UPLOAD_WORKERS) as pool:
            stored = pool.map(partial(_stored_sha256, store), [key for _, key, _ in unproven])
            changed = [
                (member, sha)
                for (member, _, sha), have in zip(unproven, stored, strict=True)
                if have != sha
            ]
        if changed and previous is not None:
            store.delete(key_of_manifest)
            previous = None
        with (
            progress_reporter(f"ingest {dataset}", len(changed), bar=bar) as advance,
            _Uploads(store, advance) as uploads,
        ):
            for member, sha in changed:
                content, _, again = read_checked(member, spill, source)
                if again != sha:
                    raise InputError(f"{source}: member {member.name!r} changed while ingesting")
                uploads.put(prefix + member.name, content, reused=content == spill)
    uploaded = len(changed)
    entries.sort(key=lambda e: e["key"])
    manifest = {
        "dataset": dataset,
        "source": source,
        "members": entries,
        "digest": manifest_digest(entries),
    }
    if manifest != previous:
        store.put_json(key_of_manifest, manifest)
    _warn_about_strays(store, prefix, {e["key"] for e in entries} | {key_of_manifest})
    result = IngestResult(
        dataset=dataset,
        members=len(entries),
        bytes=sum(e["size"] for e in entries),
        skipped=len(entries) - uploaded,
        uploaded=uploaded,
        digest=manifest["digest"],
    )
    log.info("ingest %s from %s: %s", dataset, source, result)
    return result


class _Uploads:
    """Puts `UPLOAD_WORKERS` at a time (one at a time, a round trip per object bounds an
    ingest of 30,000 small DICOMs), with at most twice that many members read ahead so
    memory stays bounded. A file that will be overwritten (`reused`) is put before
    reading on. The first failure is raised once the puts under way have ended."""

    def __init__(self, store: ObjectStore, advance: Callable[[int], None]) -> None:
        self.store, self.advance = store, advance
        self.pending: set[Future] = set()
        self.pool = ThreadPoolExecutor(UPLOAD_WORKERS, thread_name_prefix="ingest-put")

    def __enter__(self) -> _Uploads:
        return self

    def put(self, key: str, content: bytes | Path, reused: bool = False) -> None:
        put = self.store.put_bytes if isinstance(content, bytes) else self.store.put_file
        if reused:
            put(key, content)
            self.advance(1)
            return
        if len(self.pending) >= 2 * UPLOAD_WORKERS:
            self._harvest(FIRST_COMPLETED)
        self.pending.add(self.pool.submit(put, key, content))

    def _harvest(self, until: str) -> None:
        done, self.pending = wait(self.pending, return_when=until)
        for future in done:
            future.result()
            self.advance(1)

    def __exit__(self, *exc_info: object) -> None:
        try:
            if exc_info[0] is None:
                self._harvest(ALL_COMPLETED)
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _proven_by_manifest(
    store: ObjectStore, prefix: str, previous: dict[str, Any] | None
) -> dict[str, str]:
    """key -> sha256 of the objects that need no request of their own. The manifest is
    written only after every member is stored (and removed before any write), so on S3,
    where `sha256` is a HEAD returning what our own put recorded (no more than the manifest
    says), one listing proving presence replaces a HEAD per object. On a local store
    `sha256` re-reads the bytes, a real check that finds and repairs damage: nothing is
    taken on trust there."""
    if previous is None or isinstance(store, LocalStore):
        return {}
    present = set(store.list(prefix))
    return {m["key"]: m["sha256"] for m in previous["members"] if m["key"] in present}


def _stored_manifest(store: ObjectStore, key: str) -> dict[str, Any] | None:
    """The manifest of an earlier ingest; an unreadable one counts as none (it is rewritten)."""
    try:
        return store.get_json(key)
    except (ObjectNotFound, InputError):
        return None


def _stored_sha256(store: ObjectStore, key: str) -> str | None:
    try:
        return store.sha256(key)
    except ObjectNotFound:
        return None


def _warn_about_strays(store: ObjectStore, prefix: str, expected: set[str]) -> None:
    """Objects from an earlier, different source stay (nothing stored is deleted) but are named."""
    strays = [key for key in store.list(prefix) if key not in expected]
    if strays:
        log.warning(
            "%d object(s) under %s are not in this manifest (from an earlier source), e.g. %s",
            len(strays),
            prefix,
            strays[0],
        )
