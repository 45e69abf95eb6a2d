"""Day-to-day commands of `pneumo`: submit a run to Kaggle, list runs, the champion, compare.

Registered in flows/cli.py's ADDERS; each is `cmd_<name>(args) -> int` plus `add_<name>(sub)`,
with heavy imports inside the command.
"""

from __future__ import annotations

import argparse


def cmd_submit(args: argparse.Namespace) -> int:
    from pneumo_core.kaggle_submit import submit_run
    from pneumo_core.storage import open_store

    record = submit_run(open_store(args.storage), args.run, args.message, args.competition)
    print(
        f"submitted {record.file} (sha256 {record.sha256[:12]}) to {record.competition} as "
        f"submission {record.ref}: {record.answer}"
    )
    print(f"message: {record.message}")
    return 0


def add_submit(sub: argparse._SubParsersAction) -> None:
    from flows.cli import STORAGE_HELP
    from pneumo_core.kaggle_submit import COMPETITION, RECORD_NAME

    p = sub.add_parser(
        "submit",
        help="check a run's submission.csv and submit it to the Kaggle competition",
        description="Checks runs/<id>/submission.csv against the competition's sample "
        "submission, uploads it with the Kaggle API (KAGGLE_USERNAME/KAGGLE_KEY or "
        f"~/.kaggle/kaggle.json) and records the answer in runs/<id>/{RECORD_NAME}.",
    )
    p.add_argument("--run", required=True, help="run id")
    p.add_argument("--message", help="submission description (default: run id, OOF mAP, hash)")
    p.add_argument("--storage", required=True, help=STORAGE_HELP)
    p.add_argument("--competition", default=COMPETITION, help="Kaggle competition slug")
    p.set_defaults(handler=cmd_submit, log_lines=True)
