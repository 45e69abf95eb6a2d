"""A Kaggle-shaped archive folder at competition scale, written in seconds rather than hours.

Painting 29,684 radiographs would take longer than the benchmark itself, so a handful of
`hard` synthetic DICOMs (real-sized: 1024² JPEG Baseline, about 140 KB, the real files average
about 130 KB) are painted once by `pneumo_core.synthetic` and every patient is one of them
under a new id: a new PatientID, PatientName and UIDs, the same JPEG payload. Each clone keeps
its template's labels and class rows (with the new id), so the boxes still match the pixels
and the three tables have the competition's layout.
"""

from __future__ import annotations

import csv
import io
import tempfile
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from pneumo_core.data.synthetic import generate
from pneumo_core.errors import InputError
from pneumo_core.layout import (
    CLASS_INFO,
    SAMPLE_SUBMISSION,
    TEST_IMAGES,
    TRAIN_IMAGES,
    TRAIN_LABELS,
)

TEMPLATES = 32  # with the competition's class shares, about 7 of them have boxes


def write_archive(
    out: Path, n_train: int, n_test: int, templates: int = TEMPLATES, seed: int = 0
) -> Path:
    """Write `n_train` + `n_test` DICOMs and the three tables into `out` (empty); returns it."""
    if n_train < 1 or n_test < 0 or templates < 1:
        raise InputError(f"need n_train, templates >= 1, n_test >= 0; got {n_train}, {n_test}")
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise InputError(f"{out} is not empty; choose an empty folder")
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="scale-templates-") as tmp:
        source = generate(  # a folder inside tmp: the hidden truth goes beside it
            Path(tmp) / "templates",
            n_train=templates,
            n_test=0,
            image_size=1024,
            seed=seed,
            difficulty="hard",
        )
        folder = source / TRAIN_IMAGES
        ids = sorted(p.stem for p in folder.glob("*.dcm"))
        dicoms = [pydicom.dcmread(folder / f"{pid}.dcm") for pid in ids]
        labels = _rows_by_patient(source / TRAIN_LABELS)
        classes = _rows_by_patient(source / CLASS_INFO)
    label_rows = [["patientId", "x", "y", "width", "height", "Target"]]
    class_rows = [["patientId", "class"]]
    submission = [["patientId", "PredictionString"]]
    for split, n in (("train", n_train), ("test", n_test)):
        images = out / (TRAIN_IMAGES if split == "train" else TEST_IMAGES)
        images.mkdir()
        for index in range(n):
            patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
            template = index % len(ids)
            _write_clone(dicoms[template], patient_id, images / f"{patient_id}.dcm")
            if split == "train":
                label_rows += [[patient_id, *r] for r in labels[ids[template]]]
                class_rows += [[patient_id, *r] for r in classes[ids[template]]]
            else:
                submission.append([patient_id, "0.5 0 0 100 100"])
    for name, rows in (
        (TRAIN_LABELS, label_rows),
        (CLASS_INFO, class_rows),
        (SAMPLE_SUBMISSION, submission),
    ):
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        (out / name).write_text(buffer.getvalue())
    return out


def _rows_by_patient(path: Path) -> dict[str, list[list[str]]]:
    """A competition table's rows without their patientId, grouped by it (header dropped)."""
    rows: dict[str, list[list[str]]] = defaultdict(list)
    with path.open(newline="") as f:
        for patient_id, *rest in list(csv.reader(f))[1:]:
            rows[patient_id].append(rest)
    return rows


def _write_clone(ds: pydicom.Dataset, patient_id: str, path: Path) -> None:
    """The template under a new identity; the pixel data is untouched (no re-encoding)."""
    sop = generate_uid(entropy_srcs=[patient_id, "sop"])
    ds.PatientID = ds.PatientName = patient_id
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient_id, "series"])
    ds.save_as(path, enforce_file_format=True)
