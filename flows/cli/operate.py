"""Day-to-day commands of `pneumo`: submit a run to Kaggle, list runs, the champion, compare.

Registered in flows/cli/main.py's ADDERS; each is `cmd_<name>(args) -> int` plus `add_<name>(sub)`,
with heavy imports inside the command.
"""

from __future__ import annotations

import argparse

from flows.cli.common import add_storage
from pneumo_core.reports.markdown import cell

_TABLE_WIDTH = 10_000  # never wrap or cut a table to the terminal: run ids stay whole


def cmd_submit(args: argparse.Namespace) -> int:
    from pneumo_core.runs.kaggle_submit import submit_run
    from pneumo_core.storage.open import open_existing_store

    record = submit_run(open_existing_store(args.storage), args.run, args.message, args.competition)
    print(
        f"submitted {record.file} (sha256 {record.sha256[:12]}) to {record.competition} as "
        f"submission {record.ref}: {record.answer}"
    )
    print(f"message: {record.message}")
    return 0


def add_submit(sub: argparse._SubParsersAction) -> None:
    from pneumo_core.layout import KAGGLE_SUBMISSIONS
    from pneumo_core.runs.kaggle_submit import COMPETITION

    p = sub.add_parser(
        "submit",
        help="check a run's submission.csv and submit it to the Kaggle competition",
        description="Checks runs/<id>/submission.csv against the competition's sample "
        "submission, uploads it with the Kaggle API (KAGGLE_USERNAME/KAGGLE_KEY or "
        f"~/.kaggle/kaggle.json) and records the answer in runs/<id>/{KAGGLE_SUBMISSIONS}.",
    )
    p.add_argument("--run", required=True, help="run id")
    p.add_argument("--message", help="your note; the run id, OOF mAP and config hash follow it")
    add_storage(p)
    p.add_argument("--competition", default=COMPETITION, help="Kaggle competition slug")
    p.set_defaults(handler=cmd_submit, log_lines=True)


def cmd_runs(args: argparse.Namespace) -> int:
    import json

    from pneumo_core.runs.catalog import list_runs
    from pneumo_core.storage.open import open_existing_store

    store = open_existing_store(args.storage)
    if args.links:
        return _print_links(store, args.links)
    runs = list_runs(store)
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=2))
        return 0
    rows = [
        (
            "*" if r.champion else "",
            r.run_id,
            (r.created or "–")[:19].replace("T", " "),
            "damaged" if r.damaged else r.preset or "–",
            f"{r.folds_trained}/{r.n_folds if r.n_folds is not None else '?'}",
            cell(r.oof_map),
            cell(r.test_images),
            f"yes ({r.submitted})" if r.submitted else "no",
        )
        for r in runs
    ]
    header = ("", "run", "created (UTC)", "preset", "folds", "OOF mAP", "test", "submitted")
    _print_table(header, rows)
    if not runs:
        print(f"no runs in {store.uri}")
    else:
        print("* champion; OOF mAP: out-of-fold, each image scored by models that never saw it")
    for r in runs:
        if r.damaged:
            print(f"damaged: run {r.run_id}: {r.damaged}")
    return 0


def add_runs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list the runs in a store, newest first")
    add_storage(p)
    p.add_argument("--json", action="store_true", help="one JSON list of run records")
    p.add_argument("--links", metavar="RUN_ID", help="print fresh links to this run's outputs")
    p.set_defaults(handler=cmd_runs)


def cmd_champion(args: argparse.Namespace) -> int:
    import json

    from pneumo_core.runs.catalog import champion_record
    from pneumo_core.storage.open import open_existing_store

    record = champion_record(open_existing_store(args.storage))
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
        return 0
    print(
        f"champion: run {record['run_id']}, OOF mAP {cell(record.get('oof_map'))}, "
        f"config {str(record.get('config_hash'))[:12]}, promoted {record.get('created')}"
    )
    print(f"why: {record.get('reason') or 'not recorded (promoted by an older pneumo)'}")
    return 0


def add_champion(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("champion", help="the champion run and the reason it won")
    add_storage(p)
    p.add_argument("--json", action="store_true", help="models/champion.json as stored")
    p.set_defaults(handler=cmd_champion)


def cmd_compare(args: argparse.Namespace) -> int:
    import json

    from pneumo_core.runs.catalog import compare_runs
    from pneumo_core.storage.open import open_existing_store

    store = open_existing_store(args.storage)
    comparison = compare_runs(store, args.run_a, args.run_b)
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2))
        return 0
    a, b = args.run_a, args.run_b
    print("configuration fields that differ:")
    rows = [(r["field"], _setting(r[a]), _setting(r[b])) for r in comparison.config_rows]
    if rows:
        _print_table(("field", a, b), rows)
    else:
        print("(none)")
    print("\nfigures:")
    rows = [(r["figure"], cell(r[a]), cell(r[b])) for r in comparison.figure_rows]
    _print_table(("figure", a, b), rows)
    if args.links:
        for run_id in (a, b):
            print()
            _print_links(store, run_id)
    return 0


def add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="two runs side by side: config differences, figures")
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    add_storage(p)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--links", action="store_true", help="also print fresh links to both runs")
    p.set_defaults(handler=cmd_compare)


def _print_links(store: object, run_id: str) -> int:
    from pneumo_core.runs.links import run_links

    links = run_links(store, run_id)  # type: ignore[arg-type]  # unknown run: InputError
    if not links:
        print(f"run {run_id}: no outputs in {store.uri}")  # type: ignore[attr-defined]
    for name, link in links.items():
        print(f"{run_id}/{name}: {link.url}  ({link.note()})")
    return 0


def _setting(value: object) -> str:
    """A configuration value as set, unrounded (a learning rate of 1e-05 is not 0.0000)."""
    return "–" if value is None else str(value)


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Columns two spaces apart under a header line, without borders: easy to grep."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(*header, box=None, pad_edge=False)
    for row in rows:
        table.add_row(*(Text(value) for value in row))  # Text: no markup in values
    Console(width=_TABLE_WIDTH).print(table)
