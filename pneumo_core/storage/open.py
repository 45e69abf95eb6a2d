"""A store from its URI: 'file://PATH', a plain path, or 's3://bucket[/prefix]'."""

from __future__ import annotations

from pathlib import Path
from urllib.request import url2pathname

from pneumo_core.errors import InputError
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.local import LocalStore
from pneumo_core.storage.s3 import S3Store


def open_store(uri: str | Path) -> ObjectStore:
    """'file://PATH', a plain path, or 's3://bucket[/prefix]'."""
    text = str(uri)
    if text.startswith("s3://"):
        bucket, _, prefix = text.removeprefix("s3://").partition("/")
        if not bucket:
            raise InputError(f"storage URI {text!r} names no bucket (expected s3://bucket/prefix)")
        return S3Store(bucket, prefix)
    if text.startswith("file://"):
        return LocalStore(url2pathname(text.removeprefix("file://")))
    if "://" in text:
        raise InputError(f"unsupported storage URI {text!r}: use file://PATH, a path or s3://")
    if not text:
        raise InputError("empty storage URI")
    return LocalStore(text)
