"""prepare: decode once, resize, cache; labels, scaled boxes, folds, quarantine, reports."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

from flows.cli.main import main
from pneumo_core import DEFAULT_DATASET
from pneumo_core.data.dicom import read_dicom
from pneumo_core.data.ingest import ingest
from pneumo_core.data.prepare import prepare_dataset
from pneumo_core.data.synthetic import generate
from pneumo_core.errors import InputError
from pneumo_core.layout import CLASS_INFO, TEST_IMAGES, TRAIN_IMAGES, TRAIN_LABELS, prepared_prefix
from pneumo_core.storage.base import TMP_SUFFIX, ObjectStore
from pneumo_core.storage.local import LocalStore

ORIGINAL = 128
SIZE = 64


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(
        tmp_path_factory.mktemp("synth"), n_train=40, n_test=4, image_size=ORIGINAL, seed=7
    )


def read_csv(store: ObjectStore, prefix: str, name: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(store.get_text(prefix + name)), keep_default_na=False)


def load_images(store: ObjectStore, prefix: str, split: str) -> np.ndarray:
    return np.load(store.local_path(f"{prefix}images-{split}.npy"), mmap_mode="r")


def copy_of(synth: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "source"
    shutil.copytree(synth, folder)
    return folder


def test_synthetic_dataset_is_prepared_consistently(synth: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ingest(str(synth), store)
    result = prepare_dataset(store, image_size=SIZE, n_folds=4, workers=2)
    prefix = prepared_prefix(DEFAULT_DATASET, SIZE)
    assert result.prefix == prefix and not result.reused
    assert (result.n_train, result.n_test, result.n_quarantined) == (40, 4, 0)
    assert (result.missing_images, result.unlabelled_images) == (0, 0)

    metadata = read_csv(store, prefix, "metadata.csv")
    for split, n in (("train", 40), ("test", 4)):
        images = load_images(store, prefix, split)
        assert images.shape == (n, SIZE, SIZE) and images.dtype == np.uint8
        rows = metadata[metadata["split"] == split].sort_values("index")
        assert rows["index"].tolist() == list(range(n))
        for row in rows.iloc[:: max(1, n // 4)].itertuples():
            folder = TRAIN_IMAGES if split == "train" else TEST_IMAGES
            dicom = read_dicom(synth / folder / f"{row.patientId}.dcm")
            expected = cv2.resize(dicom.pixels, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
            np.testing.assert_array_equal(images[row.index], expected)
            assert (row.rows, row.cols) == (ORIGINAL, ORIGINAL)
            assert row.sex == dicom.meta["sex"] and row.view_position == dicom.meta["view_position"]
            assert row.source_key == f"raw/{DEFAULT_DATASET}/{folder}/{row.patientId}.dcm"

    raw_labels = pd.read_csv(synth / TRAIN_LABELS)
    classes = pd.read_csv(synth / CLASS_INFO).drop_duplicates("patientId")
    labels = read_csv(store, prefix, "labels.csv")
    assert sorted(labels["patientId"]) == sorted(classes["patientId"])
    merged = labels.merge(classes, on="patientId", suffixes=("", "_raw"))
    assert (merged["class"] == merged["class_raw"]).all()
    assert ((merged["class"] == "Lung Opacity") == (merged["target"] == 1)).all()

    boxes = read_csv(store, prefix, "boxes.csv")
    positives = raw_labels[raw_labels["Target"] == 1]
    assert len(boxes) == len(positives) == labels["n_boxes"].sum() > 0
    joined = boxes.merge(positives, on=["patientId", "x", "y", "width", "height"])
    assert len(joined) == len(boxes)
    scale = SIZE / ORIGINAL
    for column, scaled in (("x", "sx"), ("y", "sy"), ("width", "swidth"), ("height", "sheight")):
        np.testing.assert_allclose(boxes[scaled], boxes[column] * scale)

    folds = read_csv(store, prefix, "folds.csv")
    assert sorted(folds["patientId"]) == sorted(labels["patientId"])
    assert set(folds["fold"]) == {0, 1, 2, 3}
    per_fold = folds.groupby("fold")["class"].value_counts().unstack()
    assert (per_fold.max() - per_fold.min() <= 1).all()  # stratified
    assert read_csv(store, prefix, "quarantine.csv").empty
    summary = store.get_json(prefix + "summary.json")
    assert (
        summary["manifest_digest"]
        == store.get_json(f"raw/{DEFAULT_DATASET}/manifest.json")["digest"]
    )
    assert (summary["image_size"], summary["n_folds"], summary["seed"]) == (SIZE, 4, 42)


def test_rerun_is_a_no_op_until_an_input_changes(synth: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ingest(str(synth), store)
    prepare_dataset(store, image_size=SIZE, n_folds=4, workers=1)
    prefix = prepared_prefix(DEFAULT_DATASET, SIZE)
    stamps = {k: store.local_path(k).stat().st_mtime_ns for k in store.list(prefix)}

    again = prepare_dataset(store, image_size=SIZE, n_folds=4, workers=1)
    assert again.reused
    assert {k: store.local_path(k).stat().st_mtime_ns for k in store.list(prefix)} == stamps

    store.delete(prefix + "boxes.csv")  # an incomplete cache is rebuilt, not trusted
    rebuilt = prepare_dataset(store, image_size=SIZE, n_folds=4, workers=1)
    assert not rebuilt.reused and store.exists(prefix + "boxes.csv")

    other_folds = prepare_dataset(store, image_size=SIZE, n_folds=2, workers=1)
    assert not other_folds.reused
    assert set(read_csv(store, prefix, "folds.csv")["fold"]) == {0, 1}


def test_unreadable_files_are_quarantined_and_mismatches_reported(
    synth: Path, tmp_path: Path
) -> None:
    source = copy_of(synth, tmp_path)
    train = sorted((source / TRAIN_IMAGES).glob("*.dcm"))
    truncated, not_dicom, no_pixels, wrong_shape, deleted = train[:5]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    not_dicom.write_bytes(b"this is not a DICOM file\n" * 10)
    ds = pydicom.dcmread(no_pixels)
    del ds.PixelData
    ds.save_as(no_pixels)
    ds = pydicom.dcmread(wrong_shape)
    ds.Rows = ORIGINAL // 2
    ds.save_as(wrong_shape)
    deleted.unlink()
    unlabelled = source / TRAIN_IMAGES / "not-in-the-labels.dcm"
    shutil.copy(train[5], unlabelled)

    store = LocalStore(tmp_path / "store")
    ingest(str(source), store)
    result = prepare_dataset(store, image_size=SIZE, n_folds=2, workers=2)
    prefix = prepared_prefix(DEFAULT_DATASET, SIZE)

    quarantine = read_csv(store, prefix, "quarantine.csv").set_index("patientId")
    bad = {p.stem: p for p in (truncated, not_dicom, no_pixels, wrong_shape)}
    assert set(quarantine.index) == set(bad) and result.n_quarantined == 4
    assert (quarantine["split"] == "train").all()
    assert "truncated" in quarantine.loc[truncated.stem, "reason"]
    assert "not a DICOM" in quarantine.loc[not_dicom.stem, "reason"]
    assert "no pixel data" in quarantine.loc[no_pixels.stem, "reason"]
    assert "Rows" in quarantine.loc[wrong_shape.stem, "reason"]
    assert quarantine.loc[truncated.stem, "key"].endswith(f"{truncated.stem}.dcm")

    # 40 train files - 1 deleted + 1 unlabelled copy - 4 unreadable
    assert result.n_train == 36 == len(load_images(store, prefix, "train"))
    metadata = read_csv(store, prefix, "metadata.csv")
    kept = metadata[metadata["split"] == "train"]
    assert kept["index"].tolist() == list(range(36))
    assert not set(kept["patientId"]) & set(bad)
    for row in kept.iloc[[0, -1]].itertuples():  # rows still line up after compaction
        dicom = read_dicom(source / TRAIN_IMAGES / f"{row.patientId}.dcm")
        expected = cv2.resize(dicom.pixels, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(load_images(store, prefix, "train")[row.index], expected)

    assert (result.missing_images, result.unlabelled_images) == (1, 1)
    summary = store.get_json(prefix + "summary.json")
    assert summary["missing_image_ids"] == [deleted.stem]
    assert summary["unlabelled_image_ids"] == ["not-in-the-labels"]
    labelled = set(read_csv(store, prefix, "labels.csv")["patientId"])
    assert labelled == set(read_csv(store, prefix, "folds.csv")["patientId"])
    assert labelled == set(kept["patientId"]) - {"not-in-the-labels"}


def prepared_then_reingested_with(
    synth: Path, tmp_path: Path, field: int, value: str
) -> tuple[LocalStore, dict[str, bytes], int]:
    """A prepared store, then the labels' first positive row edited and ingested again: the
    store, what prepared/ held before, and the edited row's number."""
    store = LocalStore(tmp_path / "store")
    ingest(str(synth), store)
    prepare_dataset(store, image_size=SIZE, n_folds=2, workers=1)
    before = {k: store.get_bytes(k) for k in store.list("prepared/")}
    source, row = labels_edited(synth, tmp_path, field, value)
    ingest(str(source), store)
    return store, before, row


def labels_edited(synth: Path, tmp_path: Path, field: int, value: str) -> tuple[Path, int]:
    """A copy of the source with its labels' first positive row edited, and that row's number."""
    source = copy_of(synth, tmp_path)
    labels = source / TRAIN_LABELS
    lines = labels.read_text().splitlines()
    positive = next(i for i, line in enumerate(lines) if line.endswith(",1"))
    fields = lines[positive].split(",")
    fields[field] = value
    lines[positive] = ",".join(fields)
    labels.write_text("\n".join(lines) + "\n")
    return source, positive + 1


def test_bad_labels_are_refused_at_ingest_and_the_stored_data_set_stays(
    synth: Path, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    ingest(str(synth), store)
    prepare_dataset(store, image_size=SIZE, n_folds=2, workers=1)
    before = {k: store.get_bytes(k) for k in store.list("")}
    source, row = labels_edited(synth, tmp_path, 3, "wide")
    with pytest.raises(InputError, match=rf"stage_2_train_labels\.csv row {row}: width"):
        ingest(str(source), store)
    assert {k: store.get_bytes(k) for k in store.list("")} == before
    assert prepare_dataset(store, image_size=SIZE, n_folds=2, workers=1).reused


def test_box_outside_its_own_image_names_the_row(synth: Path, tmp_path: Path) -> None:
    """Inside the nominal 1024 px, but outside the 128 px image it belongs to."""
    x = str(ORIGINAL - 1)  # the box now runs past the right edge
    store, before, row = prepared_then_reingested_with(synth, tmp_path, 1, x)
    message = rf"stage_2_train_labels\.csv row {row}: box x={x} .* outside "
    with pytest.raises(InputError, match=message + rf"the {ORIGINAL}x{ORIGINAL} image of patient"):
        prepare_dataset(store, image_size=SIZE, n_folds=2, workers=1)
    assert {k: store.get_bytes(k) for k in store.list("prepared/")} == before
    assert [p for p in store.root.rglob("*") if TMP_SUFFIX in p.name] == []  # staged arrays gone


def test_nothing_ingested_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="pneumo ingest"):
        prepare_dataset(LocalStore(tmp_path / "store"), image_size=SIZE)


def test_cli_prints_a_summary(synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store_dir = tmp_path / "store"
    ingest(str(synth), LocalStore(store_dir))
    args = ["prepare", "--storage", str(store_dir), "--image-size", "32", "--folds", "2"]
    assert main([*args, "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "40 train + 4 test images at 32px, 0 quarantined" in out
    assert "0 labelled patients without an image, 0 train images without a labels row" in out
    assert main(args) == 0
    assert "already prepared" in capsys.readouterr().out


def test_real_sample_boxes_of_the_positives(rsna_sample: Path, tmp_path: Path) -> None:
    """16 real DICOMs, the full labels file: the 5 positives' boxes, scaled; the other
    26,668 labelled patients have no image here and are reported, not errors."""
    store = LocalStore(tmp_path / "store")
    ingest(str(rsna_sample), store)
    result = prepare_dataset(store, image_size=256, n_folds=4, workers=2)
    prefix = prepared_prefix(DEFAULT_DATASET, 256)
    assert (result.n_train, result.n_test, result.n_quarantined) == (16, 0, 0)
    assert result.missing_images == 26684 - 16 and result.unlabelled_images == 0
    assert load_images(store, prefix, "test").shape == (0, 256, 256)

    images = sorted((rsna_sample / "stage_2_train_images").glob("*.dcm"))
    raw = pd.read_csv(rsna_sample / "stage_2_train_labels.csv")
    raw = raw[raw["patientId"].isin([p.stem for p in images])]
    positives = raw[raw["Target"] == 1]
    assert positives["patientId"].nunique() == 5

    boxes = read_csv(store, prefix, "boxes.csv").sort_values(["patientId", "x", "y"])
    expected = positives.sort_values(["patientId", "x", "y"])
    assert len(boxes) == len(expected) == 10
    for column in ("x", "y", "width", "height"):
        np.testing.assert_allclose(boxes[column].to_numpy(), expected[column].to_numpy())
    for column, scaled in (("x", "sx"), ("y", "sy"), ("width", "swidth"), ("height", "sheight")):
        np.testing.assert_allclose(boxes[scaled].to_numpy(), expected[column].to_numpy() / 4)

    labels = read_csv(store, prefix, "labels.csv").set_index("patientId")
    assert len(labels) == 16
    assert set(labels.index[labels["target"] == 1]) == set(positives["patientId"])
    assert (labels.loc[positives["patientId"].unique(), "n_boxes"] == 2).all()
    metadata = read_csv(store, prefix, "metadata.csv")
    assert (metadata["rows"] == 1024).all() and (metadata["cols"] == 1024).all()
    first = metadata.iloc[0]
    dicom = read_dicom(rsna_sample / "stage_2_train_images" / f"{first.patientId}.dcm")
    expected_pixels = cv2.resize(dicom.pixels, (256, 256), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(
        load_images(store, prefix, "train")[first["index"]], expected_pixels
    )
    assert len(read_csv(store, prefix, "folds.csv")) == 16
