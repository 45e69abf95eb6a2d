"""Inference: every fold's best model, horizontal-flip TTA, box fusion, tuned post-processing.

Images are decoded exactly as `prepare` decodes them (`decode.decode_resized`), so the
models see at prediction time what they saw in training; boxes go back to each image's
original pixel size before they are written.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchvision.models.detection import RetinaNet

from pneumo_core.boxes import Detections, xyxy_to_xywh
from pneumo_core.config.run import RunConfig
from pneumo_core.data.dataset import PreparedCache
from pneumo_core.data.decode import decode_resized
from pneumo_core.data.dicom import DicomError
from pneumo_core.errors import InputError, PneumoError
from pneumo_core.evaluation import postprocess, submission
from pneumo_core.layout import (
    CHECKPOINT_BEST,
    CHECKPOINT_LAST,
    QUARANTINE,
    fold_key,
    prepared_prefix,
)
from pneumo_core.model.build import ModelInfo, build_model, detect_batch
from pneumo_core.progress import progress_reporter
from pneumo_core.runs.run import Run, load_run_config
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.open import open_store
from pneumo_core.train.checkpoint import load_checkpoint
from pneumo_core.train.device import resolve_device

log = logging.getLogger(__name__)

# Images per forward pass. `python -m bench.bench_inference` (ci recipe, 2 folds + flip TTA,
# 2 cores): 10.0 / 15.9 / 19.0 / 22.7 / 21.2 images/s at batch 1 / 4 / 8 / 16 / 32; on an
# H100 batch 8 and 16 were even (bench/gpu_check.py).
BATCH = 16


def predict_images(
    store: ObjectStore,
    run_id: str,
    images: str,
    out: str | Path,
    overlays: Path | None = None,
) -> Path:
    """Predict every DICOM under `images` (folder, one .dcm, or a file:// or s3:// prefix) into the
    submission CSV `out`; optionally one overlay PNG per image into `overlays`. An unreadable
    DICOM gets an empty PredictionString and a warning naming it, so one bad file costs one row."""
    config = load_run_config(store, run_id)
    device = resolve_device(config.execution.device)
    models = load_fold_models(store, run_id, config, device)
    post = tuned_postprocess(store, run_id, config)
    sources = list(_dicom_sources(images))
    if not sources:
        raise InputError(f"no .dcm files found under {images}")
    truth = _ground_truth(store, config) if overlays is not None else {}
    rows: dict[str, Detections] = {}
    size = config.image_size
    with progress_reporter(f"predict {len(sources)} image(s)", len(sources)) as advance:
        for chunk in _chunks(sources, BATCH):
            decoded = [(name, _decode_named(name, read, size)) for name, read in chunk]
            for name, image in decoded:
                if image is None:
                    _add_row(rows, name, Path(name).stem, _NO_BOX)
            readable = [(name, d) for name, d in decoded if d is not None]
            fused = _detect(models, [p for _, (p, _) in readable], config, post, device)
            for (name, (pixels, meta)), (boxes, scores) in zip(readable, fused, strict=True):
                patient_id = meta.get("patientId") or Path(name).stem
                _add_row(rows, name, patient_id, _to_original(boxes, scores, meta, size))
                if overlays is not None:
                    gt = truth.get(patient_id)
                    _write_overlay(overlays / f"{patient_id}.png", pixels, boxes, scores, gt)
            advance(len(chunk))
    return _write_checked(rows, Path(out))


@dataclass(frozen=True)
class TestSetPrediction:
    """A submission for the test images that prepare recorded, and the ones it quarantined."""

    path: Path
    predicted: int  # images with a model prediction
    quarantined: list[dict[str, str]]  # patientId, key, reason: empty PredictionString each


def predict_test_set(
    store: ObjectStore, run_id: str, out: str | Path, folds: Sequence[int] | None = None
) -> TestSetPrediction:
    """The competition's test images as `prepare` recorded them from the manifest: the cached
    pixels (decoded exactly as training saw them, never re-read from the raw folder, so objects
    of an earlier ingest never enter) and an empty PredictionString for each quarantined one.
    `folds` limits the ensemble to those folds' models (to score one fold's model alone)."""
    config = load_run_config(store, run_id)
    cache = PreparedCache(store, config.dataset, config.image_size)
    device = resolve_device(config.execution.device)
    models = load_fold_models(store, run_id, config, device, folds)
    post = tuned_postprocess(store, run_id, config)
    ids = cache.patient_ids("test")
    images = cache.images("test")
    meta = cache.metadata[cache.metadata["split"] == "test"].set_index("patientId")
    size = config.image_size
    rows: dict[str, Detections] = {}
    with progress_reporter(f"predict {len(ids)} test image(s)", len(ids)) as advance:
        for chunk in _chunks(list(enumerate(ids)), BATCH):
            pixels = [np.array(images[i]) for i, _ in chunk]  # a writable copy for torch
            fused = _detect(models, pixels, config, post, device)
            for (_, pid), (boxes, scores) in zip(chunk, fused, strict=True):
                rows[pid] = _to_original(boxes, scores, meta.loc[pid], size)
            advance(len(chunk))
    quarantined = quarantined_test_images(store, run_id)
    for item in quarantined:  # the caller warns about each, naming its file
        rows.setdefault(item["patientId"], _NO_BOX)
    if not rows:
        raise InputError(f"{cache.prefix}: the prepared dataset has no test image")
    return TestSetPrediction(_write_checked(rows, Path(out)), len(ids), quarantined)


_NO_BOX: Detections = (np.zeros((0, 4)), np.zeros(0))


def _decode_named(
    name: str, read: Callable[[], str | Path | bytes], size: int
) -> tuple[np.ndarray, dict] | None:
    """The decoded image, or None with a warning naming the file when it cannot be used."""
    try:
        return decode_resized(read(), size)
    except DicomError as exc:
        log.warning("%s: %s; written with an empty PredictionString", name, exc.reason)
        return None


def _add_row(rows: dict[str, Detections], name: str, patient_id: str, row: Detections) -> None:
    if patient_id in rows:
        raise InputError(f"{name}: patient {patient_id} appears in two DICOMs")
    rows[patient_id] = row


def _detect(
    models: list[RetinaNet],
    pixels: list[np.ndarray],
    config: RunConfig,
    post: postprocess.PostprocessConfig,
    device: torch.device,
) -> list[Detections]:
    """Post-processed (boxes xywh, scores) in cache pixels for uint8 [S, S] images."""
    if not pixels:
        return []
    tensors = [
        torch.from_numpy(np.ascontiguousarray(p)).float().div_(255).unsqueeze_(0).to(device)
        for p in pixels
    ]
    with torch.inference_mode():  # 1-5 % over no_grad at every batch size (bench_inference)
        fused = detect_batch(models, tensors, config)
    return [postprocess.apply(d.boxes, d.scores, post, d.opacity) for d in fused]


def _to_original(boxes: np.ndarray, scores: np.ndarray, meta: Any, size: int) -> Detections:
    """Boxes from cache pixels back to the image's own Rows x Columns."""
    sx, sy = float(meta["cols"]) / size, float(meta["rows"]) / size
    return boxes * np.array([sx, sy, sx, sy]), scores


def _write_checked(rows: dict[str, Detections], out: Path) -> Path:
    submission.write_submission(rows, out)
    problems = submission.check_submission(out)
    if problems:
        raise PneumoError(f"{out}: the written submission is invalid: {'; '.join(problems[:5])}")
    log.info("wrote %d predictions to %s", len(rows), out)
    return out


def quarantined_test_images(store: ObjectStore, run_id: str) -> list[dict[str, str]]:
    """The test images that prepare quarantined for the run's cache (patientId, key, reason):
    each gets an empty PredictionString in the run's submission."""
    config = load_run_config(store, run_id)
    prefix = prepared_prefix(config.dataset, config.image_size)
    text = store.get_text_or_none(prefix + QUARANTINE)
    if text is None:
        return []
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    return frame[frame["split"] == "test"][["patientId", "key", "reason"]].to_dict("records")


def load_fold_models(
    store: ObjectStore,
    run_id: str,
    config: RunConfig,
    device: torch.device,
    folds: Sequence[int] | None = None,
) -> list[RetinaNet]:
    """The best checkpoint of every fold (or of `folds`) that has one; at least one must exist."""
    wanted = range(config.n_folds) if folds is None else folds
    unknown = sorted(set(wanted) - set(range(config.n_folds)))
    if unknown:
        raise InputError(f"run {run_id} has folds 0..{config.n_folds - 1}, not {unknown}")
    models = []
    for fold in wanted:
        for name in (CHECKPOINT_BEST, CHECKPOINT_LAST):
            key = fold_key(run_id, fold, name)
            if store.exists(key):
                state = load_checkpoint(store, key)
                info = ModelInfo(**state["model_info"])
                model, _ = build_model(config, frozen_bn=info.frozen_bn)
                model.load_state_dict(state["model"])
                models.append(model.to(device).eval())
                break
    if not models:
        raise InputError(f"run {run_id}: no fold has a checkpoint yet; train it first")
    if len(models) < len(wanted):
        log.warning("run %s: only %d of %d folds have a model", run_id, len(models), len(wanted))
    return models


def tuned_postprocess(
    store: ObjectStore, run_id: str, config: RunConfig
) -> postprocess.PostprocessConfig:
    """The settings evaluate tuned on the out-of-fold predictions, else the configuration's."""
    evaluation = Run(store, run_id).evaluation()
    if evaluation is None:
        log.warning("run %s: no evaluation.json, using the configured post-processing", run_id)
        return config.postprocess
    tuned = evaluation.postprocess
    return postprocess.PostprocessConfig.from_dict(tuned) if tuned else config.postprocess


def _dicom_sources(images: str) -> Iterator[tuple[str, Callable[[], str | Path | bytes]]]:
    """(name, read) pairs; `read()` gives what `decode_resized` takes."""
    if "://" in images:  # file:// or s3:// prefix: read through the store, like prepare does
        store = open_store(images)
        for key in store.list():
            if key.lower().endswith(".dcm"):
                yield store.url(key), (lambda k=key: store.get_bytes(k))
        return
    path = Path(images)
    if path.is_file():
        yield path.name, (lambda: path)
    elif path.is_dir():
        for file in sorted(path.rglob("*.dcm")):
            yield file.name, (lambda f=file: f)
    else:
        raise InputError(f"--images {images}: no such file or folder")


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _ground_truth(store: ObjectStore, config: RunConfig) -> dict[str, np.ndarray]:
    """Known boxes (cache px, xywh) of training patients, for overlays; empty without a cache."""
    try:
        cache = PreparedCache(store, config.dataset, config.image_size)
    except InputError:
        return {}
    out = {}
    for pid in cache.patient_ids("train"):
        out[pid] = xyxy_to_xywh(cache.boxes_xyxy(pid))
    return out


def _write_overlay(
    path: Path, pixels: np.ndarray, boxes: np.ndarray, scores: np.ndarray, truth: np.ndarray | None
) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    canvas = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    thick = max(1, pixels.shape[0] // 256)
    for x, y, w, h in truth if truth is not None else []:
        cv2.rectangle(canvas, (int(x), int(y)), (int(x + w), int(y + h)), (0, 200, 0), thick)
    for (x, y, w, h), s in zip(boxes, scores, strict=True):
        cv2.rectangle(canvas, (int(x), int(y)), (int(x + w), int(y + h)), (0, 0, 255), thick)
        cv2.putText(
            canvas,
            f"{s:.2f}",
            (int(x), max(10, int(y) - 3)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.3 * thick,
            (0, 0, 255),
            1,
        )
    cv2.imwrite(str(path), canvas)
