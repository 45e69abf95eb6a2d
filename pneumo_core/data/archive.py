"""Reading a local source of the archive: a zip or an unpacked folder, as checked members.

Archives are untrusted. Before a member is offered its name is checked (it must land below
raw/<dataset>/), the zip's directory is checked against bombs (total size, compression ratio),
links, encryption, duplicates and file-versus-folder clashes are refused, and a corrupt member
fails with its name. `check_kaggle_shape` then refuses a source that is not the competition's
archive, or whose labels prepare would refuse, reading only the two label tables. Nothing here
writes to the store: ingest.py decides what to upload.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO

from pneumo_core.data.labels import load_labels
from pneumo_core.errors import InputError
from pneumo_core.layout import CLASS_INFO, MANIFEST, TRAIN_IMAGES, TRAIN_LABELS

SMALL_MEMBER_BYTES = 8 << 20  # larger members go through a local file and put_file (multipart)
_CHUNK = 1 << 20
# Zip bomb ceilings: PNEUMO_INGEST_MAX_BYTES / PNEUMO_INGEST_MAX_RATIO (pneumo_core/settings.py).
RATIO_CHECK_BYTES = 1 << 20  # smaller members cannot be a bomb, whatever their ratio
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Member:
    """One file of a source, named and checked, readable on demand."""

    name: str  # path below raw/<dataset>/, "/"-separated, already checked
    open: Callable[[], IO[bytes]]
    file: Path | None  # the member itself on local disk (folder sources), read in place


@contextlib.contextmanager
def zip_members(archive: Path) -> Iterator[list[Member]]:
    """The checked members of a zip, readable while the context is open."""
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
                members.append(Member(name, partial(zf.open, info), None))
        yield _checked_layout(members, archive)


def _check_inflation(infos: list[zipfile.ZipInfo], archive: Path) -> None:
    """Refuse a zip bomb before reading a byte: a ceiling on the total uncompressed size and on
    each large member's compression ratio. The sizes come from the archive's directory, and
    zipfile never inflates a member past its declared size (a lie fails its CRC check)."""
    from pneumo_core.settings import settings

    knobs = settings()
    max_bytes, max_ratio = knobs.ingest_max_bytes, knobs.ingest_max_ratio
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


def folder_members(root: Path) -> list[Member]:
    """Every file below root; links are followed only while they stay inside root."""
    root = root.resolve()
    members: list[Member] = []

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
                members.append(Member(name, partial(open, real, "rb"), real))
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


def _checked_layout(members: list[Member], origin: Path) -> list[Member]:
    """Refuse names the store could not hold side by side (duplicates, file vs folder)."""
    names = [m.name for m in members]
    folders = {n.rsplit("/", i)[0] for n in names for i in range(1, n.count("/") + 1)}
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputError(f"{origin}: member {name!r} appears twice")
        if name in folders:
            raise InputError(f"{origin}: {name!r} is both a file and a folder")
        if name == MANIFEST:
            raise InputError(f"{origin}: member {name!r} would overwrite the ingest manifest")
        seen.add(name)
    if not members:
        raise InputError(f"{origin}: no files to ingest")
    return members


def check_kaggle_shape(members: list[Member], where: str) -> None:
    """Refuse a source that is not the competition's archive (naming what is missing) or whose
    labels prepare would refuse: checked with prepare's own parser before anything is stored,
    so a broken source never replaces a good dataset. Image files are not read."""
    by_name = {m.name: m for m in members}
    missing = [name for name in (TRAIN_LABELS, CLASS_INFO) if name not in by_name]
    if not any(name.startswith(TRAIN_IMAGES + "/") for name in by_name):
        missing.append(f"{TRAIN_IMAGES}/ (the train images)")
    if missing:
        raise InputError(
            f"{where}: not the competition's archive: no {', '.join(missing)} at its top"
            f"{_what_is_there(sorted(by_name))}"
        )
    labels = load_labels(
        _table(by_name[TRAIN_LABELS], f"{where}/{TRAIN_LABELS}"),
        _table(by_name[CLASS_INFO], f"{where}/{CLASS_INFO}"),
    )
    if labels.patients.empty:
        raise InputError(f"{where}/{TRAIN_LABELS}: no labelled patients (only a header)")


def _what_is_there(names: list[str]) -> str:
    """A hint for a source that is not the archive: where the labels sit if they are nested
    one level down, else the first few names at its top."""
    nested = [n for n in names if n.endswith("/" + TRAIN_LABELS)]
    if nested:
        return f" (it has {nested[0]!r}: give the folder holding that file, unpacked, instead)"
    top = sorted({n.split("/")[0] + ("/" if "/" in n else "") for n in names})
    shown = ", ".join(top[:5]) + (f" and {len(top) - 5} more" if len(top) > 5 else "")
    return f" (its top holds {shown})"


def _table(member: Member, name: str) -> io.StringIO:
    """A label table as text named for messages, decoded as prepare decodes the stored copy."""
    try:
        with member.open() as src:
            text = src.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise InputError(f"{name}: member is corrupt ({exc})") from exc
    stream = io.StringIO(text)
    stream.name = name
    return stream


def read_checked(member: Member, spill: Path, source: str) -> tuple[bytes | Path, int, str]:
    """The member's bytes (small) or a local file holding them (large, written to `spill`
    unless the member is a file already), its size and sha256; InputError if corrupt."""
    try:
        return _read_member(member, spill)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise InputError(f"{source}: member {member.name!r} is corrupt ({exc})") from exc


def _read_member(member: Member, spill: Path) -> tuple[bytes | Path, int, str]:
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
