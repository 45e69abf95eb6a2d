"""The `pneumo` command: thin argument parsing over pneumo_core and the flows.

Heavy modules (torch, prefect) are imported inside each command so that quick commands
such as `pneumo score` start fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pneumo_core.errors import PneumoError

Handler = Callable[[argparse.Namespace], int]


# --- commands -----------------------------------------------------------------------------
# Each command is `def cmd_<name>(args) -> int` plus an `add_<name>(sub)` that registers it.


# --- parser ----------------------------------------------------------------------------------

ADDERS: list[Callable[[argparse._SubParsersAction], None]] = []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumo", description="Train and apply an RSNA pneumonia detector, on Prefect."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in ADDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except PneumoError as exc:
        print(f"pneumo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pneumo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
