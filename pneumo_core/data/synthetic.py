"""A Kaggle-shaped RSNA dataset generator: the demo, the tests and the benchmarks run on it.

The output has the competition archive's file names, columns and DICOM encoding (JPEG
Baseline encapsulated in 8-bit MONOCHROME2 DICOMs with the same tags), so everything
downstream runs the code path the real data takes.

Two difficulties:
- `easy`: drawn chest radiographs with clearly brighter, smooth opacities; a small detector
  learns it in a few CPU epochs (the end-to-end tests rely on that).
- `hard`: faint, irregular, textured opacities a few gray levels above the lung, distractors
  (diffuse haze, ECG leads, wires, tubes, linear scars) on "No Lung Opacity / Not Normal"
  images, so the middle class has a visual meaning, and drawn backgrounds, or the user's own
  real radiographs (`backgrounds=` a folder of DICOMs). Only real images labelled negative
  (where a labels file sits beside the folder) serve, so no unlabelled opacity leaks in.

Each image has its own RNG stream (seed, split, index), so a seed reproduces the dataset.
The truth of the test images is written beside the data set (`hidden_truth_path`), outside
what ingest reads, so a submission can be scored on images the run never saw.
"""

from __future__ import annotations

import csv
import io
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from numbers import Integral
from pathlib import Path

import cv2
import numpy as np
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

from pneumo_core.data.synthetic_paint import (
    NORMAL,
    NOT_NORMAL,
    OPACITY,
    Painter,
    Patient,
    load_backgrounds,
)
from pneumo_core.errors import InputError
from pneumo_core.layout import (
    ARCHIVE_MEMBERS,
    CLASS_INFO,
    SAMPLE_SUBMISSION,
    TEST_IMAGES,
    TRAIN_IMAGES,
    TRAIN_LABELS,
)
from pneumo_core.storage.base import atomic_path

ARCHIVE_NAME = "rsna-pneumonia-detection-challenge.zip"
TEST_LABELS = "test_labels.csv"  # hidden truth of the test images, beside the data set

# Per-patient class shares and boxes per positive patient, from stage_2 (26,684 patients).
CLASS_SHARES = {OPACITY: 0.225, NOT_NORMAL: 0.443, NORMAL: 0.332}
BOX_COUNT_SHARES = {1: 0.435, 2: 0.543, 3: 0.020, 4: 0.002}
DIFFICULTIES = ("easy", "hard")
JPEG_QUALITY = 90
REAL_IMAGE_SIZE = 1024  # the competition's pixel spacing refers to this size
ZIP_TIMESTAMP = (2018, 8, 27, 0, 0, 0)  # the competition's launch; zip needs some date
# Bounds of the arguments: painting holds a few float32 copies of an image at full size (some
# hundred MiB at 4096 px, tens of GiB at 100,000), the competition has 26,684 train and 3,000
# test images, and NumPy seeds are non-negative.
BOUNDS = {
    "n_train": (1, 100_000),
    "n_test": (0, 100_000),
    "image_size": (64, 4096),
    "seed": (0, 2**32 - 1),
}


def generate(
    out: Path | str,
    n_train: int = 200,
    n_test: int = 50,
    image_size: int = 1024,
    seed: int = 0,
    difficulty: str = "easy",
    zip: bool = False,
    backgrounds: Path | str | None = None,
) -> Path:
    """Write a synthetic competition archive into `out` (a folder, or the zip inside it).

    Refuses to overwrite an existing archive member in `out` so stale images never mix in.
    """
    _check_args(n_train, n_test, image_size, seed, difficulty)
    out = Path(out)
    target = out / ARCHIVE_NAME if zip else out
    clashes = [n for n in (*ARCHIVE_MEMBERS, ARCHIVE_NAME) if (out / n).exists()]
    if hidden_truth_path(out).exists():
        clashes.append(str(hidden_truth_path(out)))
    if clashes:
        raise InputError(f"{out} already holds {', '.join(clashes)}; choose an empty folder")
    rng = np.random.default_rng(seed)
    patients = _sample_patients(rng, n_train, n_test)
    folder = real_backgrounds_dir(backgrounds) if difficulty == "hard" else None
    painter = Painter(image_size, difficulty, load_backgrounds(folder, image_size))
    members = _members(patients, painter, seed)
    out.mkdir(parents=True, exist_ok=True)
    # Written aside and moved in at the end, so a failed run leaves no half archive behind.
    staging = Path(tempfile.mkdtemp(prefix=".synth-", dir=out))
    try:
        if zip:
            with zipfile.ZipFile(staging / ARCHIVE_NAME, "w") as archive:
                for name, data in members:
                    info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)  # same seed, same bytes
                    info.external_attr = 0o644 << 16
                    method = zipfile.ZIP_STORED if name.endswith(".dcm") else zipfile.ZIP_DEFLATED
                    archive.writestr(info, data, compress_type=method)
        else:
            for name, data in members:
                path = staging / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        for member in sorted(staging.iterdir()):
            member.rename(out / member.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    test = sorted((p for p in patients if p.split == "test"), key=lambda p: p.patient_id)
    with atomic_path(hidden_truth_path(out)) as tmp:
        tmp.write_bytes(_labels_csv(test))
    return target


def hidden_truth_path(out: Path | str) -> Path:
    """Where `generate(out)` puts the hidden truth of its test images, in the competition's
    labels format: beside the folder `out`, so ingesting `out` never picks it up."""
    out = Path(out).resolve()
    return out.parent / f"{out.name}.{TEST_LABELS}"


def real_backgrounds_dir(backgrounds: Path | str | None) -> Path | None:
    """The user's folder of real DICOMs for `hard` backgrounds (None: drawn backgrounds)."""
    if backgrounds is None:
        return None
    folder = Path(backgrounds)
    if not (folder.is_dir() and any(folder.glob("*.dcm"))):
        raise InputError(f"background folder {backgrounds} holds no .dcm files")
    return folder


def _check_args(n_train: int, n_test: int, image_size: int, seed: int, difficulty: str) -> None:
    """Each argument within its bounds, named, before anything is allocated or written."""
    given = {"n_train": n_train, "n_test": n_test, "image_size": image_size, "seed": seed}
    for name, value in given.items():
        lo, hi = BOUNDS[name]
        if isinstance(value, bool) or not isinstance(value, Integral) or not lo <= value <= hi:
            raise InputError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    if difficulty not in DIFFICULTIES:
        raise InputError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")


def _sample_patients(rng: np.random.Generator, n_train: int, n_test: int) -> list[Patient]:
    classes, shares = list(CLASS_SHARES), list(CLASS_SHARES.values())
    counts, count_shares = list(BOX_COUNT_SHARES), list(BOX_COUNT_SHARES.values())
    patients = []
    for split, n in (("train", n_train), ("test", n_test)):
        for index in range(n):
            cls = classes[rng.choice(len(classes), p=shares)]
            n_boxes = int(rng.choice(counts, p=count_shares)) if cls == OPACITY else 0
            patients.append(
                Patient(
                    patient_id=str(uuid.UUID(bytes=rng.bytes(16), version=4)),
                    split=split,
                    index=index,
                    cls=cls,
                    n_boxes=n_boxes,
                    sex="M" if rng.random() < 0.57 else "F",
                    age=int(np.clip(rng.normal(47, 16), 1, 92)),
                    view="AP" if rng.random() < (0.6 if cls == OPACITY else 0.45) else "PA",
                )
            )
    return patients


def _members(patients: list[Patient], painter: Painter, seed: int) -> Iterator[tuple[str, bytes]]:
    """Images first (painting fills in the boxes), then the three tables."""
    for p in patients:
        rng = np.random.default_rng([seed, int(p.split == "test"), p.index])
        pixels = painter.paint(p, rng)
        folder = TRAIN_IMAGES if p.split == "train" else TEST_IMAGES
        yield f"{folder}/{p.patient_id}.dcm", _encode_dicom(pixels, p, seed)
    train = sorted((p for p in patients if p.split == "train"), key=lambda p: p.patient_id)
    test = sorted((p for p in patients if p.split == "test"), key=lambda p: p.patient_id)
    classes = [["patientId", "class"]]
    for p in train:
        classes += [[p.patient_id, p.cls]] * max(1, len(p.boxes))  # Kaggle repeats it per box
    yield TRAIN_LABELS, _labels_csv(train)
    yield CLASS_INFO, _csv(classes)
    yield (
        SAMPLE_SUBMISSION,
        _csv(
            [["patientId", "PredictionString"]] + [[p.patient_id, "0.5 0 0 100 100"] for p in test]
        ),
    )


def _labels_csv(patients: list[Patient]) -> bytes:
    """stage_2_train_labels.csv's format: a row per box, or one empty row with Target 0."""
    labels = [["patientId", "x", "y", "width", "height", "Target"]]
    for p in patients:
        rows = [[f"{v:.1f}" for v in box] + ["1"] for box in p.boxes] or [["", "", "", "", "0"]]
        labels += [[p.patient_id, *row] for row in rows]
    return _csv(labels)


def _csv(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode()


def _encode_dicom(pixels: np.ndarray, p: Patient, seed: int) -> bytes:
    """JPEG Baseline in an 8-bit MONOCHROME2 Secondary Capture, tagged like the Kaggle files."""
    ok, jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode a synthetic image")

    def uid(kind: str):
        return generate_uid(entropy_srcs=[str(seed), p.patient_id, kind])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate, ds.StudyTime = "19010101", "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"view: {p.view}"
    ds.PatientName = p.patient_id
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = p.sex
    # Kaggle writes bare years ("32"), which the AS type calls invalid; keep it like Kaggle.
    ds["PatientAge"] = DataElement(0x00101010, "AS", str(p.age), validation_mode=config.IGNORE)
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = p.view
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyID = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    spacing = round(0.143 * REAL_IMAGE_SIZE / pixels.shape[0], 4)
    ds.PixelSpacing = [spacing, spacing]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([jpeg.tobytes()])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
