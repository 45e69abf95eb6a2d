"""The `pneumo` command: thin argument parsing over pneumo_core and the flows.

Heavy modules (torch, prefect) are imported inside each command so that quick commands
such as `pneumo score` start fast.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from flows import operate_cli, weights_cli
from pneumo_core.errors import PneumoError, StorageError, TransientStorageError

Handler = Callable[[argparse.Namespace], int]
STORAGE_HELP = "object store: file://DIR, DIR or s3://bucket/prefix"


# --- commands -----------------------------------------------------------------------------
# Each command is `def cmd_<name>(args) -> int` plus an `add_<name>(sub)` that registers it.


def cmd_train_fold(args: argparse.Namespace) -> int:
    import json

    from pneumo_core import train
    from pneumo_core.config import parse_overrides, preset
    from pneumo_core.storage import open_store

    store = open_store(args.storage)
    if args.preset or args.set:
        config = preset(args.preset or "default", **parse_overrides(args.set))
        train.create_run(store, config, args.run)
    result = train.train_fold(store, args.run, args.fold)
    print(json.dumps(result, sort_keys=True))
    return 0


def add_train_fold(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-fold", help="train (or resume) one fold of a run")
    p.add_argument("--run", required=True, help="run id (runs/<id>/config.json in the store)")
    p.add_argument("--fold", required=True, type=int)
    p.add_argument("--storage", required=True, help=STORAGE_HELP)
    p.add_argument("--preset", help="create the run from this preset when it does not exist")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for a new run, e.g. --set epochs=3 --set augment.rotation_deg=0",
    )
    p.set_defaults(handler=cmd_train_fold, log_lines=True)


def cmd_predict(args: argparse.Namespace) -> int:
    if Path(args.out).is_dir():
        raise IsADirectoryError(errno.EISDIR, "--out is a folder, not a CSV file path", args.out)
    from pneumo_core.predict import predict_images
    from pneumo_core.storage import open_store

    out = predict_images(open_store(args.storage), args.run, args.images, args.out, args.overlays)
    print(out)
    return 0


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict DICOMs with a trained run -> submission CSV")
    p.add_argument("--run", required=True, help="run id")
    p.add_argument("--images", required=True, help="folder, one .dcm, or s3://bucket/prefix")
    p.add_argument("--out", required=True, help="submission CSV to write")
    p.add_argument("--storage", required=True, help=STORAGE_HELP)
    p.add_argument("--overlays", type=Path, help="also write PNGs with the boxes to this folder")
    p.set_defaults(handler=cmd_predict, log_lines=True)


def cmd_ingest(args: argparse.Namespace) -> int:
    from pneumo_core.kaggle import ingest
    from pneumo_core.storage import open_store

    store = open_store(args.storage)
    result = ingest(args.source, store, args.dataset)
    print(
        f"ingested {result.members} files ({result.bytes / 1e6:.1f} MB) into "
        f"raw/{result.dataset}/ of {store.uri}: {result.uploaded} uploaded, "
        f"{result.skipped} already there and intact; manifest digest {result.digest[:12]}"
    )
    return 0


def add_ingest(sub: argparse._SubParsersAction) -> None:
    from pneumo_core import DEFAULT_DATASET

    p = sub.add_parser("ingest", help="copy the competition archive into the store, verified")
    p.add_argument(
        "--source",
        required=True,
        help="kaggle://rsna-pneumonia-detection-challenge, a .zip, a folder, or s3://bucket/key.zip",
    )
    p.add_argument("--storage", required=True, help=STORAGE_HELP)
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="name under raw/ in the store")
    p.set_defaults(handler=cmd_ingest, log_lines=True)


def cmd_prepare(args: argparse.Namespace) -> int:
    from pneumo_core.prepare import prepare_dataset
    from pneumo_core.storage import open_store

    store = open_store(args.storage)
    r = prepare_dataset(store, args.dataset, args.image_size, args.folds, workers=args.workers)
    where = store.url(r.prefix.rstrip("/"))
    if r.reused:
        print(f"{where}: already prepared from the same manifest, size and folds; nothing to do")
    print(
        f"{where}: {r.n_train} train + {r.n_test} test images at {args.image_size}px, "
        f"{r.n_quarantined} quarantined (quarantine.csv), {r.missing_images} labelled patients "
        f"without an image, {r.unlabelled_images} train images without a labels row (ids in "
        f"summary.json); {r.images_per_second:.0f} images/s"
    )
    return 0


def add_prepare(sub: argparse._SubParsersAction) -> None:
    from pneumo_core import DEFAULT_DATASET

    p = sub.add_parser("prepare", help="decode, resize and cache the images; labels and folds")
    p.add_argument("--storage", required=True, help=STORAGE_HELP)
    p.add_argument("--image-size", type=int, default=512, help="cache size in px (square)")
    p.add_argument("--folds", type=int, default=4, help="number of stratified folds")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="name under raw/ in the store")
    p.add_argument("--workers", type=int, help="decoding processes (default: all cores)")
    p.set_defaults(handler=cmd_prepare, log_lines=True)


def cmd_score(args: argparse.Namespace) -> int:
    import json

    from pneumo_core.submission import score_submission

    result = score_submission(args.labels, args.submission, only_present=args.only_present)
    for warning in result["warnings"]:
        print(f"pneumo score: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        value = "n/a (no image scored)" if result["map"] is None else f"{result['map']:.4f}"
        missing = result["labelled_images_not_in_submission"]
        treated = "not scored" if args.only_present else "scored as no prediction"
        print(
            f"mAP {value} over {result['images_scored']} scored images "
            f"({result['images_in_submission']} in the submission; "
            f"{missing} labelled images not in it, {treated})"
        )
    return 0


def add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="competition mAP of a submission against a train labels file",
        description="Scores as Kaggle would: a labelled patient the submission leaves out "
        "counts as one with no prediction (with a warning; --only-present scores the "
        "submission's patients alone). A box past the image border is scored as given, with a "
        "warning; a submission patient without a labels row is an error.",
    )
    p.add_argument(
        "--labels", required=True, help="stage_2_train_labels.csv (class info not needed)"
    )
    p.add_argument("--submission", required=True, help="patientId,PredictionString CSV")
    p.add_argument("--json", action="store_true", help='one JSON object: {"map": ..., ...}')
    p.add_argument(
        "--only-present", action="store_true",
        help="score only the submission's patients (a subset on purpose)",
    )  # fmt: skip
    p.set_defaults(handler=cmd_score)


def cmd_check_submission(args: argparse.Namespace) -> int:
    from pneumo_core.submission import check_submission

    problems = check_submission(args.submission, args.sample)
    for problem in problems[:50]:
        print(f"{args.submission}: {problem}", file=sys.stderr)
    if len(problems) > 50:
        print(f"{args.submission}: ... and {len(problems) - 50} more", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.submission}: valid submission")
    return 0


def add_check_submission(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-submission",
        help="validate a Kaggle submission CSV (exit 0 valid, 1 invalid)",
    )
    p.add_argument("submission", help="patientId,PredictionString CSV")
    p.add_argument("--sample", help="sample submission: its patientIds must appear exactly once")
    p.set_defaults(handler=cmd_check_submission)


def cmd_synth(args: argparse.Namespace) -> int:
    from pneumo_core import synthetic

    target = synthetic.generate(
        args.out, args.n_train, args.n_test, args.image_size, args.seed, args.difficulty,
        args.zip, args.backgrounds,
    )  # fmt: skip
    print(
        f"{target}: {args.n_train} train + {args.n_test} test images at {args.image_size}px, "
        f"{args.difficulty}, seed {args.seed}"
        + (f", real backgrounds from {args.backgrounds}" if args.backgrounds else "")
    )
    print(f"test images' truth (not for ingest): {synthetic.hidden_truth_path(args.out)}")
    return 0


def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate a Kaggle-shaped synthetic dataset")
    p.add_argument("--out", required=True, help="folder to write into (archive names must be free)")
    p.add_argument("--n-train", type=int, default=200, help="train images (with labels)")
    p.add_argument("--n-test", type=int, default=50, help="test images (sample submission)")
    p.add_argument("--image-size", type=int, default=1024, help="square size in px")
    p.add_argument("--seed", type=int, default=0, help="same seed, same dataset")
    p.add_argument("--difficulty", choices=("easy", "hard"), default="easy")
    p.add_argument(
        "--zip", action="store_true", help="write rsna-pneumonia-detection-challenge.zip"
    )
    p.add_argument(
        "--backgrounds", type=Path, metavar="DIR",
        help="hard: your own radiographs (DICOMs) as backgrounds; default: drawn ones",
    )  # fmt: skip
    p.set_defaults(handler=cmd_synth)


def cmd_run(args: argparse.Namespace) -> int:
    from flows.preflight import check_run
    from pneumo_core.config import parse_overrides

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
        source=args.source,
        storage=args.storage,
        preset=args.preset or "default",
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
    p.add_argument("--storage", required=True, help=STORAGE_HELP)
    p.add_argument(
        "--preset", help="seed, default or ci (default: default; a resumed run keeps its own)"
    )
    p.add_argument("--folds", type=int, help="number of folds (config n_folds)")
    p.add_argument("--epochs", type=int, help="epochs per fold (config epochs)")
    p.add_argument("--run-id", help="resume this run (or name a new one); default: a new run")
    p.add_argument("--fold-runner", choices=("local", "deployment"), default="local")
    p.add_argument(
        "--train-fold", type=int, action="append", metavar="K",
        help="train only this fold (repeatable); default: every fold",
    )  # fmt: skip
    p.add_argument("--max-parallel-folds", type=int, help="local runner: folds at once")
    p.add_argument(
        "--promotion-margin", type=float, default=0.0,
        help="OOF mAP a run must beat the champion by to replace it",
    )  # fmt: skip
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="config override, e.g. --set lr=1e-4 --set augment.rotation_deg=0",
    )  # fmt: skip
    p.set_defaults(handler=cmd_run)


def cmd_demo(args: argparse.Namespace) -> int:
    from pneumo_core import synthetic

    out = args.out.resolve()
    data = out / "data"
    if not (data / "stage_2_train_labels.csv").exists():
        print(f"generating a small Kaggle-shaped dataset in {data}")
        synthetic.generate(data, n_train=DEMO_TRAIN, n_test=DEMO_TEST, image_size=DEMO_PIXELS)
    summary = _run_pipeline(
        source=str(data), storage=(out / "store").as_uri(), preset="ci", overrides={}
    )
    _print_outputs(summary)
    return 0


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthesise a small dataset and run the whole pipeline on it")
    p.add_argument("--out", type=Path, default=Path("pneumo-demo"), help="data, store and outputs")
    p.set_defaults(handler=cmd_demo)


DEMO_TRAIN, DEMO_TEST, DEMO_PIXELS = 200, 24, 256


def _run_pipeline(**parameters: object) -> dict:
    """The pipeline flow on Prefect's ephemeral API, or the server PREFECT_API_URL names."""
    import os

    from flows.child_guard import guard_children
    from pneumo_core import temporaries
    from pneumo_core.storage import LocalStore, open_store

    if _WHOLE_PROCESS:  # the command line's own process: its children end with it
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


def _print_outputs(summary: dict) -> None:
    oof_map = "n/a (no image scored)" if summary["oof_map"] is None else f"{summary['oof_map']:.4f}"
    print(f"run {summary['run_id']}: OOF mAP {oof_map} at score threshold {summary['threshold']}")
    print(f"promotion: {summary['promotion']}")
    print(f"submission: {summary['submission']}")
    print(f"report:     {summary['report']}")
    for plot in summary["plots"]:
        print(f"plot:       {plot}")


# --- parser ----------------------------------------------------------------------------------

ADDERS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_synth,
    add_train_fold,
    add_predict,
    add_ingest,
    add_prepare,
    add_score,
    add_check_submission,
    add_run,
    add_demo,
    operate_cli.add_submit,
    operate_cli.add_runs,
    operate_cli.add_champion,
    operate_cli.add_compare,
    weights_cli.add_weights,
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
        default=bool(os.environ.get(DEBUG_ENV)),
        help=f"show the traceback of an error (also: {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in ADDERS:
        add(sub)
    return parser


_WHOLE_PROCESS = False  # main() runs as the `pneumo` command, not inside a test or a caller


def main(argv: Sequence[str] | None = None) -> int:
    global _WHOLE_PROCESS
    _WHOLE_PROCESS = argv is None
    args = build_parser().parse_args(argv)
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
        if args.debug:
            raise
        print(f"pneumo {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, PneumoError) and not isinstance(exc, SYSTEM_ERRORS) else 1


DEBUG_ENV = "PNEUMO_DEBUG"
# The machine, not the user's input: the store or a disk (exit 1). InputError and the other
# PneumoErrors are the user's to fix (exit 2); anything unexpected is exit 1 too.
SYSTEM_ERRORS = (StorageError, TransientStorageError, OSError)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = " ".join(str(exc).split()) or "no message"
    if isinstance(exc, PneumoError):
        return text
    return f"{type(exc).__name__}: {text} (set {DEBUG_ENV}=1 or pass --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
