"""A stop request ends training in this process at its next batch, in every thread."""

from __future__ import annotations

import threading

import pytest
import torch

from pneumo_core.train.device import batches
from pneumo_core.train.stop import TrainingStopped, clear_stop, request_stop


def test_a_stop_request_ends_every_thread_at_its_next_batch() -> None:
    loader = torch.utils.data.DataLoader(list(range(1000)), batch_size=1)
    started, seen, errors = threading.Barrier(3), [0, 0], []

    def fold(k: int) -> None:
        try:
            for _ in batches(loader):
                if seen[k] == 0:
                    started.wait(timeout=30)
                seen[k] += 1
                if seen[k] == 5 and k == 0:
                    request_stop()
                threading.Event().wait(0.001)
        except TrainingStopped as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fold, args=(k,)) for k in (0, 1)]
    try:
        for thread in threads:
            thread.start()
        started.wait(timeout=30)
        for thread in threads:
            thread.join(timeout=30)
        assert len(errors) == 2 and max(seen) < 1000
    finally:
        clear_stop()
    assert sum(1 for _ in batches(loader)) == 1000  # cleared: training runs again


def test_stopping_is_a_clear_line() -> None:
    request_stop()
    try:
        with pytest.raises(TrainingStopped, match="resume the run"):
            next(batches(torch.utils.data.DataLoader([1, 2])))
    finally:
        clear_stop()
