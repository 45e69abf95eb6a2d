"""The competition-scale archive: real-sized clones of a few painted DICOMs under new ids, with
tables in the competition's layout whose boxes still belong to each clone's pixels."""

from __future__ import annotations

import csv
import tempfile
from collections import Counter
from pathlib import Path

import pydicom
import pytest

from bench.scale_archive import write_archive
from pneumo_core.data.dicom import read_dicom
from pneumo_core.data.labels import load_labels
from pneumo_core.errors import InputError
from pneumo_core.layout import (
    CLASS_INFO,
    SAMPLE_SUBMISSION,
    TEST_IMAGES,
    TRAIN_IMAGES,
    TRAIN_LABELS,
)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_archive(tmp_path_factory.mktemp("scale") / "archive", 12, 3, templates=5)


def test_layout_counts_and_unique_ids(archive: Path) -> None:
    train = sorted((archive / TRAIN_IMAGES).glob("*.dcm"))
    test = sorted((archive / TEST_IMAGES).glob("*.dcm"))
    assert (len(train), len(test)) == (12, 3)
    assert len({p.stem for p in train + test}) == 15
    header = (archive / TRAIN_LABELS).read_text().splitlines()[0]
    assert header == "patientId,x,y,width,height,Target"
    submission = rows(archive / SAMPLE_SUBMISSION)
    assert sorted(r["patientId"] for r in submission) == sorted(p.stem for p in test)
    labels = load_labels(archive / TRAIN_LABELS, archive / CLASS_INFO)
    assert sorted(labels.patients["patientId"]) == sorted(p.stem for p in train)


def test_each_clone_is_a_readable_real_sized_dicom_under_its_own_identity(archive: Path) -> None:
    paths = sorted((archive / TRAIN_IMAGES).glob("*.dcm"))
    uids = set()
    for path in paths:
        image = read_dicom(path)
        assert image.pixels.shape == (1024, 1024)
        assert image.meta["patientId"] == path.stem
        ds = pydicom.dcmread(path)
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        uids.add(ds.SOPInstanceUID)
        assert 80_000 < path.stat().st_size < 250_000  # the real files are about 130 KB
    assert len(uids) == len(paths)


def test_clones_of_one_template_share_pixels_and_labels(archive: Path) -> None:
    """Patient i is template i % templates: same JPEG payload, same boxes, same class."""
    order = [r["patientId"] for r in rows(archive / CLASS_INFO)]
    patients = list(dict.fromkeys(order))  # written in generation order
    boxes = Counter(r["patientId"] for r in rows(archive / TRAIN_LABELS))
    classes = {r["patientId"]: r["class"] for r in rows(archive / CLASS_INFO)}
    first, sixth = patients[0], patients[5]
    folder = archive / TRAIN_IMAGES
    pixels = [pydicom.dcmread(folder / f"{pid}.dcm").PixelData for pid in (first, sixth)]
    assert pixels[0] == pixels[1]
    assert pixels[0] != pydicom.dcmread(folder / f"{patients[1]}.dcm").PixelData
    assert boxes[first] == boxes[sixth] and classes[first] == classes[sixth]


def test_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "old.dcm").write_bytes(b"")
    with pytest.raises(InputError, match="not empty"):
        write_archive(tmp_path, 2, 0, templates=1)


def test_leaves_nothing_in_the_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The templates' hidden truth file lands beside their folder: inside the temp folder."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    write_archive(tmp_path / "out", 1, 0, templates=1)
    assert list(temp.iterdir()) == []
