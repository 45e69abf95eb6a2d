"""The `pneumo` command: thin argument parsing over pneumo_core and the flows.

Heavy modules (torch, prefect) are imported inside each command so that quick commands
such as `pneumo score` start fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from flows.cli import data, model, operate, pipeline, weights
from flows.cli.common import Handler
from pneumo_core.errors import NetworkError, PneumoError, StorageError, TransientStorageError

ADDERS: list[Callable[[argparse._SubParsersAction], None]] = [
    data.add_synth,
    model.add_train_fold,
    model.add_predict,
    data.add_ingest,
    data.add_prepare,
    data.add_score,
    data.add_check_submission,
    pipeline.add_run,
    pipeline.add_demo,
    operate.add_submit,
    operate.add_runs,
    operate.add_champion,
    operate.add_compare,
    weights.add_weights,
]


class _OneLineErrors(argparse.ArgumentParser):
    """A usage error is one line (argparse prints the whole usage first), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(
        prog="pneumo", description="Train and apply an RSNA pneumonia detector, on Prefect."
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the traceback of an error (also: {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in ADDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # main() runs as the `pneumo` command, not inside a test or a caller
    args.whole_process = argv is None
    if getattr(args, "log_lines", False):
        # the core reports progress through logging; Prefect commands bring their own logging
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(f"pneumo {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug or _debug_from_env():
            raise
        print(f"pneumo {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return exit_code(exc)


DEBUG_ENV = "PNEUMO_DEBUG"
# The machine or the network, not the user's input: the store, a disk, a remote service
# (exit 1). InputError and the other PneumoErrors are the user's to fix (exit 2); anything
# unexpected is exit 1 too.
SYSTEM_ERRORS = (StorageError, TransientStorageError, NetworkError, OSError)


def exit_code(exc: BaseException) -> int:
    """2 for the user's errors, 1 for the machine's and the network's. A PneumoError marked
    `transient` (a later try may succeed: Kaggle unreachable or failing on its side) is the
    network's."""
    if not isinstance(exc, PneumoError) or isinstance(exc, SYSTEM_ERRORS):
        return 1
    return 1 if getattr(exc, "transient", False) else 2


def _debug_from_env() -> bool:
    """PNEUMO_DEBUG, read only once an error is caught: the settings (pydantic) stay out of
    the start-up of every command."""
    from pneumo_core.settings import settings

    try:
        return settings().debug
    except PneumoError:  # another PNEUMO_* variable is bad: that is the error shown
        return False


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = " ".join(str(exc).split()) or "no message"
    if isinstance(exc, PneumoError):
        return text
    return f"{type(exc).__name__}: {text} (set {DEBUG_ENV}=1 or pass --debug for the traceback)"
