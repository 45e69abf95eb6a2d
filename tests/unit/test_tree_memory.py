"""The benchmarks' memory figure: anonymous memory of a process tree, sampled, file-backed
pages left out; measured on real processes."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

from bench.tree_memory import run_measured

MB = 1 << 20


def hold_anonymous(megabytes: int) -> int:
    block = np.ones(megabytes * MB, dtype=np.uint8)  # written, so resident
    time.sleep(1.0)
    return int(block[::4096].sum())


def read_mapped(path: str) -> int:
    mapped = np.load(path, mmap_mode="r")
    total = int(mapped[:, ::512].sum())  # every page read: resident, but file-backed
    time.sleep(1.0)
    return total


def worker_holds(megabytes: int) -> int:
    child = multiprocessing.get_context("fork").Process(target=hold_anonymous, args=(megabytes,))
    child.start()
    child.join()
    return child.exitcode


def fails() -> None:
    raise ValueError("on purpose")


def test_anonymous_memory_is_counted() -> None:
    value, usage = run_measured(hold_anonymous, 200, interval_s=0.05)
    assert value == 200 * MB // 4096
    assert usage.peak_anon_bytes > 200 * MB


def test_a_memory_mapped_file_is_not(tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    np.save(path, np.ones((200, MB), dtype=np.uint8))
    _, usage = run_measured(read_mapped, str(path), interval_s=0.05)
    assert usage.peak_anon_bytes < 150 * MB


def test_workers_count_with_their_process() -> None:
    exitcode, usage = run_measured(worker_holds, 200, interval_s=0.05)
    assert exitcode == 0
    assert usage.peak_anon_bytes > 200 * MB
    assert len(usage.peak_parts) == 2


def test_workers_start_as_they_would_in_the_caller() -> None:
    method, _ = run_measured(multiprocessing.get_start_method)
    assert method == multiprocessing.get_start_method()


def test_a_failure_is_raised_here() -> None:
    with pytest.raises(RuntimeError, match="ValueError: on purpose"):
        run_measured(fails)
