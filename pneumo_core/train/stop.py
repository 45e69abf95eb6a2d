"""A request that every fold training in this process stop at its next batch.

A terminated `pneumo run` must exit within seconds and leave a resumable run: folds train in
threads that a signal cannot interrupt, so the flow sets this request and each fold raises
`TrainingStopped` before its next batch. Its last finished epoch stays in checkpoint-last,
where a resume continues.
"""

from __future__ import annotations

import threading

from pneumo_core.errors import PneumoError

_REQUESTED = threading.Event()


class TrainingStopped(PneumoError):
    """Training stopped on request; a retry would stop again (the run resumes instead)."""


def request_stop() -> None:
    _REQUESTED.set()


def clear_stop() -> None:
    """Before training starts: an earlier request in this process no longer applies."""
    _REQUESTED.clear()


def check_stop() -> None:
    if _REQUESTED.is_set():
        raise TrainingStopped(
            "training stopped on request; resume the run to continue from its last epoch"
        )
