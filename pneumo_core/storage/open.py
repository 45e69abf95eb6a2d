"""A store from its URI: 'file://PATH', a plain path, or 's3://bucket[/prefix]'."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.request import url2pathname

from pneumo_core.errors import InputError
from pneumo_core.layout import (
    CHAMPION_KEY,
    PREFECT_RESULTS,
    RUNS,
    WEIGHTS_PREFIX,
    lock_key,
    prepared_prefix,
    raw_prefix,
)
from pneumo_core.storage.base import TMP_SUFFIX, ObjectStore
from pneumo_core.storage.local import LocalStore
from pneumo_core.storage.s3 import S3Store

_FILE_URI_HELP = "write file:///absolute/path (three slashes), or a plain path"


def open_store(uri: str | Path) -> ObjectStore:
    """'file://PATH', a plain path, or 's3://bucket[/prefix]'. Opening writes nothing: a
    local store's folder appears with its first object."""
    text = str(uri)
    if text.startswith("s3://"):
        bucket, _, prefix = text.removeprefix("s3://").partition("/")
        if not bucket:
            raise InputError(f"storage URI {text!r} names no bucket (expected s3://bucket/prefix)")
        return S3Store(bucket, prefix)
    if "://" in text and not text.startswith("file://"):
        raise InputError(f"unsupported storage URI {text!r}: use file://PATH, a path or s3://")
    return LocalStore(local_path(text))


def local_path(uri: str) -> Path:
    """The path a plain path or a file: URI names. A file: URI must name an absolute path on
    this machine: 'file://' alone would mean the current folder, and in 'file://data/x'
    'data' is a host name, not a folder, so both are refused rather than guessed at."""
    if not uri:
        raise InputError("an empty path or URI names no folder")
    if not uri.startswith("file:"):
        return Path(uri)
    rest = uri.removeprefix("file:")
    if rest.startswith("//"):
        host, slash, path = rest[2:].partition("/")
        if host not in ("", "localhost"):
            raise InputError(
                f"file URI {uri!r} names the host {host!r}, not a folder; a relative path is "
                f"not a file URI: {_FILE_URI_HELP}"
            )
        rest = slash + path
    if not rest.startswith("/"):
        raise InputError(f"file URI {uri!r} has no absolute path: {_FILE_URI_HELP}")
    return Path(url2pathname(rest))


def _top_level_names() -> set[str]:
    """The first part of every key a pneumo store holds (raw, prepared, runs, models, ...)."""
    keys = (
        raw_prefix("d"),
        prepared_prefix("d", 1),
        RUNS,
        CHAMPION_KEY,
        WEIGHTS_PREFIX,
        lock_key("l"),
        PREFECT_RESULTS,
    )
    return {key.split("/")[0] for key in keys}


def check_is_store(store: ObjectStore) -> None:
    """For commands that only read: InputError when a local store's folder does not exist,
    or exists and holds files but nothing a pneumo store holds (`--storage /etc`), so a wrong
    path is named instead of read as an empty store. An empty folder is an empty store. S3
    is not checked: a prefix without objects is simply empty."""
    if not isinstance(store, LocalStore):
        return
    root = store.root
    if not root.is_dir():
        raise InputError(f"no pneumo store at {root}: the folder does not exist")
    with os.scandir(root) as listing:
        names = sorted(
            e.name for e in listing if not e.name.startswith(".") and TMP_SUFFIX not in e.name
        )
    expected = _top_level_names()
    if names and not expected.intersection(names):
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise InputError(
            f"{root} is not a pneumo store: it holds {shown} but none of "
            f"{', '.join(n + '/' for n in sorted(expected))}"
        )


def open_existing_store(uri: str) -> ObjectStore:
    """`open_store` for commands that only read: a wrong path is named (`check_is_store`)."""
    store = open_store(uri)
    check_is_store(store)
    return store
