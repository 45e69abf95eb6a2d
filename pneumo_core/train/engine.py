"""The passes over a fold's data, as plain functions (as torchvision's detection references'
engine.py): one training epoch, one validation pass (losses and mAP), and the out-of-fold
predictions of the chosen checkpoint.

They take what they use (model, loader, device, config) and keep no state between calls, so
fold.py wires them into a fold's epoch loop and a benchmark can call one on its own. The model
is run only through pneumo_core.model.detector's surface.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torchvision.models.detection import RetinaNet
from torchvision.ops import box_convert

from pneumo_core.config.run import RunConfig
from pneumo_core.evaluation import metric
from pneumo_core.evaluation.evaluate import THRESHOLD_GRID
from pneumo_core.model.build import detect_batch
from pneumo_core.model.detector import losses_and_detections, training_losses
from pneumo_core.progress import progress_reporter
from pneumo_core.train.device import batches
from pneumo_core.train.optim import Schedule

# Steps between the host's reads of the losses: each read waits for the device, and a GPU
# step of this detector is short enough for that wait to matter (H100: +7 % images/s at
# float32, +12 % at bf16 with 20 instead of 1; bench/gpu_check.py).
SYNC_EVERY = 20
# opacity: the image head's P(Lung Opacity), repeated on each row of the image; empty without
OOF_COLUMNS = ["patientId", "fold", "score", "x", "y", "width", "height", "opacity"]

Images = list[Tensor]
Targets = list[dict[str, Tensor]]


def train_one_epoch(
    model: RetinaNet,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    config: RunConfig,
    *,
    schedule: Schedule,
    scaler: torch.amp.GradScaler,
    amp_dtype: torch.dtype | None,
    epoch: int,
    fold: int,
) -> dict[str, float]:
    """One pass over `loader`, an optimiser step per batch; the epoch's mean losses per image,
    its speed, the loader's waits and (CUDA) the peak GPU memory. FloatingPointError as soon
    as a read of the losses finds them not finite."""
    cuda = device.type == "cuda"
    model.train()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # classification, box
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    n_images, started = 0, time.monotonic()
    waits: list[float] = []  # seconds blocked on the loader before each step
    with progress_reporter(
        f"fold {fold} epoch {epoch + 1}/{config.epochs}", len(loader)
    ) as advance:
        asked = time.monotonic()
        for step, (images, targets, _) in enumerate(batches(loader), 1):
            waits.append(time.monotonic() - asked)
            images, targets = to_device(images, targets, device)
            with _autocast(amp_dtype):
                losses = training_losses(model, images, targets)
            loss = sum(losses.values())  # + the image head's, weighted, when it has one
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.after_step()
            parts = (losses["classification"], losses["bbox_regression"])
            sums += torch.stack([p.detach() for p in parts]) * len(images)
            n_images += len(images)
            if step % SYNC_EVERY == 0:
                _check_finite(sums, fold, epoch, step)
            advance(1)
            # Right after a sync the device is idle, so the next wait is the GPU's too;
            # between syncs the host runs ahead and a wait is an upper bound on it.
            asked = time.monotonic()
    seconds = time.monotonic() - started
    cls_sum, box_sum = _check_finite(sums, fold, epoch, len(loader))
    out = {
        "train_cls_loss": cls_sum / max(1, n_images),
        "train_box_loss": box_sum / max(1, n_images),
    }
    out |= {"train_images_per_s": n_images / max(seconds, 1e-9), "train_seconds": seconds}
    return out | _loader_figures(waits, seconds) | _memory_figures(device)


@torch.no_grad()
def evaluate(
    model: RetinaNet, loader: torch.utils.data.DataLoader, device: torch.device
) -> dict[str, Any]:
    """The validation pass: mean losses per image and the mAP at its best score threshold.
    Full precision: reduced-precision box regression costs whole pixels of IoU."""
    model.eval()
    started = time.monotonic()
    sums = {"val_cls_loss": 0.0, "val_box_loss": 0.0}
    n_images = 0
    gt: dict[str, np.ndarray] = {}
    preds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for images, targets, ids in batches(loader):
        images, targets = to_device(images, targets, device)
        losses, found = losses_and_detections(model, images, targets)
        sums["val_cls_loss"] += losses["classification"].item() * len(images)
        sums["val_box_loss"] += losses["bbox_regression"].item() * len(images)
        n_images += len(images)
        for pid, target, det in zip(ids, targets, found, strict=True):
            gt[pid] = _xywh(target["boxes"])
            preds[pid] = (_xywh(det["boxes"]), det["scores"].float().cpu().numpy())
    out: dict[str, Any] = {k: v / n_images for k, v in sums.items()}
    val_map, threshold = validation_map(metric.ScoreTable.from_dicts(gt, preds))
    seconds = time.monotonic() - started
    return out | {"val_map": val_map, "val_threshold": threshold, "val_seconds": seconds}


@torch.no_grad()
def oof_predictions(
    model: RetinaNet,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    config: RunConfig,
    fold: int,
    to_original: dict[str, tuple[float, float]],
) -> pd.DataFrame:
    """Every box above the model's floor score, in ORIGINAL pixels (`to_original`: see
    original_scale), with TTA as predict does; one row with no box for an image without."""
    model.eval()
    rows: list[tuple] = []
    for images, _, ids in batches(loader):
        images = [img.to(device, non_blocking=True) for img in images]
        results = detect_batch([model], images, config)
        for pid, (boxes, scores, opacity) in zip(ids, results, strict=True):
            sx, sy = to_original[pid]
            if len(scores) == 0:
                rows.append((pid, fold, None, None, None, None, None, opacity))
            for (x, y, w, h), s in zip(boxes, scores, strict=True):
                rows.append((pid, fold, float(s), x * sx, y * sy, w * sx, h * sy, opacity))
    return pd.DataFrame(rows, columns=OOF_COLUMNS).round(
        {"score": 5, "x": 1, "y": 1, "width": 1, "height": 1, "opacity": 5}
    )


def validation_map(table: metric.ScoreTable) -> tuple[float, float]:
    """An epoch's validation mAP at its best score threshold, on evaluate's grid (from 0.05,
    the model's floor): a grid starting higher read a fold whose scores sat below it as
    collapsed (mAP 0) although its out-of-fold predictions scored."""
    maps, _ = table.score_grid(THRESHOLD_GRID)
    maps = np.nan_to_num(maps)
    best = int(np.argmax(maps))
    return float(maps[best]), THRESHOLD_GRID[best]


def original_scale(metadata: pd.DataFrame, image_size: int) -> dict[str, tuple[float, float]]:
    """Per patient (x, y) factors from cache pixels back to the original image's pixels."""
    return {
        pid: (cols / image_size, rows / image_size)
        for pid, rows, cols in zip(
            metadata["patientId"], metadata["rows"], metadata["cols"], strict=True
        )
    }


def to_device(
    images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]], device: torch.device
) -> tuple[Images, Targets]:
    """A batch on `device`; non-blocking, so pinned memory overlaps the copy with compute."""
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
    return images, targets


def _xywh(boxes: Tensor) -> np.ndarray:
    """xyxy boxes as the metric's xywh, in float64 (the subtraction too)."""
    return box_convert(boxes.double(), "xyxy", "xywh").cpu().numpy()


def _check_finite(sums: Tensor, fold: int, epoch: int, step: int) -> tuple[float, float]:
    """The loss sums so far, read by the host (a sync); a NaN or inf stops the fold before
    the epoch's checkpoint is written, so no checkpoint ever holds diverged weights."""
    cls_sum, box_sum = sums.tolist()
    if not (math.isfinite(cls_sum) and math.isfinite(box_sum)):
        raise FloatingPointError(
            f"fold {fold} epoch {epoch}: the training loss is not finite by step {step}"
        )
    return cls_sum, box_sum


def _memory_figures(device: torch.device) -> dict[str, float]:
    """The epoch's peak GPU memory: what a smaller card or a larger batch must fit."""
    if device.type != "cuda":
        return {}
    return {"gpu_peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}


def _autocast(amp_dtype: torch.dtype | None) -> AbstractContextManager:
    return torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else nullcontext()


def _loader_figures(waits: list[float], seconds: float) -> dict[str, float]:
    """How long the steps waited for data: the first batch (the workers starting, once an
    epoch) apart from the steady state, where a GPU idle > 10 % of the time means the loader
    needs more workers."""
    if not waits:
        return {}
    steady = seconds - waits[0]
    return {
        "train_first_batch_s": waits[0],
        "train_data_wait_fraction": sum(waits[1:]) / steady if steady > 0 else 0.0,
    }
