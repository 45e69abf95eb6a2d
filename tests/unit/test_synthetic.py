"""The synthetic generator writes what the real archive holds, deterministically, readable."""

from __future__ import annotations

import csv
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGBaseline8Bit

from flows.cli.main import main
from pneumo_core.data import synthetic
from pneumo_core.data.dicom import read_dicom
from pneumo_core.data.synthetic import (
    ARCHIVE_NAME,
    CLASS_SHARES,
    NORMAL,
    NOT_NORMAL,
    OPACITY,
    _encode_dicom,
    generate,
    hidden_truth_path,
    real_backgrounds_dir,
)
from pneumo_core.data.synthetic_paint import Painter, Patient, load_backgrounds
from pneumo_core.errors import InputError
from pneumo_core.layout import (
    ARCHIVE_MEMBERS,
    CLASS_INFO,
    SAMPLE_SUBMISSION,
    TEST_IMAGES,
    TRAIN_IMAGES,
    TRAIN_LABELS,
)

SIZE = 128


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def header(path: Path) -> str:
    return path.read_text().splitlines()[0]


def boxes_by_patient(folder: Path) -> dict[str, list[tuple[float, ...]]]:
    boxes: dict[str, list[tuple[float, ...]]] = {}
    for row in read_csv(folder / TRAIN_LABELS):
        found = boxes.setdefault(row["patientId"], [])
        if row["Target"] == "1":
            found.append(tuple(float(row[k]) for k in ("x", "y", "width", "height")))
    return boxes


@pytest.fixture(scope="module")
def easy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("easy"), 60, 12, SIZE, seed=7)


def test_every_image_reads_back_with_kaggle_tags(easy: Path) -> None:
    files = sorted(easy.glob("stage_2_*_images/*.dcm"))
    assert len(files) == 72
    uids = set()
    for path in files:
        image = read_dicom(path)
        assert image.pixels.shape == (SIZE, SIZE)
        assert image.meta["patientId"] == path.stem
        assert image.meta["sex"] in ("M", "F")
        assert 1 <= image.meta["age"] <= 92
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
        assert (ds.Modality, ds.BodyPartExamined, ds.PhotometricInterpretation) == (
            "CR",
            "CHEST",
            "MONOCHROME2",
        )
        assert ds.ViewPosition in ("PA", "AP")
        assert ds.SeriesDescription == f"view: {ds.ViewPosition}"
        assert (ds.BitsAllocated, ds.BitsStored, ds.SamplesPerPixel) == (8, 8, 1)
        assert ds.PixelSpacing[0] == ds.PixelSpacing[1] > 0
        uids |= {ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID}
    assert len(uids) == 3 * len(files)


def test_tables_have_the_real_headers_and_ids(easy: Path, rsna_sample: Path) -> None:
    for name in (TRAIN_LABELS, CLASS_INFO, SAMPLE_SUBMISSION):
        assert header(easy / name) == header(rsna_sample / name), name
    train_ids = {p.stem for p in (easy / TRAIN_IMAGES).glob("*.dcm")}
    test_ids = {p.stem for p in (easy / TEST_IMAGES).glob("*.dcm")}
    labels = read_csv(easy / TRAIN_LABELS)
    classes = read_csv(easy / CLASS_INFO)
    assert {r["patientId"] for r in labels} == train_ids
    assert [r["patientId"] for r in classes] == [r["patientId"] for r in labels]  # row per row
    submission = read_csv(easy / SAMPLE_SUBMISSION)
    assert sorted(r["patientId"] for r in submission) == sorted(test_ids)
    assert not train_ids & test_ids
    for label, info in zip(labels, classes, strict=True):
        boxed = label["Target"] == "1"
        assert (info["class"] == OPACITY) == boxed
        assert all(label[k] != "" for k in ("x", "y", "width", "height")) == boxed
        assert all(label[k] == "" for k in ("x", "y", "width", "height")) != boxed


def test_patient_ids_look_like_kaggle_uuid4s(easy: Path) -> None:
    import uuid

    for row in read_csv(easy / CLASS_INFO):
        assert uuid.UUID(row["patientId"]).version == 4
        assert str(uuid.UUID(row["patientId"])) == row["patientId"]


@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path, difficulty: str) -> None:
    def listing(folder: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()
        }

    a = listing(generate(tmp_path / "a", 8, 2, 64, seed=3, difficulty=difficulty))
    b = listing(generate(tmp_path / "b", 8, 2, 64, seed=3, difficulty=difficulty))
    c = listing(generate(tmp_path / "c", 8, 2, 64, seed=4, difficulty=difficulty))
    assert a == b
    assert set(a).isdisjoint(set(c) - {n for n in c if n.endswith(".csv")})


def test_class_mix_and_boxes_follow_the_real_data(tmp_path: Path) -> None:
    out = generate(tmp_path, n_train=400, n_test=0, image_size=64, seed=11)
    classes = {r["patientId"]: r["class"] for r in read_csv(out / CLASS_INFO)}
    shares = {c: list(classes.values()).count(c) / len(classes) for c in CLASS_SHARES}
    assert 0.15 <= shares[OPACITY] <= 0.30
    assert 0.35 <= shares[NOT_NORMAL] <= 0.53
    assert 0.25 <= shares[NORMAL] <= 0.42
    counts = [len(b) for b in boxes_by_patient(out).values() if b]
    assert set(counts) <= {1, 2, 3, 4}
    assert counts.count(2) > counts.count(3) + counts.count(4)
    assert 1.3 <= np.mean(counts) <= 1.9


def test_boxes_lie_inside_the_image_where_the_opacity_is(tmp_path: Path) -> None:
    """Each box is inside the image, and on one-box images clearly brighter than the same box
    mirrored to the other lung."""
    size = 256
    out = generate(tmp_path, 120, 0, size, seed=5)
    gains = []
    for patient, boxes in boxes_by_patient(out).items():
        for x, y, w, h in boxes:
            assert x >= 0 and y >= 0 and w >= 1 and h >= 1
            assert x + w <= size and y + h <= size
            assert x == int(x) and w == int(w)  # whole pixels, like the real labels
        if len(boxes) == 1:
            pixels = read_dicom(out / TRAIN_IMAGES / f"{patient}.dcm").pixels
            x, y, w, h = (int(v) for v in boxes[0])
            mirror = pixels[y : y + h, size - x - w : size - x]
            gains.append(pixels[y : y + h, x : x + w].mean() - mirror.mean())
    assert len(gains) >= 5
    assert np.median(gains) > 20


@pytest.mark.parametrize(("difficulty", "low", "high"), [("easy", 25, 90), ("hard", 8, 32)])
def test_opacities_change_only_their_boxes(difficulty: str, low: float, high: float) -> None:
    """Painting a patient with and without its opacities (same RNG stream) differs only
    inside the labelled boxes, by a clear margin on easy and a few gray levels on hard."""
    size = 256
    painter = Painter(size, difficulty, backgrounds=[])
    for index in range(12):
        patient = Patient("p", "train", index, OPACITY, 2, "F", 40, "AP")
        clean = Patient("p", "train", index, OPACITY, 0, "F", 40, "AP")
        with_boxes = painter.paint(patient, np.random.default_rng(index)).astype(int)
        without = painter.paint(clean, np.random.default_rng(index)).astype(int)
        inside = np.zeros((size, size), bool)
        for x, y, w, h in patient.boxes:
            inside[y : y + h, x : x + w] = True
        diff = with_boxes - without
        assert np.all(diff[~inside] == 0)
        assert low <= diff[inside].mean() <= high, (index, diff[inside].mean())


def test_zip_holds_the_same_members_at_its_root(tmp_path: Path) -> None:
    folder = generate(tmp_path / "folder", 10, 3, 64, seed=2)
    archive = generate(tmp_path / "zipped", 10, 3, 64, seed=2, zip=True)
    assert archive == tmp_path / "zipped" / ARCHIVE_NAME
    assert [p.name for p in archive.parent.iterdir()] == [ARCHIVE_NAME]
    with zipfile.ZipFile(archive) as z:
        members = {n: z.read(n) for n in z.namelist()}
    on_disk = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert members == on_disk
    assert {n.split("/")[0] for n in members} == set(ARCHIVE_MEMBERS)
    image = next(n for n in members if n.endswith(".dcm"))
    assert read_dicom(members[image]).meta["patientId"] == Path(image).stem
    assert pydicom.dcmread(io.BytesIO(members[image])).PatientID == Path(image).stem


def test_refuses_to_write_over_an_archive(tmp_path: Path) -> None:
    generate(tmp_path, 5, 1, 64, seed=0)
    before = sorted(tmp_path.rglob("*"))
    labels = (tmp_path / TRAIN_LABELS).read_bytes()
    with pytest.raises(InputError, match=r"already holds stage_2_train_labels\.csv"):
        generate(tmp_path, 5, 1, 64, seed=1)
    assert sorted(tmp_path.rglob("*")) == before
    assert (tmp_path / TRAIN_LABELS).read_bytes() == labels


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_train": 0}, "n_train"),
        ({"n_test": -1}, "n_test"),
        ({"image_size": 32}, "image_size"),
        ({"difficulty": "medium"}, "difficulty"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        generate(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_hard_uses_real_negatives_as_backgrounds(rsna_sample: Path) -> None:
    """Real images labelled positive would bring unlabelled opacities: only negatives serve."""
    folder = rsna_sample / TRAIN_IMAGES
    assert real_backgrounds_dir(folder) == folder
    labels = read_csv(rsna_sample / TRAIN_LABELS)
    positives = {r["patientId"] for r in labels if r["Target"] == "1"}
    negatives = {p.stem for p in folder.glob("*.dcm")} - positives
    backgrounds = load_backgrounds(folder, 64)
    assert len(backgrounds) == len(negatives) == 11
    for background in backgrounds:
        assert background.pixels.shape == (64, 64) and background.pixels.dtype == np.uint8
        left, right = (lung > 0.5 for lung in background.lungs)
        assert 0.04 < left.mean() < 0.2 and 0.04 < right.mean() < 0.2  # a lung's share
        assert np.nonzero(left)[1].mean() < 32 < np.nonzero(right)[1].mean()


def test_hard_without_real_backgrounds_draws_them(tmp_path: Path) -> None:
    assert real_backgrounds_dir(None) is None  # never a folder outside the call
    out = generate(tmp_path / "out", 6, 0, 64, seed=0, difficulty="hard")
    assert len(list((out / TRAIN_IMAGES).glob("*.dcm"))) == 6
    with pytest.raises(InputError, match=r"holds no \.dcm files"):
        generate(tmp_path / "o2", 6, 0, 64, difficulty="hard", backgrounds=tmp_path)


@pytest.mark.parametrize("zipped", [False, True])
def test_test_images_truth_is_written_beside_the_data_set(tmp_path: Path, zipped: bool) -> None:
    from pneumo_core.data.labels import load_targets
    from pneumo_core.evaluation.submission import score_submission, write_submission

    out = tmp_path / "data"
    generate(out, n_train=4, n_test=12, image_size=128, seed=3, zip=zipped)
    truth_csv = hidden_truth_path(out)
    assert truth_csv.parent == tmp_path  # outside the folder ingest reads
    assert truth_csv.read_text().splitlines()[0] == "patientId,x,y,width,height,Target"
    truth = load_targets(truth_csv, image_size=128).boxes_by_patient()
    sample = read_csv_text(out, zipped, SAMPLE_SUBMISSION)
    assert sorted(truth) == sorted(r["patientId"] for r in sample)  # the test images, exactly
    assert any(len(b) for b in truth.values())
    # the truth scores a perfect submission 1 and an empty one lower
    perfect = tmp_path / "perfect.csv"
    write_submission({pid: (b, np.ones(len(b))) for pid, b in truth.items()}, perfect)
    assert score_submission(truth_csv, perfect)["map"] == 1.0
    shutil.rmtree(out)  # a stale truth file would score another data set: refused
    with pytest.raises(InputError, match=r"test_labels\.csv; choose an empty folder"):
        generate(out, 1, 1, 64, zip=zipped)


def read_csv_text(out: Path, zipped: bool, name: str) -> list[dict]:
    if zipped:
        with zipfile.ZipFile(out / ARCHIVE_NAME) as archive:
            text = archive.read(name).decode()
    else:
        text = (out / name).read_text()
    return list(csv.DictReader(io.StringIO(text)))


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["synth", "--out", str(tmp_path), "--n-train", "4", "--n-test", "2"]
    assert main([*args, "--image-size", "64", "--seed", "9", "--zip"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / ARCHIVE_NAME) in out and "4 train + 2 test" in out
    assert main(args) == 2
    assert "already holds" in capsys.readouterr().err


def test_a_failed_run_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encode, calls = _encode_dicom, []

    def disk_full_on_the_fourth(*args: object) -> bytes:
        calls.append(1)
        if len(calls) == 4:
            raise OSError("No space left on device")
        return encode(*args)

    monkeypatch.setattr(synthetic, "_encode_dicom", disk_full_on_the_fourth)
    for zipped in (False, True):
        calls.clear()
        with pytest.raises(OSError, match="No space"):
            generate(tmp_path, 6, 0, 64, zip=zipped)
        assert list(tmp_path.iterdir()) == []
