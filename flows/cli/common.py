"""What every `pneumo` command shares: the handler type and the `--storage` argument."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]
STORAGE_HELP = "object store: file://DIR, DIR or s3://bucket/prefix"


def add_storage(parser: argparse.ArgumentParser) -> None:
    """The `--storage` argument, required by every command that reads or writes the store."""
    parser.add_argument("--storage", required=True, help=STORAGE_HELP)
