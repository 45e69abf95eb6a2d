"""Ingest and prepare against a real S3 server (SeaweedFS): an s3:// zip as the source, S3 as
the destination, and a prepared cache identical to the one built on a local folder."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo_core import DEFAULT_DATASET
from pneumo_core.data.ingest import ingest
from pneumo_core.data.prepare import prepare_dataset
from pneumo_core.data.synthetic import generate
from pneumo_core.errors import InputError, ObjectNotFound
from pneumo_core.layout import TRAIN_LABELS, manifest_key, prepared_prefix
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.local import LocalStore
from pneumo_core.storage.open import open_store
from pneumo_core.storage.s3 import S3Store

PREFIX = f"raw/{DEFAULT_DATASET}/"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(
        tmp_path_factory.mktemp("synth"), n_train=12, n_test=3, image_size=96, seed=11, zip=True
    )


def zip_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist() if not n.endswith("/")}


def assert_stored(store: ObjectStore, members: dict[str, bytes]) -> None:
    manifest = store.get_json(manifest_key(DEFAULT_DATASET))
    assert {m["key"] for m in manifest["members"]} == {PREFIX + n for n in members}
    for entry in manifest["members"]:
        data = members[entry["key"].removeprefix(PREFIX)]
        assert store.get_bytes(entry["key"]) == data
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() == store.sha256(entry["key"])
        assert entry["size"] == len(data) == store.size(entry["key"])


def test_s3_zip_source(s3_env: str, archive: Path, tmp_path: Path) -> None:
    open_store(s3_env).put_file("archives/rsna.zip", archive)
    store = LocalStore(tmp_path / "store")
    result = ingest(f"{s3_env}/archives/rsna.zip", store)
    assert_stored(store, zip_members(archive))
    assert store.get_json(manifest_key(DEFAULT_DATASET))["source"] == f"{s3_env}/archives/rsna.zip"
    assert result.uploaded == result.members


@pytest.mark.parametrize("defect", ["bad-labels", "no-labels"])
def test_s3_zip_source_is_checked_before_it_replaces_the_dataset(
    s3_env: str, archive: Path, tmp_path: Path, defect: str
) -> None:
    """Downloaded, then checked like a local zip: the store's current dataset stays."""
    store = LocalStore(tmp_path / "store")
    ingest(str(archive), store)
    before = {k: store.get_bytes(k) for k in store.list("")}
    members = zip_members(archive)
    if defect == "bad-labels":
        lines = members[TRAIN_LABELS].decode().splitlines()
        lines[1] = lines[1].split(",")[0] + ",10,10,-5,20,1"
        members[TRAIN_LABELS] = ("\n".join(lines) + "\n").encode()
        expected = rf"{TRAIN_LABELS} row 2: box size must be positive, got width -5"
    else:
        del members[TRAIN_LABELS]
        expected = rf"not the competition's archive: no {TRAIN_LABELS}"
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    open_store(s3_env).put_file("archives/broken.zip", broken)
    with pytest.raises(InputError, match=expected):
        ingest(f"{s3_env}/archives/broken.zip", store)
    assert {k: store.get_bytes(k) for k in store.list("")} == before


def test_missing_s3_source_names_the_object(s3_env: str, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound, match=r"archives/absent\.zip"):
        ingest(f"{s3_env}/archives/absent.zip", LocalStore(tmp_path / "store"))


def test_into_s3_rerun_skips_and_hostile_archive_changes_nothing(
    s3_store: S3Store, archive: Path, tmp_path: Path
) -> None:
    first = ingest(str(archive), s3_store)
    assert_stored(s3_store, zip_members(archive))
    again = ingest(str(archive), s3_store)
    assert (again.uploaded, again.skipped) == (0, first.members)

    before = {k: s3_store.get_bytes(k) for k in s3_store.list("")}
    hostile = tmp_path / "hostile.zip"
    with zipfile.ZipFile(hostile, "w") as zf:
        zf.writestr(TRAIN_LABELS, b"patientId,x,y,width,height,Target\n")
        zf.writestr("../../escape.txt", b"evil")
    with pytest.raises(InputError, match=r"'\.\./\.\./escape\.txt'"):
        ingest(str(hostile), s3_store)
    assert {k: s3_store.get_bytes(k) for k in s3_store.list("")} == before


def test_into_s3_rerun_sends_no_head_for_what_the_manifest_proves(
    s3_store: S3Store, archive: Path
) -> None:
    """An unchanged re-run lists the prefix once instead of a HEAD per object; an object
    deleted behind the manifest's back is the only one asked about, and is put back."""
    first = ingest(str(archive), s3_store)
    heads: list[str] = []
    s3_store._client.meta.events.register(
        "before-parameter-build.s3.HeadObject", lambda params, **_: heads.append(params["Key"])
    )
    again = ingest(str(archive), s3_store)
    assert (again.uploaded, again.skipped, heads) == (0, first.members, [])

    gone = PREFIX + TRAIN_LABELS
    s3_store.delete(gone)
    repaired = ingest(str(archive), s3_store)
    assert (repaired.uploaded, len(heads)) == (1, 1)
    assert heads[0].endswith(gone)
    assert_stored(s3_store, zip_members(archive))


def test_prepare_on_s3_matches_a_local_folder(
    s3_store: S3Store, archive: Path, tmp_path: Path
) -> None:
    local = LocalStore(tmp_path / "store")
    for store in (s3_store, local):
        ingest(str(archive), store)
        result = prepare_dataset(store, image_size=48, n_folds=2, workers=2)
        assert (result.n_train, result.n_test, result.n_quarantined) == (12, 3, 0)
    prefix = prepared_prefix(DEFAULT_DATASET, 48)
    assert s3_store.list(prefix) == local.list(prefix)
    for name in ("metadata.csv", "labels.csv", "boxes.csv", "folds.csv", "quarantine.csv"):
        assert s3_store.get_text(prefix + name) == local.get_text(prefix + name)
    for split in ("train", "test"):
        key = f"{prefix}images-{split}.npy"
        np.testing.assert_array_equal(
            np.load(s3_store.local_path(key), mmap_mode="r"), np.load(local.local_path(key))
        )
    metadata = pd.read_csv(io.StringIO(s3_store.get_text(prefix + "metadata.csv")))
    assert len(metadata) == 15
    assert prepare_dataset(s3_store, image_size=48, n_folds=2, workers=2).reused
