"""`pneumo run` and `pneumo demo`: the whole pipeline as a Prefect flow, on a server or Prefect's
temporary one.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from flows.cli.common import add_storage, bounded_int, config_int, non_negative_float
from pneumo_core.layout import TRAIN_LABELS

if TYPE_CHECKING:  # the flows import Prefect and torch: seconds, only when a run starts
    from flows.pipeline import PipelineResult


def cmd_run(args: argparse.Namespace) -> int:
    from flows.preflight import check_run
    from pneumo_core.config.run import parse_overrides

    overrides: dict[str, object] = dict(parse_overrides(args.set))
    if args.folds is not None:
        overrides["n_folds"] = args.folds
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    check_run(  # arguments, configuration, source and store, before Prefect starts
        source=args.source,
        storage=args.storage,
        preset_name=args.preset,
        overrides=overrides,
        run_id=args.run_id,
        folds=args.train_fold,
        fold_runner=args.fold_runner,
    )
    summary = _run_pipeline(
        args.whole_process,
        source=args.source,
        storage=args.storage,
        preset=args.preset,
        overrides=overrides,
        folds=args.train_fold or None,
        fold_runner=args.fold_runner,
        run_id=args.run_id,
        max_parallel_folds=args.max_parallel_folds,
        promotion_margin=args.promotion_margin,
    )
    _print_outputs(summary)
    return 0


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the whole pipeline as a Prefect flow: ingest to submission")
    p.add_argument("--source", required=True, help="kaggle://..., a .zip, a folder or s3://key.zip")
    add_storage(p)
    p.add_argument(
        "--preset", help="seed, default or ci (default: default; a resumed run keeps its own)"
    )
    p.add_argument("--folds", type=config_int("n_folds"), help="number of folds (config n_folds)")
    p.add_argument("--epochs", type=config_int("epochs"), help="epochs per fold (config epochs)")
    p.add_argument("--run-id", help="resume this run (or name a new one); default: a new run")
    p.add_argument("--fold-runner", choices=("local", "deployment"), default="local")
    p.add_argument(
        "--train-fold", type=bounded_int(0), action="append", metavar="K",
        help="train only this fold (repeatable); default: every fold",
    )  # fmt: skip
    p.add_argument(
        "--max-parallel-folds", type=config_int("execution.max_parallel_folds"),
        help="local runner: folds at once",
    )  # fmt: skip
    p.add_argument(
        "--promotion-margin", type=non_negative_float, default=0.0,
        help="OOF mAP a run must beat the champion by to replace it",
    )  # fmt: skip
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="config override, e.g. --set lr=1e-4 --set augment.rotation_deg=0",
    )  # fmt: skip
    p.set_defaults(handler=cmd_run)


def cmd_demo(args: argparse.Namespace) -> int:
    from pneumo_core.data.synthetic import generate

    out = args.out.resolve()
    data = out / "data"
    if not (data / TRAIN_LABELS).exists():
        print(f"generating a small Kaggle-shaped dataset in {data}")
        generate(data, n_train=DEMO_TRAIN, n_test=DEMO_TEST, image_size=DEMO_PIXELS)
    summary = _run_pipeline(
        args.whole_process,
        source=str(data),
        storage=(out / "store").as_uri(),
        preset="ci",
        overrides={},
    )
    _print_outputs(summary)
    return 0


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthesise a small dataset and run the whole pipeline on it")
    p.add_argument("--out", type=Path, default=Path("pneumo-demo"), help="data, store and outputs")
    p.set_defaults(handler=cmd_demo)


DEMO_TRAIN, DEMO_TEST, DEMO_PIXELS = 200, 24, 256


def _run_pipeline(whole_process: bool, **parameters: object) -> PipelineResult:
    """The pipeline flow on Prefect's ephemeral API, or the server PREFECT_API_URL names."""
    import os

    from flows.child_guard import guard_children
    from pneumo_core.storage import temporaries
    from pneumo_core.storage.local import LocalStore
    from pneumo_core.storage.open import open_store

    if whole_process:  # the command line's own process: its children end with it
        guard_children()
    store = open_store(str(parameters["storage"]))
    temporaries.sweep(store.root if isinstance(store, LocalStore) else store.cache_dir)
    # the ephemeral server's telemetry only adds "database is locked" noise on SQLite
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with _temporary_server_starting():
        from flows.pipeline import pipeline  # torch and the flows: seconds of imports

    return pipeline(**parameters)


@contextmanager
def _temporary_server_starting() -> Iterator[None]:
    """Without PREFECT_API_URL, start Prefect's temporary server (the one its client would
    start at the flow's first call) while the body runs, and wait until it answers: its
    start-up (5-10 s, most of Prefect's overhead on the demo) then overlaps our imports."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    starting = threading.Thread(target=SubprocessASGIServer().start, daemon=True)
    starting.start()
    try:
        yield
    finally:
        starting.join()  # the client's own start() returns at once while this one waits


def _print_outputs(result: PipelineResult) -> None:
    oof_map = "n/a (no image scored)" if result.oof_map is None else f"{result.oof_map:.4f}"
    print(f"run {result.run_id}: OOF mAP {oof_map} at score threshold {result.threshold}")
    print(f"promotion: {result.promotion}")
    print(f"submission: {result.submission}")
    print(f"report:     {result.report}")
    for plot in result.plots:
        print(f"plot:       {plot}")
