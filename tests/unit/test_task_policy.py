"""Which failures the tasks retry, and what the ingest cache key sees of a local source."""

from __future__ import annotations

import errno
import itertools

import pytest
import torch
from prefect.states import Failed

from pneumo_core.errors import InputError, ObjectNotFound, StorageError, TransientStorageError
from tasks.data import source_fingerprint
from tasks.policy import RETRY_OPTIONS, is_transient


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (TransientStorageError("s3 unreachable"), False),  # the store retried it already
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (RuntimeError("worker died"), True),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), False),
        (OSError(errno.ENOSPC, "No space left on device"), False),
        (OSError(errno.EROFS, "Read-only file system"), False),
        (PermissionError(errno.EACCES, "Permission denied"), False),
        (InputError("bad row 3"), False),
        (StorageError("no such bucket"), False),
        (ObjectNotFound("missing key"), False),
        (ValueError("bad config value"), False),
        (KeyError("field"), False),
        (FloatingPointError("loss is nan"), False),
    ],
)
def test_only_failures_that_may_pass_are_retried(error: Exception, retried: bool) -> None:
    state = Failed(data=error, message=repr(error))
    assert is_transient(None, None, state) is retried  # type: ignore[arg-type]


def test_retry_policy_backs_off_exponentially_with_jitter() -> None:
    assert RETRY_OPTIONS["retries"] >= 2
    delays = RETRY_OPTIONS["retry_delay_seconds"](RETRY_OPTIONS["retries"])
    assert all(later == 2 * earlier for earlier, later in itertools.pairwise(delays))
    assert 0 < RETRY_OPTIONS["retry_jitter_factor"] <= 1


def test_fingerprint_follows_content_changes_of_a_folder(tmp_path) -> None:
    folder = tmp_path / "archive"
    (folder / "images").mkdir(parents=True)
    (folder / "labels.csv").write_text("a,b\n")
    (folder / "images" / "1.dcm").write_bytes(b"x" * 10)
    first = source_fingerprint(str(folder))
    assert first == source_fingerprint(str(folder))
    (folder / "images" / "1.dcm").write_bytes(b"y" * 11)
    second = source_fingerprint(str(folder))
    assert second != first
    (folder / "images" / "2.dcm").write_bytes(b"z")
    assert source_fingerprint(str(folder)) not in (first, second)


def test_fingerprint_of_a_zip_changes_with_its_bytes(tmp_path) -> None:
    archive = tmp_path / "data.zip"
    archive.write_bytes(b"PK one")
    first = source_fingerprint(str(archive))
    archive.write_bytes(b"PK two!")
    assert source_fingerprint(str(archive)) != first


@pytest.mark.parametrize(
    "source", ["kaggle://rsna-pneumonia-detection-challenge", "s3://bucket/rsna.zip"]
)
def test_remote_sources_have_no_fingerprint(source: str) -> None:
    assert source_fingerprint(source) is None
