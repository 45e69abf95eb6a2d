"""One fold's training, wired: configuration, device, data, model, resume, the epoch loop,
checkpoints in the store, out-of-fold predictions and done.json.

Everything a fold needs comes from the store (the run's config and the prepared cache), and
everything it produces goes back there, so any worker can train, and re-train after a crash,
any fold. A restarted fold resumes from its last checkpoint; a finished one (done.json) is
never trained again. The passes over the data are engine.py's; the checkpoint contents are
checkpoint.py's; this module only puts them in order.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from pneumo_core.config.run import RunConfig
from pneumo_core.data.augment import Augmenter
from pneumo_core.data.dataset import DetectionDataset, PreparedCache, make_loader
from pneumo_core.errors import InputError
from pneumo_core.layout import CHECKPOINT_BEST, CHECKPOINT_LAST, OOF_PREDICTIONS, fold_key
from pneumo_core.model import weights
from pneumo_core.model.build import ModelInfo, build_model
from pneumo_core.runs.records import FoldResult
from pneumo_core.runs.run import Run
from pneumo_core.storage.base import ObjectStore
from pneumo_core.train import engine
from pneumo_core.train.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from pneumo_core.train.device import GLOBAL_RNG, resolve_device, seed_everything, tune_for_cuda
from pneumo_core.train.optim import Schedule, amp_dtype, create_optimizer

log = logging.getLogger(__name__)

OnEpoch = Callable[[dict[str, Any]], None]


def train_fold(
    store: ObjectStore, run_id: str, fold: int, on_epoch: OnEpoch | None = None
) -> FoldResult:
    """Train (or resume, or skip when done) fold `fold` of run `run_id`; returns done.json.
    `on_epoch` gets each epoch's metrics record once it is stored."""
    run = Run(store, run_id)
    config = run.config()
    if not 0 <= fold < config.n_folds:
        raise InputError(f"fold {fold}: run {run_id} has folds 0..{config.n_folds - 1}")
    done = run.fold_result(fold)
    if done is not None:
        log.info("run %s fold %d is already trained; skipping", run_id, fold)
        return done
    try:
        return _FoldTraining(store, run_id, fold, config).run(on_epoch)
    except torch.OutOfMemoryError as exc:  # the same batch fails the same way: never retried
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        raise InputError(
            f"run {run_id} fold {fold}: out of memory at batch_size={config.batch_size} "
            f"(val_batch_size={config.execution.val_batch_size}): lower the batch size, e.g. --set "
            f"batch_size={max(1, config.batch_size // 2)}, or use a larger GPU ({first})"
        ) from exc


class _FoldTraining:
    """One fold of one run: where it reads and writes, and the order of the steps."""

    def __init__(self, store: ObjectStore, run_id: str, fold: int, config: RunConfig):
        self.store, self.run_id, self.fold, self.config = store, run_id, fold, config
        self.run_files = Run(store, run_id)
        self.device = resolve_device(config.execution.device)
        self.cache = PreparedCache(store, config.dataset, config.image_size)
        self.train_ids, self.val_ids = self.cache.fold_ids(fold)
        if not self.train_ids or not self.val_ids:
            raise InputError(
                f"fold {fold}: no training or no validation images in the prepared folds"
            )
        self.to_original = engine.original_scale(self.cache.metadata, config.image_size)

    def run(self, on_epoch: OnEpoch | None) -> FoldResult:
        config, started = self.config, time.monotonic()
        resumed = self._load_checkpoint(CHECKPOINT_LAST)
        # Everything that draws from the process-wide RNGs, in one turn (device.GLOBAL_RNG).
        with GLOBAL_RNG:
            seed_everything(config.seed + self.fold)
            if resumed:
                info = ModelInfo(**resumed["model_info"])
                model, _ = build_model(config, frozen_bn=info.frozen_bn)
            else:  # fails here, before any training, when pretrained weights are missing
                model, info = build_model(config, weights.resolve(config, self.store))
            model.to(self.device)
            if self.device.type == "cuda":
                tune_for_cuda(model, config.execution)
            train_loader, val_loader = self._loader("train"), self._loader("val")
            optimizer = create_optimizer(model, config)
            autocast_dtype = amp_dtype(config.execution, self.device)
            state = TrainingState(
                model=model,
                optimizer=optimizer,
                schedule=Schedule(optimizer, config, max(1, len(train_loader))),
                scaler=torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16),
                info=info,
            )
            if resumed:
                state.restore(resumed)
        if resumed:
            log.info(
                "run %s fold %d: resuming after epoch %d", self.run_id, self.fold, resumed["epoch"]
            )
            # The kill may have come between the checkpoint and the metrics write.
            self.run_files.write_fold_history(self.fold, state.history)

        for epoch in range(len(state.history), config.epochs):
            train_loader.dataset.set_epoch(epoch)
            record = {"epoch": epoch, "fold": self.fold, "lr": optimizer.param_groups[0]["lr"]}
            record |= engine.train_one_epoch(
                model,
                optimizer,
                train_loader,
                self.device,
                config,
                schedule=state.schedule,
                scaler=state.scaler,
                amp_dtype=autocast_dtype,
                epoch=epoch,
                fold=self.fold,
            )
            improved = False
            if (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs:
                val = engine.evaluate(model, val_loader, self.device)
                record |= val
                state.schedule.after_validation(val["val_box_loss"])
                improved = val["val_map"] > state.best_map
                if improved:
                    state.best_map, state.best_epoch = val["val_map"], epoch
            state.history.append(record)
            if improved:
                self._save(CHECKPOINT_BEST, state, epoch)
            self._save(CHECKPOINT_LAST, state, epoch)
            self.run_files.write_fold_history(self.fold, state.history)
            log.info("run %s fold %d epoch %d: %s", self.run_id, self.fold, epoch, _brief(record))
            if on_epoch:
                on_epoch(record)

        best = self._load_checkpoint(CHECKPOINT_BEST) or self._load_checkpoint(CHECKPOINT_LAST)
        model.load_state_dict(best["model"])
        oof = engine.oof_predictions(
            model, val_loader, self.device, config, self.fold, self.to_original
        )
        buffer = io.StringIO()
        oof.to_csv(buffer, index=False)
        self.store.put_text(fold_key(self.run_id, self.fold, OOF_PREDICTIONS), buffer.getvalue())
        result = FoldResult(
            run_id=self.run_id,
            fold=self.fold,
            epochs=len(state.history),
            best_epoch=state.best_epoch,
            best_val_map=state.best_map,
            validated_epochs=[r["epoch"] for r in state.history if "val_map" in r],
            oof_checkpoint_epoch=best["epoch"],
            n_train=len(self.train_ids),
            n_val=len(self.val_ids),
            device=str(self.device),
            model_info=asdict(info),
            seconds_last_session=round(time.monotonic() - started, 1),
        )
        self.run_files.write_fold_result(result)
        return result

    def _loader(self, part: str) -> torch.utils.data.DataLoader:
        """The fold's training (shuffled, augmented) or validation loader."""
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
            batch_size=self.config.batch_size if training else self.config.execution.val_batch_size,
            shuffle=training,
            num_workers=self.config.execution.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def _save(self, name: str, state: TrainingState, epoch: int) -> None:
        snapshot = state.snapshot(epoch) | {"config": self.config.to_json()}
        save_checkpoint(self.store, fold_key(self.run_id, self.fold, name), snapshot)

    def _load_checkpoint(self, name: str) -> dict[str, Any] | None:
        key = fold_key(self.run_id, self.fold, name)
        return load_checkpoint(self.store, key) if self.store.exists(key) else None


def _brief(record: dict[str, Any]) -> str:
    """An epoch's losses, mAP and learning rate for the log line."""
    keys = ("train_cls_loss", "train_box_loss", "val_cls_loss", "val_box_loss", "val_map", "lr")
    return " ".join(f"{k}={record[k]:.4g}" for k in keys if k in record)
