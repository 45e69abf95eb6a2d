"""Where and how a fold runs: its device, its share of the CPU, CUDA execution settings, and
the process-wide RNG that folds trained at once in threads of one process take turns at.

Kept apart from the training loop because the orchestration (flows: the local fold pool,
preflight's GPU check) needs these without importing the loop.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from pneumo_core.config.execution import ExecutionConfig
from pneumo_core.data.decode import available_cores
from pneumo_core.errors import InputError
from pneumo_core.train.stop import check_stop

# cuDNN's algorithm search: no gain measured on an H100 (62 vs 57 images/s without it), so
# PyTorch's default stays; bench/gpu_check.py turns it on for the comparison.
CUDNN_BENCHMARK = False
# Seeding and model initialisation use the process-wide RNGs: folds trained at once in
# threads of one process (the local fold pool) take turns there, and every other draw from
# them during training (a DataLoader iterator's seed; torchvision's random resize size is
# skipped, see model.detector.set_fixed_size) takes the same turn, so each fold trains
# exactly as it would alone.
GLOBAL_RNG = threading.Lock()


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
            raise InputError(
                f"config field execution.device={name!r}: this machine has {count} CUDA GPU(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(
            f"config field execution.device={name!r}: MPS is not available on this machine"
        )
    return device


def tune_for_cuda(model: nn.Module, execution: ExecutionConfig) -> None:
    """The CUDA execution settings (bench/gpu_check.py measured each; docs/benchmarks.md).
    Compiling covers the backbone and head, whose shapes are fixed, and leaves the loss
    and box decoding (data-dependent shapes) to eager mode."""
    torch.backends.cudnn.benchmark = CUDNN_BENCHMARK
    if execution.channels_last:
        model.to(memory_format=torch.channels_last)
    if execution.torch_compile:
        # In place: the state_dict keys stay those of the plain modules, so checkpoints load
        # anywhere. dynamic=False: the odd last batch costs one more static graph.
        model.backbone.compile(dynamic=False)
        model.head.compile(dynamic=False)


def batches(loader: torch.utils.data.DataLoader) -> Iterator:
    """The loader's batches, its iterator made in turn with the other folds' initialisation
    (making it draws a seed from torch's global RNG: see GLOBAL_RNG); TrainingStopped before
    a batch once a stop is requested."""
    with GLOBAL_RNG:
        iterator = iter(loader)
    return _until_stopped(iterator)


def _until_stopped(iterator: Iterator) -> Iterator:
    for batch in iterator:
        check_stop()
        yield batch


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's global RNGs; call it holding GLOBAL_RNG."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
