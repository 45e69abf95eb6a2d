"""Checkpoints: what a fold's training state is, how it is written to and read from the store,
and the RNG states that make a resumed fold continue as if it had never stopped.

A checkpoint holds only tensors and plain data (loaded with weights_only=True), so inference
(model/predict.py) and the benchmarks read it without the training loop.
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.models.detection import RetinaNet

from pneumo_core.model.build import ModelInfo
from pneumo_core.storage.base import ObjectStore
from pneumo_core.train.optim import Schedule


@dataclass
class TrainingState:
    """What a checkpoint holds, besides the configuration."""

    model: RetinaNet
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    info: ModelInfo
    history: list[dict[str, Any]] = field(default_factory=list)
    best_map: float = -1.0
    best_epoch: int = -1

    def snapshot(self, epoch: int) -> dict[str, Any]:
        """The checkpoint's contents after epoch `epoch`, the process's RNG states included."""
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
        """Back to a snapshot: weights, optimiser, schedule, scaler, RNGs and history."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["schedule"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        _set_rng_state(checkpoint["rng"])
        self.history = [json.loads(line) for line in checkpoint["history"]]
        self.best_map, self.best_epoch = checkpoint["best_map"], checkpoint["best_epoch"]


def save_checkpoint(store: ObjectStore, key: str, state: dict[str, Any]) -> None:
    """Written to a local temp file, then put atomically: a reader never sees half of it."""
    with tempfile.TemporaryDirectory(prefix="pneumo-ckpt-") as tmp:
        path = Path(tmp) / "checkpoint.pt"
        torch.save(state, path)
        store.put_file(key, path)


def load_checkpoint(store: ObjectStore, key: str) -> dict[str, Any]:
    """A checkpoint's contents, tensors on the CPU."""
    # weights_only: a checkpoint is data, never code, even if the store was tampered with.
    return torch.load(store.local_path(key), map_location="cpu", weights_only=True)


def _rng_state() -> dict[str, Any]:
    """Python's, NumPy's and torch's (CPU and CUDA) global RNG states, as plain data."""
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
