"""Inference: every fold's best model, horizontal-flip TTA, box fusion, tuned post-processing.

Images are decoded exactly as `prepare` decodes them (`prepare.decode_resized`), so the
models see at prediction time what they saw in training; boxes go back to each image's
original pixel size before they are written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection import RetinaNet

from pneumo_core import postprocess, submission
from pneumo_core.config import RunConfig
from pneumo_core.data import PreparedCache
from pneumo_core.errors import InputError, PneumoError
from pneumo_core.model import Detection, ModelInfo, build_model, detect_batch
from pneumo_core.prepare import decode_resized
from pneumo_core.progress import progress_reporter
from pneumo_core.storage import ObjectStore, open_store
from pneumo_core.train import fold_key, load_checkpoint, load_run_config, resolve_device, run_key

log = logging.getLogger(__name__)

BATCH = 8


def predict_images(
    store: ObjectStore,
    run_id: str,
    images: str,
    out: str | Path,
    overlays: Path | None = None,
) -> Path:
    """Predict every DICOM under `images` (folder, one .dcm, or a file:// or s3:// prefix) into the
    submission CSV `out`; optionally one overlay PNG per image into `overlays`."""
    config = load_run_config(store, run_id)
    device = resolve_device(config.device)
    models = load_fold_models(store, run_id, config, device)
    post = tuned_postprocess(store, run_id, config)
    sources = list(_dicom_sources(images))
    if not sources:
        raise InputError(f"no .dcm files found under {images}")
    truth = _ground_truth(store, config) if overlays is not None else {}
    rows: dict[str, Detection] = {}
    size = config.image_size
    with progress_reporter(f"predict {len(sources)} image(s)", len(sources)) as advance:
        for chunk in _chunks(sources, BATCH):
            decoded = [decode_resized(read(), size) for _, read in chunk]
            tensors = [
                torch.from_numpy(np.ascontiguousarray(p)).float().div_(255).unsqueeze_(0)
                for p, _ in decoded
            ]
            with torch.no_grad():
                fused = detect_batch(models, [t.to(device) for t in tensors], config)
            for (name, _), (pixels, meta), (boxes, scores) in zip(
                chunk, decoded, fused, strict=True
            ):
                boxes, scores = postprocess.apply(boxes, scores, post)
                sx, sy = meta["cols"] / size, meta["rows"] / size
                original = boxes * np.array([sx, sy, sx, sy])
                patient_id = meta.get("patientId") or Path(name).stem
                if patient_id in rows:
                    raise InputError(f"{name}: patient {patient_id} appears in two DICOMs")
                rows[patient_id] = (original, scores)
                if overlays is not None:
                    gt = truth.get(patient_id)
                    _write_overlay(overlays / f"{patient_id}.png", pixels, boxes, scores, gt)
            advance(len(chunk))
    out = Path(out)
    submission.write_submission(rows, out)
    problems = submission.check_submission(out)
    if problems:
        raise PneumoError(f"{out}: the written submission is invalid: {'; '.join(problems[:5])}")
    log.info("wrote %d predictions to %s", len(rows), out)
    return out


def load_fold_models(
    store: ObjectStore, run_id: str, config: RunConfig, device: torch.device
) -> list[RetinaNet]:
    """The best checkpoint of every fold that has one; at least one must exist."""
    models = []
    for fold in range(config.n_folds):
        for name in ("checkpoint-best.pt", "checkpoint-last.pt"):
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
    if len(models) < config.n_folds:
        log.warning("run %s: only %d of %d folds have a model", run_id, len(models), config.n_folds)
    return models


def tuned_postprocess(
    store: ObjectStore, run_id: str, config: RunConfig
) -> postprocess.PostprocessConfig:
    """The settings evaluate tuned on the out-of-fold predictions, else the configuration's."""
    key = run_key(run_id, "evaluation.json")
    if not store.exists(key):
        log.warning("run %s: no evaluation.json, using the configured post-processing", run_id)
        return config.postprocess
    tuned = store.get_json(key).get("postprocess")
    return postprocess.PostprocessConfig.from_dict(tuned) if tuned else config.postprocess


def _dicom_sources(images: str) -> Iterator[tuple[str, Callable[[], str | Path | bytes]]]:
    """(name, read) pairs; `read()` gives what `decode_resized` takes."""
    if "://" in images:  # file:// or s3:// prefix: read through the store, like prepare does
        store = open_store(images)
        for key in store.list():
            if key.lower().endswith(".dcm"):
                yield key, (lambda k=key: store.get_bytes(k))
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
        boxes = cache.boxes_xyxy(pid).astype(np.float64)
        boxes[:, 2:] -= boxes[:, :2]
        out[pid] = boxes
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
