"""Decode every DICOM once, resize it, and cache the result with labels, folds and quarantine.

Training reads `prepared/<dataset>/<size>/` instead of DICOMs: one uint8 array per split in
`.npy` format (memory-mappable, about 7 GB for the full competition at 512²) plus small
tables. Files that cannot be decoded are listed in quarantine.csv and left out; the rest is
prepared. Nothing is written before every input has been read and checked, and summary.json,
written last, marks a complete cache: a re-run with the same manifest digest, size and folds
finds it and does nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from pneumo_core.config.cache import CacheSpec
from pneumo_core.data.decode import available_cores, decoded
from pneumo_core.data.dicom import max_dicom_bytes, too_large
from pneumo_core.data.folds import make_folds
from pneumo_core.data.labels import BOX_COLUMNS, Labels, load_labels
from pneumo_core.errors import InputError, ObjectNotFound
from pneumo_core.layout import (
    BOXES,
    CLASS_INFO,
    FOLDS,
    IMAGE_FOLDERS,
    LABELS,
    METADATA,
    QUARANTINE,
    SUMMARY,
    TRAIN_LABELS,
    images_name,
    manifest_key,
    prepared_prefix,
    raw_key,
)
from pneumo_core.progress import progress_reporter
from pneumo_core.storage.base import ObjectStore, file_sha256

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: summary.json records the sha256 of every object
SPLITS = ("train", "test")
METADATA_COLUMNS = (
    "patientId",
    "split",
    "index",
    "sex",
    "age",
    "view_position",
    "rows",
    "cols",
    "pixel_spacing_row",
    "pixel_spacing_col",
    "source_key",
)
QUARANTINE_COLUMNS = ("patientId", "split", "key", "reason")
SCALED_BOX_COLUMNS = ("sx", "sy", "swidth", "sheight")


@dataclass(frozen=True)
class PrepareResult:
    prefix: str
    n_train: int
    n_test: int
    n_quarantined: int
    missing_images: int  # labelled train patients without an image file
    unlabelled_images: int  # train image files without a labels row
    seconds: float
    images_per_second: float
    reused: bool = False  # an earlier run with the same inputs had already prepared it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Job:
    split: str
    patient_id: str
    key: str
    size: int  # bytes, as the manifest records them


def prepare_dataset(
    store: ObjectStore,
    dataset: str | None = None,
    image_size: int | None = None,
    n_folds: int | None = None,
    seed: int | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> PrepareResult:
    """Build (or find) the cache for one image size; see the module docstring. The data
    set, size, folds and seed are checked as a run's are (`CacheSpec`); None: its default."""
    asked = {"dataset": dataset, "image_size": image_size, "n_folds": n_folds, "seed": seed}
    spec = CacheSpec(**{k: v for k, v in asked.items() if v is not None})
    dataset, image_size, n_folds, seed = spec.dataset, spec.image_size, spec.n_folds, spec.seed
    workers = available_cores() if workers is None else workers
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    started = time.perf_counter()
    prefix = prepared_prefix(dataset, image_size)
    manifest = _load_manifest(store, dataset)
    settings = {
        "format": FORMAT_VERSION,
        "dataset": dataset,
        "image_size": image_size,
        "manifest_digest": manifest["digest"],
        "n_folds": n_folds,
        "seed": seed,
    }
    previous = _finished_earlier(store, prefix, settings)
    if previous is not None:
        log.info("prepare %s: %s is up to date, nothing to do", dataset, prefix)
        return previous

    labels = load_labels(
        _table_source(store, manifest, dataset, TRAIN_LABELS),
        _table_source(store, manifest, dataset, CLASS_INFO),
    )
    jobs = _image_jobs(manifest, dataset)
    with contextlib.ExitStack() as staged:  # the arrays appear when the block ends, not before
        paths = {
            split: staged.enter_context(store.writing_file(prefix + images_name(split)))
            for split in SPLITS
        }
        decode_started = time.perf_counter()
        metadata, quarantine = _decode_all(jobs, store, image_size, workers, paths, progress)
        decode_seconds = time.perf_counter() - decode_started
        tables = _tables(labels, metadata, image_size, n_folds, seed)
        checksums = {images_name(s): file_sha256(paths[s]) for s in SPLITS}
        store.delete(prefix + SUMMARY)  # from here on the old cache is not valid
    for name, frame in {**tables, METADATA: metadata, QUARANTINE: quarantine}.items():
        text = frame.to_csv(index=False)
        store.put_text(prefix + name, text)
        checksums[name] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    train_ids = {j.patient_id for j in jobs if j.split == "train"}
    labelled = set(labels.patients["patientId"])
    missing = sorted(labelled - train_ids)
    unlabelled = sorted(train_ids - labelled)

    counts = metadata["split"].value_counts()
    seconds = time.perf_counter() - started
    rate = len(jobs) / decode_seconds if decode_seconds > 0 else 0.0
    summary = {
        **settings,
        "n_train": int(counts.get("train", 0)),
        "n_test": int(counts.get("test", 0)),
        "n_quarantined": len(quarantine),
        "n_labelled": len(tables[LABELS]),
        "n_boxes": len(tables[BOXES]),
        "missing_images": len(missing),
        "unlabelled_images": len(unlabelled),
        "missing_image_ids": missing,
        "unlabelled_image_ids": unlabelled,
        "seconds": round(seconds, 3),
        "decode_seconds": round(decode_seconds, 3),
        "images_per_second": round(rate, 2),
        "images_per_second_per_core": round(rate / workers, 2),
        "workers": workers,
        "sha256": checksums,
    }
    store.put_json(prefix + SUMMARY, summary)
    result = _result(prefix, summary, reused=False)
    log.info("prepare %s: %s", dataset, result)
    return result


# --- inputs ---------------------------------------------------------------------------------


def _load_manifest(store: ObjectStore, dataset: str) -> dict[str, Any]:
    try:
        manifest = store.get_json(manifest_key(dataset))
    except ObjectNotFound:
        raise InputError(
            f"no ingested dataset {dataset!r} in {store.uri} ({manifest_key(dataset)} is "
            "missing): run `pneumo ingest` first"
        ) from None
    if not isinstance(manifest, dict) or "digest" not in manifest or "members" not in manifest:
        raise InputError(f"{store.url(manifest_key(dataset))}: not an ingest manifest")
    return manifest


def _table_source(
    store: ObjectStore, manifest: dict[str, Any], dataset: str, name: str
) -> io.StringIO:
    """A labels file as a named text stream, so errors name the stored file and row."""
    key = raw_key(dataset, name)
    if key not in {m["key"] for m in manifest["members"]}:
        raise InputError(f"the ingested dataset {dataset!r} has no {name} (expected {key})")
    stream = io.StringIO(store.get_text(key))
    stream.name = store.url(key)
    return stream


def _image_jobs(manifest: dict[str, Any], dataset: str) -> list[_Job]:
    """Every member of the two image folders, train first, in key order."""
    jobs = []
    for split in SPLITS:
        folder = raw_key(dataset, IMAGE_FOLDERS[split]) + "/"
        for member in sorted(manifest["members"], key=lambda m: m["key"]):
            key = member["key"]
            if key.startswith(folder):
                jobs.append(_Job(split, PurePosixPath(key).stem, key, int(member["size"])))
    return jobs


def _finished_earlier(
    store: ObjectStore, prefix: str, settings: dict[str, Any]
) -> PrepareResult | None:
    try:
        summary = store.get_json(prefix + SUMMARY)
    except (ObjectNotFound, InputError):
        return None
    if any(summary.get(k) != v for k, v in settings.items()):
        return None
    names = [images_name(s) for s in SPLITS] + [METADATA, LABELS, BOXES, FOLDS, QUARANTINE]
    if not all(store.exists(prefix + n) for n in names):
        return None
    problems = _checksum_problems(store, prefix, summary)
    if problems:
        log.warning("prepare: rebuilding the cache: %s", "; ".join(problems))
        return None
    return _result(prefix, summary, reused=True)


def cache_problems(store: ObjectStore, dataset: str, image_size: int) -> list[str]:
    """What is wrong with a finished cache, each naming its object: summary.json missing, or
    an object missing or not matching the sha256 summary.json recorded for it (truncated or
    altered after prepare wrote it). Empty when the cache can be trusted."""
    prefix = prepared_prefix(dataset, image_size)
    try:
        summary = store.get_json(prefix + SUMMARY)
    except (ObjectNotFound, InputError) as exc:
        return [f"{store.url(prefix + SUMMARY)} is missing or unreadable ({exc})"]
    return _checksum_problems(store, prefix, summary)


def _checksum_problems(store: ObjectStore, prefix: str, summary: dict[str, Any]) -> list[str]:
    problems = []
    for name, expected in sorted((summary.get("sha256") or {}).items()):
        key = prefix + name
        try:
            actual = store.sha256(key)
        except ObjectNotFound:
            problems.append(f"{store.url(key)} is missing")
            continue
        if actual != expected:
            problems.append(
                f"{store.url(key)} does not match the sha256 summary.json recorded "
                "(truncated or altered)"
            )
    return problems


def _result(prefix: str, summary: dict[str, Any], reused: bool) -> PrepareResult:
    return PrepareResult(
        prefix=prefix,
        n_train=summary["n_train"],
        n_test=summary["n_test"],
        n_quarantined=summary["n_quarantined"],
        missing_images=summary["missing_images"],
        unlabelled_images=summary["unlabelled_images"],
        seconds=summary["seconds"],
        images_per_second=summary["images_per_second"],
        reused=reused,
    )


# --- decoding -------------------------------------------------------------------------------


def _decode_all(
    jobs: list[_Job],
    store: ObjectStore,
    image_size: int,
    workers: int,
    paths: dict[str, Path],
    bar: bool | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fill one .npy per split in place (rows in job order, unreadable files left out)."""
    planned = {s: sum(j.split == s for j in jobs) for s in SPLITS}
    arrays = {
        s: np.lib.format.open_memmap(
            paths[s], mode="w+", dtype=np.uint8, shape=(planned[s], image_size, image_size)
        )
        for s in SPLITS
    }
    filled = dict.fromkeys(SPLITS, 0)
    metadata: list[dict[str, Any]] = []
    cap = max_dicom_bytes()  # a larger file is quarantined unread: it could fill memory
    quarantine: list[dict[str, Any]] = [
        {"patientId": j.patient_id, "split": j.split, "key": j.key, "reason": too_large(j.size)}
        for j in jobs
        if j.size > cap
    ]
    with progress_reporter(f"prepare {image_size}px", len(jobs), bar=bar) as advance:
        advance(len(quarantine))
        readable = [j for j in jobs if j.size <= cap]
        outcomes = decoded([j.key for j in readable], store, image_size, workers)
        for job, outcome in zip(readable, outcomes, strict=True):
            if isinstance(outcome, str):
                row = {"patientId": job.patient_id, "split": job.split, "key": job.key}
                quarantine.append({**row, "reason": outcome})
            else:
                pixels, meta = outcome
                index = filled[job.split]
                arrays[job.split][index] = pixels
                filled[job.split] += 1
                row = {"patientId": job.patient_id, "split": job.split, "index": index}
                metadata.append({**meta, **row, "source_key": job.key})
            advance(1)
    for split in SPLITS:
        arrays[split].flush()
        del arrays[split]
        if filled[split] < planned[split]:
            _keep_first_rows(paths[split], filled[split])
    for row in quarantine:
        log.warning("quarantined %s: %s", row["key"], row["reason"])
    return (
        pd.DataFrame(metadata, columns=list(METADATA_COLUMNS)),
        pd.DataFrame(quarantine, columns=list(QUARANTINE_COLUMNS)),
    )


def _keep_first_rows(path: Path, n: int) -> None:
    """Cut a .npy to its first n rows in place (quarantined files leave the tail unused):
    the header is rewritten at its old length and the file truncated, so the gigabytes
    already written are not copied again."""
    with open(path, "r+b") as fh:
        version = np.lib.format.read_magic(fh)
        if version != (1, 0):
            raise ValueError(f"{path}: unexpected .npy version {version}")
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(fh)
        data_start = fh.tell()
        header = {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": fortran_order,
            "shape": (n, *shape[1:]),
        }
        text = repr(header).encode("latin1")
        header_start = len(np.lib.format.MAGIC_PREFIX) + 2 + 2  # magic, version, uint16 length
        fh.seek(header_start)
        fh.write(text.ljust(data_start - header_start - 1) + b"\n")
        fh.truncate(data_start + n * int(np.prod(shape[1:])) * dtype.itemsize)


# --- tables ---------------------------------------------------------------------------------


def _tables(
    labels: Labels, metadata: pd.DataFrame, image_size: int, n_folds: int, seed: int
) -> dict[str, pd.DataFrame]:
    """labels, boxes (original and cache px) and folds for train patients with an image."""
    train = metadata[metadata["split"] == "train"]
    patients = labels.patients[labels.patients["patientId"].isin(train["patientId"])]
    if patients.empty:
        raise InputError("no train image has a labels row: nothing to prepare for training")
    labels.check_inside(train)
    boxes = labels.boxes.merge(
        train[["patientId", "rows", "cols"]], on="patientId", how="inner", validate="many_to_one"
    )
    scale_x = image_size / boxes["cols"].astype(float)
    scale_y = image_size / boxes["rows"].astype(float)
    for scaled, column, scale in zip(
        SCALED_BOX_COLUMNS, BOX_COLUMNS, (scale_x, scale_y, scale_x, scale_y), strict=True
    ):
        boxes[scaled] = boxes[column] * scale
    return {
        LABELS: patients[["patientId", "class", "target", "n_boxes"]].reset_index(drop=True),
        BOXES: boxes[["patientId", *BOX_COLUMNS, *SCALED_BOX_COLUMNS]],
        FOLDS: make_folds(patients[["patientId", "class"]], n_folds=n_folds, seed=seed),
    }
