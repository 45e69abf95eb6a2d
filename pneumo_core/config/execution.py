"""`ExecutionConfig`: how a run is executed, as opposed to what it trains.

The recipe (the rest of `RunConfig`) decides the model and is fixed for a run's life; these
settings only decide where and how fast it trains: a resume may change them (more loader
workers on a bigger machine, another GPU), and the configuration hash leaves them out, so two
runs with the same recipe compare as the same configuration wherever they ran.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from pneumo_core.config.checked import CheckedModel

DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"
SECTION = "execution"


class ExecutionConfig(CheckedModel):
    """Device, precision, loader workers and folds at once.

    The device's syntax is checked here; whether it exists on the machine that trains is
    checked there (`train.device.resolve_device`), since runs are often configured on a
    machine without the GPU that will train them.
    """

    section: ClassVar[str] = f"{SECTION}."
    device: str = Field("auto", pattern=DEVICE_PATTERN)  # "auto" = CUDA when present, else CPU
    # CUDA only (docs/benchmarks.md has the measured figures of each)
    amp: bool = False  # bf16 autocast (fp16 with a scaler where bf16 is missing)
    channels_last: bool = False
    torch_compile: bool = False  # backbone and head through torch.compile
    num_workers: int = Field(2, ge=0, le=256)  # data loader processes per fold
    max_parallel_folds: int = Field(1, ge=1, le=256)  # local runner: folds trained at once
    val_batch_size: int = Field(4, ge=1, le=4096)  # validation batch (prediction: its own)


def canonical_key(key: str) -> str:
    """An override's key in the configuration's nesting: the execution settings may be
    named without their section (`num_workers=4` is `execution.num_workers=4`), as they were
    before the section existed."""
    return f"{SECTION}.{key}" if key in ExecutionConfig.model_fields else key
