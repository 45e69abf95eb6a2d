"""What every `pneumo` command shares: the handler type, the `--storage` argument, and the
argparse types that refuse an out-of-range count or size while parsing, naming the flag."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int]
STORAGE_HELP = "object store: file://DIR, DIR or s3://bucket/prefix"


def add_storage(parser: argparse.ArgumentParser) -> None:
    """The `--storage` argument, required by every command that reads or writes the store."""
    parser.add_argument("--storage", required=True, help=STORAGE_HELP)


def bounded_int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse `type`: an integer within lo..hi (hi None: no upper bound). argparse puts
    the flag in front of the message: `argument --workers: must be at least 1, got 0`."""

    def parse(text: str) -> int:
        value = int(text)  # ValueError: argparse says "invalid int value: 'x'"
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {value}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi}, got {value}")
        return value

    parse.__name__ = "int"  # the word argparse uses for a value that is not a number
    return parse


positive_int = bounded_int(1)
"""A count of at least one (workers, folds at once)."""


def deferred_int(bounds: Callable[[], tuple[int, int | None]]) -> Callable[[str], int]:
    """`bounded_int` with bounds looked up only when the flag is given: every command's parser
    is built at start-up, and the module that holds the bounds may be slow to import."""

    def parse(text: str) -> int:
        return bounded_int(*bounds())(text)

    parse.__name__ = "int"
    return parse


def field_int(model: Any, name: str) -> Callable[[str], int]:
    """`bounded_int` with the bounds of a pydantic model's integer field (its ge/gt/le/lt),
    so a flag that sets a configuration field refuses what the configuration would."""
    lo, hi = -(2**63), None
    for bound in model.model_fields[name].metadata:
        if (ge := getattr(bound, "ge", None)) is not None:
            lo = max(lo, ge)
        if (gt := getattr(bound, "gt", None)) is not None:
            lo = max(lo, gt + 1)
        if (le := getattr(bound, "le", None)) is not None:
            hi = le if hi is None else min(hi, le)
        if (lt := getattr(bound, "lt", None)) is not None:
            hi = lt - 1 if hi is None else min(hi, lt - 1)
    return bounded_int(lo, hi)


def config_int(path: str) -> Callable[[str], int]:
    """`field_int` for a run configuration field (`epochs`, `execution.max_parallel_folds`),
    its bounds looked up only when the flag is given (the configuration imports pydantic)."""

    def parse(text: str) -> int:
        from pneumo_core.config.execution import ExecutionConfig
        from pneumo_core.config.run import RunConfig

        section, _, name = path.rpartition(".")
        return field_int(ExecutionConfig if section else RunConfig, name)(text)

    parse.__name__ = "int"
    return parse


def non_negative_float(text: str) -> float:
    """An argparse `type`: a finite number >= 0 (a margin, a time)."""
    value = float(text)  # ValueError: argparse says "invalid float value: 'x'"
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


non_negative_float.__name__ = "float"
