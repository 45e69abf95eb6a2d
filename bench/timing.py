"""Timing helpers shared by the benchmarks: turns, best-of, and generated inputs.

On a shared machine the best of several runs is the least disturbed one, and candidates that
take turns within each round are disturbed alike, so their ratio holds even when the
absolute figures drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from pneumo_core.data.synthetic import generate
from pneumo_core.layout import TRAIN_IMAGES


def best_of_turns(
    candidates: dict[str, Callable[[], object]],
    repeat: int,
    clock: Callable[[], float] = time.process_time,
) -> dict[str, float]:
    """Best seconds per candidate over `repeat` rounds, each candidate once per round, after
    one warm-up call each. The default clock is this process's CPU time: right for
    single-threaded work on a busy machine; pass `time.perf_counter` for multi-threaded work."""
    for run in candidates.values():
        run()
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(repeat):
        for name, run in candidates.items():
            started = clock()
            run()
            best[name] = min(best[name], clock() - started)
    return best


def synthetic_dicoms(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """`n` Kaggle-shaped JPEG-Baseline DICOMs of `size` px; returns their folder."""
    source = generate(root / "source", n_train=n, n_test=0, image_size=size, seed=seed)
    return source / TRAIN_IMAGES
