"""Sources of the competition archive, copied safely into the store under a manifest.

A source is `kaggle://<competition>`, a local `.zip`, a local folder already unpacked, or an
`s3://bucket/key.zip`. Archives are untrusted: every member's name is checked and its bytes
read in full before the first write, so a hostile or corrupt archive leaves the store exactly
as it was. `manifest.json` is written
last and marks a complete ingest; it is removed before the first object changes, so a reader
never pairs an old manifest with new bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import stat
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

from pneumo_core import DEFAULT_DATASET
from pneumo_core.errors import InputError, ObjectNotFound
from pneumo_core.progress import progress_reporter
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.lease import lease
from pneumo_core.storage.local import LocalStore
from pneumo_core.storage.open import open_store

log = logging.getLogger(__name__)

KAGGLE_SCHEME = "kaggle://"
MANIFEST_NAME = "manifest.json"
SMALL_MEMBER_BYTES = 8 << 20  # larger members go through a local file and put_file (multipart)
_CHUNK = 1 << 20
# Zip bomb ceilings (env PNEUMO_INGEST_MAX_BYTES / PNEUMO_INGEST_MAX_RATIO): the real archive
# inflates to about 4 GB, DICOMs barely compress, the CSVs about 5x.
DEFAULT_MAX_ARCHIVE_BYTES = 64 << 30
DEFAULT_MAX_RATIO = 100.0
RATIO_CHECK_BYTES = 1 << 20  # smaller members cannot be a bomb, whatever their ratio
UPLOAD_WORKERS = 8  # concurrent puts and HEADs; botocore keeps 10 connections per client
_DRIVE = re.compile(r"^[A-Za-z]:")
_CREDENTIALS_HELP = (
    "set KAGGLE_USERNAME and KAGGLE_KEY, or save your API token as ~/.kaggle/kaggle.json "
    '({"username": "...", "key": "..."}, from https://www.kaggle.com/settings/api)'
)


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


@dataclass(frozen=True)
class _Member:
    name: str  # path below raw/<dataset>/, "/"-separated, already checked
    open: Callable[[], IO[bytes]]
    file: Path | None  # the member itself on local disk (folder sources), read in place


def manifest_key(dataset: str) -> str:
    return f"raw/{dataset}/{MANIFEST_NAME}"


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
    """Copy the source's members to `raw/<dataset>/`, skipping those already stored intact."""
    check_source(source, store)
    with (
        _members_of(source) as members,
        lease(store, ingest_lock_key(dataset), f"ingest of {_describe(source)}"),
    ):  # one ingest at a time per dataset: the manifest describes exactly what is stored
        return _store_members(members, _describe(source), store, dataset, progress)


def ingest_lock_key(dataset: str) -> str:
    return f"locks/ingest-{dataset}.json"


# --- sources --------------------------------------------------------------------------------


def check_source(source: str, store: ObjectStore) -> None:
    """The cheap checks of a source, before any work: its form, that a local one exists,
    and that the store is not inside a source folder (each ingest would then copy the store
    into itself, and the second one would remove the manifest it is reading)."""
    if source.startswith(KAGGLE_SCHEME):
        if not source.removeprefix(KAGGLE_SCHEME).strip("/"):
            raise InputError(f"source {source!r} names no competition")
        return
    if source.startswith("s3://"):
        parent, _, name = source.rpartition("/")
        if parent == "s3:/" or not name:
            raise InputError(f"source {source!r} is not an s3://bucket/key of a zip")
        return
    path = Path(source.removeprefix("file://")).expanduser().resolve()
    if not path.exists():
        raise InputError(f"source {source!r}: no such folder or .zip file")
    if isinstance(store, LocalStore) and path.is_dir() and store.root.is_relative_to(path):
        raise InputError(
            f"the store {store.root} is inside the source folder {path}: "
            "put the store somewhere else"
        )


@contextlib.contextmanager
def _members_of(source: str) -> Iterator[list[_Member]]:
    """The checked members of a source, readable while the context is open."""
    if source.startswith(KAGGLE_SCHEME):
        competition = source.removeprefix(KAGGLE_SCHEME).strip("/")
        api = kaggle_api()
        with tempfile.TemporaryDirectory(prefix="pneumo-kaggle-") as tmp:
            archive = _download_competition(api, competition, Path(tmp))
            with _zip_members(archive) as members:
                yield members
        return
    if source.startswith("s3://"):
        parent, _, name = source.rpartition("/")
        with _zip_members(open_store(parent).local_path(name)) as members:
            yield members
        return
    path = Path(source.removeprefix("file://")).expanduser()
    if path.is_dir():
        yield _folder_members(path)
    elif path.is_file():
        with _zip_members(path) as members:
            yield members
    else:
        raise InputError(f"source {source!r}: no such folder or .zip file")


def _describe(source: str) -> str:
    """The source as the manifest records it: local paths made absolute."""
    if source.startswith((KAGGLE_SCHEME, "s3://")):
        return source
    return str(Path(source.removeprefix("file://")).expanduser().resolve())


@contextlib.contextmanager
def _zip_members(archive: Path) -> Iterator[list[_Member]]:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{archive}: not a readable zip archive ({exc})") from exc
    with zf:
        _check_inflation(zf.infolist(), archive)
        members = []
        for info in zf.infolist():
            name = _checked_name(info.filename, archive)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise InputError(
                    f"{archive}: member {info.filename!r} is a symbolic link; "
                    "refusing the whole archive"
                )
            if info.flag_bits & 0x1:
                raise InputError(f"{archive}: member {info.filename!r} is encrypted")
            if not info.is_dir():
                members.append(_Member(name, partial(zf.open, info), None))
        yield _checked_layout(members, archive)


def _check_inflation(infos: list[zipfile.ZipInfo], archive: Path) -> None:
    """Refuse a zip bomb before reading a byte: a ceiling on the total uncompressed size and on
    each large member's compression ratio. The sizes come from the archive's directory, and
    zipfile never inflates a member past its declared size (a lie fails its CRC check)."""
    from pneumo_core.storage.s3 import _env_number

    max_bytes = _env_number("PNEUMO_INGEST_MAX_BYTES", DEFAULT_MAX_ARCHIVE_BYTES, int)
    max_ratio = _env_number("PNEUMO_INGEST_MAX_RATIO", DEFAULT_MAX_RATIO, float)
    total = sum(info.file_size for info in infos)
    if total > max_bytes:
        raise InputError(
            f"{archive}: its members would inflate to {total:,} bytes, over the ceiling of "
            f"{max_bytes:,} (PNEUMO_INGEST_MAX_BYTES); refusing the whole archive"
        )
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_CHECK_BYTES and ratio > max_ratio:
            raise InputError(
                f"{archive}: member {info.filename!r} inflates {ratio:,.0f}x "
                f"({info.compress_size:,} to {info.file_size:,} bytes), over the ratio ceiling "
                f"{max_ratio:g} (PNEUMO_INGEST_MAX_RATIO); refusing the whole archive"
            )


def _folder_members(root: Path) -> list[_Member]:
    """Every file below root; links are followed only while they stay inside root."""
    root = root.resolve()
    members: list[_Member] = []

    def walk(folder: Path, prefix: str, chain: tuple[Path, ...]) -> None:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        for entry in entries:
            rel = prefix + entry.name
            name = _checked_name(rel, root)
            real = Path(entry.path).resolve()
            if entry.is_symlink() and not real.is_relative_to(root):
                raise InputError(
                    f"{root}: {rel!r} is a symbolic link to {real}, outside the source folder"
                )
            if real.is_dir():
                if real in chain:
                    raise InputError(f"{root}: {rel!r} links back to a folder above it")
                walk(Path(entry.path), rel + "/", (*chain, real))
            elif real.is_file():
                members.append(_Member(name, partial(open, real, "rb"), real))
            else:
                raise InputError(f"{root}: {rel!r} is not a regular file (or a dangling link)")

    walk(root, "", (root,))
    return _checked_layout(members, root)


def _checked_name(name: str, origin: Path) -> str:
    """The member's path below raw/<dataset>/, or InputError if it could land outside it."""
    parts = [p for p in name.rstrip("/").split("/") if p not in ("", ".")]
    problem = None
    if "\\" in name:
        problem = "contains a backslash"
    elif "\x00" in name:
        problem = "contains a NUL character"
    elif name.startswith("/"):
        problem = "is an absolute path"
    elif _DRIVE.match(name):
        problem = "starts with a drive letter"
    elif ".." in parts:
        problem = "climbs out with '..'"
    elif not parts:
        problem = "has an empty path"
    if problem:
        raise InputError(f"{origin}: member {name!r} {problem}; refusing the whole archive")
    return "/".join(parts)


def _checked_layout(members: list[_Member], origin: Path) -> list[_Member]:
    """Refuse names the store could not hold side by side (duplicates, file vs folder)."""
    names = [m.name for m in members]
    folders = {n.rsplit("/", i)[0] for n in names for i in range(1, n.count("/") + 1)}
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputError(f"{origin}: member {name!r} appears twice")
        if name in folders:
            raise InputError(f"{origin}: {name!r} is both a file and a folder")
        if name == MANIFEST_NAME:
            raise InputError(f"{origin}: member {name!r} would overwrite the ingest manifest")
        seen.add(name)
    if not members:
        raise InputError(f"{origin}: no files to ingest")
    return members


# --- kaggle ---------------------------------------------------------------------------------


def kaggle_api() -> Any:
    """An authenticated `kaggle.KaggleApi`; InputError naming both ways to log in if we can't."""
    config = _kaggle_config_file()
    if not (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")) and not config:
        raise InputError(f"no Kaggle credentials found: {_CREDENTIALS_HELP}")
    # The kaggle package authenticates and prints help on import; keep our stdout clean.
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        if config:
            api.config = str(config)
        try:
            api.authenticate()
        except SystemExit as exc:
            raise InputError(f"Kaggle rejected the credentials: {_CREDENTIALS_HELP}") from exc
    return api


def _kaggle_config_file() -> Path | None:
    """kaggle.json where the kaggle package looks for it, if it holds a username and key."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        candidates = [Path(os.environ["KAGGLE_CONFIG_DIR"])]
    else:
        xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        candidates = [Path.home() / ".kaggle", xdg / "kaggle"]
    for folder in candidates:
        path = folder / "kaggle.json"
        if not path.is_file():
            continue
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not readable as JSON ({type(exc).__name__})") from exc
        if isinstance(values, dict) and values.get("username") and values.get("key"):
            return path
        raise InputError(f"{path}: needs both 'username' and 'key'")
    return None


def _download_competition(api: Any, competition: str, dest_dir: Path) -> Path:
    """The one network call: fetch the competition's zip into dest_dir and return its path."""
    import requests

    try:
        api.competition_download_files(
            competition, path=str(dest_dir), quiet=not sys.stderr.isatty()
        )
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403, 404):
            raise InputError(
                f"Kaggle refused the download of {competition!r} (HTTP {status}): check the "
                "competition name and your credentials, and accept the rules at "
                f"https://www.kaggle.com/competitions/{competition}/rules"
            ) from exc
        raise
    return dest_dir / f"{competition}.zip"


# --- store ----------------------------------------------------------------------------------


def _store_members(
    members: list[_Member], source: str, store: ObjectStore, dataset: str, bar: bool | None
) -> IngestResult:
    """Two passes: every member is read (a corrupt one fails) and compared with the store
    before the first write, then only the changed ones are read again and written."""
    prefix = f"raw/{dataset}/"
    key_of_manifest = manifest_key(dataset)
    previous = _stored_manifest(store, key_of_manifest)
    entries: list[dict[str, Any]] = []
    unproven: list[tuple[_Member, str, str]] = []
    proven = _proven_by_manifest(store, prefix, previous)
    with tempfile.TemporaryDirectory(prefix="pneumo-ingest-") as tmp:
        spill = Path(tmp) / "member"
        with progress_reporter(f"check {dataset}", len(members), bar=bar) as advance:
            for member in members:
                key = prefix + member.name
                _, size, sha = _read_checked(member, spill, source)
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
                content, _, again = _read_checked(member, spill, source)
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


def _read_checked(member: _Member, spill: Path, source: str) -> tuple[bytes | Path, int, str]:
    try:
        return _read_member(member, spill)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise InputError(f"{source}: member {member.name!r} is corrupt ({exc})") from exc


def _read_member(member: _Member, spill: Path) -> tuple[bytes | Path, int, str]:
    """The member's bytes (small) or a local file holding them (large), size and sha256."""
    if member.file is not None and member.file.stat().st_size > SMALL_MEMBER_BYTES:
        with member.file.open("rb") as f:
            return (
                member.file,
                member.file.stat().st_size,
                hashlib.file_digest(f, "sha256").hexdigest(),
            )
    with member.open() as src:
        head = src.read(SMALL_MEMBER_BYTES + 1)
        if len(head) <= SMALL_MEMBER_BYTES:
            return head, len(head), hashlib.sha256(head).hexdigest()
        digest = hashlib.sha256(head)
        size = len(head)
        with spill.open("wb") as dst:
            dst.write(head)
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
                size += len(chunk)
    return spill, size, digest.hexdigest()


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
