"""One fold's training loop: metrics, checkpoints in the store, resume, out-of-fold predictions.

Everything a fold needs comes from the store (`runs/<id>/config.json` and the prepared
cache), and everything it produces goes back there, so any worker can train, and re-train
after a crash, any fold. A restarted fold resumes from `checkpoint-last.pt`; a finished one
(`done.json`) is never trained again.
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torchvision.models.detection import RetinaNet

from pneumo_core.config.run import RunConfig
from pneumo_core.data.augment import Augmenter
from pneumo_core.data.dataset import DetectionDataset, PreparedCache, make_loader
from pneumo_core.data.prepare import available_cores
from pneumo_core.errors import InputError
from pneumo_core.evaluation import metric
from pneumo_core.evaluation.evaluate import THRESHOLD_GRID
from pneumo_core.model import weights
from pneumo_core.model.build import ModelInfo, build_model, detect_batch, losses_and_detections
from pneumo_core.progress import progress_reporter
from pneumo_core.runs.ids import create_run as create_run
from pneumo_core.runs.ids import fold_key, load_run_config
from pneumo_core.runs.ids import new_run_id as new_run_id
from pneumo_core.runs.ids import run_key as run_key
from pneumo_core.storage.base import ObjectStore

log = logging.getLogger(__name__)

OnEpoch = Callable[[dict[str, Any]], None]
# cuDNN's algorithm search: no gain measured on an H100 (62 vs 57 images/s without it), so
# PyTorch's default stays; bench/gpu_check.py turns it on for the comparison.
CUDNN_BENCHMARK = False
# Steps between the host's reads of the losses: each read waits for the device, and a GPU
# step of this detector is short enough for that wait to matter (H100: +7 % images/s at
# float32, +12 % at bf16 with 20 instead of 1; bench/gpu_check.py).
SYNC_EVERY = 20
# Seeding and model initialisation use the process-wide RNGs: folds trained at once in
# threads of one process (the local fold pool) take turns there, and every other draw from
# them during training (a DataLoader iterator's seed; torchvision's random resize size is
# skipped in build_model) takes the same turn, so each fold trains exactly as it would alone.
_GLOBAL_RNG = threading.Lock()
# opacity: the image head's P(Lung Opacity), repeated on each row of the image; empty without
OOF_COLUMNS = ["patientId", "fold", "score", "x", "y", "width", "height", "opacity"]


@contextmanager
def cpu_shared_by(parallel_folds: int) -> Iterator[int]:
    """Within: this process's CPU cores split between `parallel_folds` folds trained at once in
    its threads (yields the intra-op threads each gets); the thread count is restored after.

    On two cores, two folds with one thread each train 1.2-1.3x more images/s than one fold
    with two threads: the detector's small ops scale poorly across threads (bench.demo_training).
    """
    before = torch.get_num_threads()
    threads = max(1, available_cores() // max(1, parallel_folds))
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def resolve_device(name: str) -> torch.device:
    """The configured device on this machine; InputError naming the field when it is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if (device.index or 0) >= count:
            raise InputError(f"config field device={name!r}: this machine has {count} CUDA GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"config field device={name!r}: MPS is not available on this machine")
    return device


def train_fold(
    store: ObjectStore, run_id: str, fold: int, on_epoch: OnEpoch | None = None
) -> dict[str, Any]:
    """Train (or resume, or skip when done) fold `fold` of run `run_id`; returns done.json."""
    config = load_run_config(store, run_id)
    if not 0 <= fold < config.n_folds:
        raise InputError(f"fold {fold}: run {run_id} has folds 0..{config.n_folds - 1}")
    done_key = fold_key(run_id, fold, "done.json")
    if store.exists(done_key):
        log.info("run %s fold %d is already trained; skipping", run_id, fold)
        return store.get_json(done_key)
    try:
        return _FoldTrainer(store, run_id, fold, config).run(on_epoch)
    except torch.OutOfMemoryError as exc:  # the same batch fails the same way: never retried
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        raise InputError(
            f"run {run_id} fold {fold}: out of memory at batch_size={config.batch_size} "
            f"(val_batch_size={config.val_batch_size}): lower the batch size, e.g. --set "
            f"batch_size={max(1, config.batch_size // 2)}, or use a larger GPU ({first})"
        ) from exc


class _FoldTrainer:
    def __init__(self, store: ObjectStore, run_id: str, fold: int, config: RunConfig):
        self.store, self.run_id, self.fold, self.config = store, run_id, fold, config
        self.device = resolve_device(config.device)
        self.cuda = self.device.type == "cuda"
        self.cache = PreparedCache(store, config.dataset, config.image_size)
        self.train_ids, self.val_ids = self.cache.fold_ids(fold)
        if not self.train_ids or not self.val_ids:
            raise InputError(
                f"fold {fold}: no training or no validation images in the prepared folds"
            )
        self.to_original = original_scale(self.cache.metadata, config.image_size)

    def run(self, on_epoch: OnEpoch | None) -> dict[str, Any]:
        config, started = self.config, time.monotonic()
        resumed = self._load_checkpoint("checkpoint-last.pt")
        with _GLOBAL_RNG:
            _seed_everything(config.seed + self.fold)
            if resumed:
                info = ModelInfo(**resumed["model_info"])
                model, _ = build_model(config, frozen_bn=info.frozen_bn)
            else:  # fails here, before any training, when pretrained weights are missing
                model, info = build_model(config, weights.resolve(config, self.store))
            model.to(self.device)
            if self.cuda:
                _tune_for_cuda(model, config)
            train_loader, val_loader = self._loader("train"), self._loader("val")
            optimizer = _optimizer(model, config)
            amp_dtype = _amp_dtype(config, self.device)
            state = _State(
                model=model,
                optimizer=optimizer,
                schedule=_Schedule(optimizer, config, max(1, len(train_loader))),
                scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
                info=info,
            )
            if resumed:
                state.restore(resumed)
        if resumed:
            log.info(
                "run %s fold %d: resuming after epoch %d", self.run_id, self.fold, resumed["epoch"]
            )
            self._write_metrics(state.history)  # the kill may have come before the last write

        for epoch in range(len(state.history), config.epochs):
            train_loader.dataset.set_epoch(epoch)
            record = {"epoch": epoch, "fold": self.fold, "lr": optimizer.param_groups[0]["lr"]}
            record |= self._train_epoch(state, train_loader, amp_dtype, epoch)
            improved = False
            if (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs:
                val = self._validate(model, val_loader)
                record |= val
                state.schedule.after_validation(val["val_box_loss"])
                improved = val["val_map"] > state.best_map
                if improved:
                    state.best_map, state.best_epoch = val["val_map"], epoch
            state.history.append(record)
            if improved:
                self._save("checkpoint-best.pt", state, epoch)
            self._save("checkpoint-last.pt", state, epoch)
            self._write_metrics(state.history)
            log.info("run %s fold %d epoch %d: %s", self.run_id, self.fold, epoch, _brief(record))
            if on_epoch:
                on_epoch(record)

        best = self._load_checkpoint("checkpoint-best.pt") or self._load_checkpoint(
            "checkpoint-last.pt"
        )
        model.load_state_dict(best["model"])
        oof = self._oof_predictions(model, val_loader)
        buffer = io.StringIO()
        oof.to_csv(buffer, index=False)
        self.store.put_text(
            fold_key(self.run_id, self.fold, "oof_predictions.csv"), buffer.getvalue()
        )
        result = {
            "run_id": self.run_id,
            "fold": self.fold,
            "epochs": len(state.history),
            "best_epoch": state.best_epoch,
            "best_val_map": state.best_map,
            # With val_every > 1 only these epochs were candidates for the best checkpoint,
            # which the out-of-fold predictions come from.
            "validated_epochs": [r["epoch"] for r in state.history if "val_map" in r],
            "oof_checkpoint_epoch": best["epoch"],
            "n_train": len(self.train_ids),
            "n_val": len(self.val_ids),
            "device": str(self.device),
            "model_info": asdict(info),
            "seconds_last_session": round(time.monotonic() - started, 1),
        }
        self.store.put_json(fold_key(self.run_id, self.fold, "done.json"), result)
        return result

    # --- loops ---------------------------------------------------------------------------------

    def _loader(self, part: str) -> torch.utils.data.DataLoader:
        training = part == "train"
        dataset = DetectionDataset(
            self.cache,
            self.train_ids if training else self.val_ids,
            split="train",
            augmenter=Augmenter(self.config.augment) if training else None,
            seed=self.config.seed + self.fold,
        )
        return make_loader(
            dataset,
            batch_size=self.config.batch_size if training else self.config.val_batch_size,
            shuffle=training,
            num_workers=self.config.num_workers,
            pin_memory=self.cuda,
        )

    def _train_epoch(self, state: _State, loader, amp_dtype, epoch: int) -> dict[str, float]:
        model, optimizer, scaler = state.model, state.optimizer, state.scaler
        model.train()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # classification, box
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        n_images, started = 0, time.monotonic()
        waits: list[float] = []  # seconds blocked on the loader before each step
        with progress_reporter(
            f"fold {self.fold} epoch {epoch + 1}/{self.config.epochs}", len(loader)
        ) as advance:
            asked = time.monotonic()
            for step, (images, targets, _) in enumerate(_batches(loader), 1):
                waits.append(time.monotonic() - asked)
                images, targets = self._to_device(images, targets)
                with self._autocast(amp_dtype):
                    losses = model(images, targets)
                loss = sum(losses.values())  # + the image head's, weighted, when it has one
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if self.config.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                state.schedule.after_step()
                parts = (losses["classification"], losses["bbox_regression"])
                sums += torch.stack([p.detach() for p in parts]) * len(images)
                n_images += len(images)
                if step % SYNC_EVERY == 0:
                    self._check_finite(sums, epoch, step)
                advance(1)
                # Right after a sync the device is idle, so the next wait is the GPU's too;
                # between syncs the host runs ahead and a wait is an upper bound on it.
                asked = time.monotonic()
        seconds = time.monotonic() - started
        cls_sum, box_sum = self._check_finite(sums, epoch, len(loader))
        out = {
            "train_cls_loss": cls_sum / max(1, n_images),
            "train_box_loss": box_sum / max(1, n_images),
        }
        out |= {"train_images_per_s": n_images / max(seconds, 1e-9), "train_seconds": seconds}
        return out | _loader_figures(waits, seconds) | self._memory_figures()

    @torch.no_grad()
    def _validate(self, model: RetinaNet, loader) -> dict[str, Any]:
        """Full precision: reduced-precision box regression costs whole pixels of IoU."""
        model.eval()
        started = time.monotonic()
        sums = {"val_cls_loss": 0.0, "val_box_loss": 0.0}
        gt: dict[str, np.ndarray] = {}
        preds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for images, targets, ids in _batches(loader):
            images, targets = self._to_device(images, targets)
            losses, detections = losses_and_detections(model, images, targets)
            sums["val_cls_loss"] += losses["classification"].item() * len(images)
            sums["val_box_loss"] += losses["bbox_regression"].item() * len(images)
            for pid, target, det in zip(ids, targets, detections, strict=True):
                gt[pid] = _xyxy_to_xywh(target["boxes"].float().cpu().numpy())
                preds[pid] = (
                    _xyxy_to_xywh(det["boxes"].float().cpu().numpy()),
                    det["scores"].float().cpu().numpy(),
                )
        out: dict[str, Any] = {k: v / len(self.val_ids) for k, v in sums.items()}
        val_map, threshold = validation_map(metric.ScoreTable.from_dicts(gt, preds))
        seconds = time.monotonic() - started
        return out | {"val_map": val_map, "val_threshold": threshold, "val_seconds": seconds}

    @torch.no_grad()
    def _oof_predictions(self, model: RetinaNet, loader) -> pd.DataFrame:
        """Every box above the model's floor score, in ORIGINAL pixels, with TTA as predict does."""
        model.eval()
        rows: list[tuple] = []
        for images, _, ids in _batches(loader):
            images = [img.to(self.device, non_blocking=True) for img in images]
            results = detect_batch([model], images, self.config)
            for pid, (boxes, scores, opacity) in zip(ids, results, strict=True):
                sx, sy = self.to_original[pid]
                if len(scores) == 0:
                    rows.append((pid, self.fold, None, None, None, None, None, opacity))
                for (x, y, w, h), s in zip(boxes, scores, strict=True):
                    rows.append((pid, self.fold, float(s), x * sx, y * sy, w * sx, h * sy, opacity))
        return pd.DataFrame(rows, columns=OOF_COLUMNS).round(
            {"score": 5, "x": 1, "y": 1, "width": 1, "height": 1, "opacity": 5}
        )

    # --- helpers -------------------------------------------------------------------------------

    def _to_device(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]]):
        images = [img.to(self.device, non_blocking=True) for img in images]
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
        return images, targets

    def _check_finite(self, sums: Tensor, epoch: int, step: int) -> tuple[float, float]:
        """The loss sums so far, read by the host (a sync); a NaN or inf stops the fold before
        the epoch's checkpoint is written, so no checkpoint ever holds diverged weights."""
        cls_sum, box_sum = sums.tolist()
        if not (math.isfinite(cls_sum) and math.isfinite(box_sum)):
            raise FloatingPointError(
                f"fold {self.fold} epoch {epoch}: the training loss is not finite by step {step}"
            )
        return cls_sum, box_sum

    def _memory_figures(self) -> dict[str, float]:
        """The epoch's peak GPU memory: what a smaller card or a larger batch must fit."""
        if not self.cuda:
            return {}
        return {"gpu_peak_memory_gib": torch.cuda.max_memory_allocated(self.device) / 2**30}

    def _autocast(self, amp_dtype: torch.dtype | None):
        return torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else nullcontext()

    def _save(self, name: str, state: _State, epoch: int) -> None:
        snapshot = state.snapshot(epoch) | {"config": self.config.to_json()}
        save_checkpoint(self.store, fold_key(self.run_id, self.fold, name), snapshot)

    def _write_metrics(self, history: list[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in history)
        self.store.put_text(fold_key(self.run_id, self.fold, "metrics.jsonl"), lines)

    def _load_checkpoint(self, name: str) -> dict[str, Any] | None:
        key = fold_key(self.run_id, self.fold, name)
        return load_checkpoint(self.store, key) if self.store.exists(key) else None


@dataclass
class _State:
    """What a checkpoint holds, besides the configuration."""

    model: RetinaNet
    optimizer: torch.optim.Optimizer
    schedule: _Schedule
    scaler: torch.amp.GradScaler
    info: ModelInfo
    history: list[dict[str, Any]] = field(default_factory=list)
    best_map: float = -1.0
    best_epoch: int = -1

    def snapshot(self, epoch: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "epoch": epoch,
            "history": [json.dumps(r, sort_keys=True) for r in self.history],
            "best_map": self.best_map,
            "best_epoch": self.best_epoch,
            "model_info": asdict(self.info),
        }

    def restore(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["schedule"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        _set_rng_state(checkpoint["rng"])
        self.history = [json.loads(line) for line in checkpoint["history"]]
        self.best_map, self.best_epoch = checkpoint["best_map"], checkpoint["best_epoch"]


class _Schedule:
    """Linear warm-up per step, then cosine per step or ReduceLROnPlateau per validation."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: RunConfig, steps_per_epoch: int):
        self.config = config
        self.warmup_steps = round(config.warmup_epochs * steps_per_epoch)
        self.total_steps = config.epochs * steps_per_epoch
        self.step_count = 0
        self.lambda_lr = torch.optim.lr_scheduler.LambdaLR(optimizer, self._factor)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", patience=config.plateau_patience, factor=config.plateau_factor
        )

    def _factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.config.scheduler != "cosine":
            return warm
        progress_ = min(1.0, step / max(1, self.total_steps))
        return warm * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress_)))

    def after_step(self) -> None:
        self.step_count += 1
        # With a plateau schedule the warm-up stops stepping once done, so it never undoes a
        # plateau reduction.
        if self.config.scheduler == "cosine" or self.step_count <= self.warmup_steps:
            self.lambda_lr.step()

    def after_validation(self, val_box_loss: float) -> None:
        if self.config.scheduler == "plateau" and self.step_count >= self.warmup_steps:
            self.plateau.step(val_box_loss)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "lambda_lr": self.lambda_lr.state_dict(),
            "plateau": self.plateau.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = state["step_count"]
        self.lambda_lr.load_state_dict(state["lambda_lr"])
        self.plateau.load_state_dict(state["plateau"])


def save_checkpoint(store: ObjectStore, key: str, state: dict[str, Any]) -> None:
    """Written to a local temp file, then put atomically: a reader never sees half of it."""
    with tempfile.TemporaryDirectory(prefix="pneumo-ckpt-") as tmp:
        path = Path(tmp) / "checkpoint.pt"
        torch.save(state, path)
        store.put_file(key, path)


def load_checkpoint(store: ObjectStore, key: str) -> dict[str, Any]:
    # weights_only: a checkpoint is data, never code, even if the store was tampered with.
    return torch.load(store.local_path(key), map_location="cpu", weights_only=True)


def _tune_for_cuda(model: RetinaNet, config: RunConfig) -> None:
    """The CUDA execution settings (bench/gpu_check.py measured each; README, "GPU hosts").
    Compiling covers the backbone and head, whose shapes are fixed, and leaves the loss
    and box decoding (data-dependent shapes) to eager mode."""
    torch.backends.cudnn.benchmark = CUDNN_BENCHMARK
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.torch_compile:
        # In place: the state_dict keys stay those of the plain modules, so checkpoints load
        # anywhere. dynamic=False: the odd last batch costs one more static graph.
        model.backbone.compile(dynamic=False)
        model.head.compile(dynamic=False)


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


def _optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _amp_dtype(config: RunConfig, device: torch.device) -> torch.dtype | None:
    """CUDA only. bfloat16 autocast on a CPU with AMX trained the ci recipe 1.3-1.4x faster
    per core (README), but a tiny run diverged to NaN with it, so CPUs stay in float32."""
    if not (config.amp and device.type == "cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _batches(loader: torch.utils.data.DataLoader) -> Iterator:
    """The loader's iterator, made in turn with the other folds' initialisation: making it
    draws a seed from torch's global RNG (see _GLOBAL_RNG)."""
    with _GLOBAL_RNG:
        return iter(loader)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": json.dumps(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    out = boxes.astype(np.float64).copy()
    out[:, 2:] -= out[:, :2]
    return out


def _brief(record: dict[str, Any]) -> str:
    keys = ("train_cls_loss", "train_box_loss", "val_cls_loss", "val_box_loss", "val_map", "lr")
    return " ".join(f"{k}={record[k]:.4g}" for k in keys if k in record)
