"""The optimiser, its learning-rate schedule and the mixed-precision choice of a run's config.

Public so the benchmarks (bench/bench_train.py, bench/gpu_check.py) step the detector exactly
as a fold does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pneumo_core.config.execution import ExecutionConfig
from pneumo_core.config.run import RunConfig


def create_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """Adam or AdamW over the parameters that train (a frozen backbone's are left out)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def amp_dtype(execution: ExecutionConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training, None for float32. CUDA only: bfloat16 autocast on a
    CPU with AMX trained the ci recipe 1.3-1.4x faster per core (docs/benchmarks.md), but a tiny run
    diverged to NaN with it, so CPUs stay in float32."""
    if not (execution.amp and device.type == "cuda"):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Schedule:
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
