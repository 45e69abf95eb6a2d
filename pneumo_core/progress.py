"""Progress for long library loops: a bar for a person at a terminal, log lines for a worker.

Workers (Prefect, Docker, CI) have no terminal, and a redrawn bar turns their logs into
noise, so there a few `logging` lines (every tenth of the way) say how far the loop is.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

Advance = Callable[[int], None]


@contextmanager
def progress_reporter(
    description: str, total: int, *, bar: bool | None = None
) -> Iterator[Advance]:
    """Yield `advance(amount)`; `bar=None` draws a bar only when stderr is a terminal."""
    if bar is None:
        bar = sys.stderr.isatty()
    if bar:
        with _rich_bar(description, total) as advance:
            yield advance
        return
    yield _log_lines(description, total)


@contextmanager
def _rich_bar(description: str, total: int) -> Iterator[Advance]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:  # stdout stays for results
        task = bar.add_task(description, total=total)
        yield lambda amount: bar.advance(task, amount)


def _log_lines(description: str, total: int) -> Advance:
    done = 0
    next_tenth = 1

    def advance(amount: int) -> None:
        nonlocal done, next_tenth
        done += amount
        if total <= 0:
            return
        tenth = min(10, int(10 * done / total))
        if tenth >= next_tenth:
            log.info("%s: %d%% (%d/%d)", description, 10 * tenth, done, total)
            next_tenth = tenth + 1

    return advance
