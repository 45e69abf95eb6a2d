"""`pneumo train-fold` and `pneumo predict`: one fold of a run, and a run's model applied to
images.

Both import torch (seconds), so their arguments are checked first: the run in the store, the
fold, the images and the output path; a wrong one answers at once, in one line.
"""

from __future__ import annotations

import argparse
import errno
from pathlib import Path
from typing import TYPE_CHECKING

from flows.cli.common import add_storage, bounded_int

if TYPE_CHECKING:
    from pneumo_core.storage.base import ObjectStore


def cmd_train_fold(args: argparse.Namespace) -> int:
    import json

    from flows.preflight import check_folds
    from pneumo_core.config.run import parse_overrides, preset
    from pneumo_core.runs.run import Run, create_run
    from pneumo_core.storage.open import open_store

    store = open_store(args.storage)
    run = Run(store, args.run)
    if args.preset or args.set:
        config = preset(args.preset or "default", **parse_overrides(args.set))
        check_folds([args.fold], config.n_folds)  # before the run is written
        create_run(store, config, args.run)
    check_folds([args.fold], run.config().n_folds)  # an unknown run: InputError, no torch yet
    from pneumo_core.train.fold import train_fold

    result = train_fold(store, args.run, args.fold)
    print(json.dumps(result.to_json(), sort_keys=True))
    return 0


def add_train_fold(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-fold", help="train (or resume) one fold of a run")
    p.add_argument("--run", required=True, help="run id (runs/<id>/config.json in the store)")
    p.add_argument("--fold", required=True, type=bounded_int(0), help="fold index, from 0")
    add_storage(p)
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
    from pneumo_core.errors import InputError
    from pneumo_core.storage.open import open_store

    if Path(args.out).is_dir():
        raise IsADirectoryError(errno.EISDIR, "--out is a folder, not a CSV file path", args.out)
    if "://" not in args.images and not Path(args.images).exists():
        raise InputError(f"--images {args.images}: no such file or folder")
    store = open_store(args.storage)
    _check_trained(store, args.run)
    from pneumo_core.model.predict import predict_images  # torch: seconds

    print(predict_images(store, args.run, args.images, args.out, args.overlays))
    return 0


def _check_trained(store: ObjectStore, run_id: str) -> None:
    """The run is configured and a fold of it has a checkpoint: InputError otherwise."""
    from pneumo_core.errors import InputError
    from pneumo_core.layout import CHECKPOINT_BEST, CHECKPOINT_LAST
    from pneumo_core.runs.run import Run

    run = Run(store, run_id)
    n_folds = run.config().n_folds  # an unknown run: InputError naming its config.json
    names = (CHECKPOINT_BEST, CHECKPOINT_LAST)
    checkpoints = {run.fold_key(k, name) for k in range(n_folds) for name in names}
    if not checkpoints & set(store.list(run.prefix)):
        raise InputError(f"run {run_id}: no fold has a checkpoint yet; train it first")


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict DICOMs with a trained run -> submission CSV")
    p.add_argument("--run", required=True, help="run id")
    p.add_argument("--images", required=True, help="folder, one .dcm, or s3://bucket/prefix")
    p.add_argument("--out", required=True, help="submission CSV to write")
    add_storage(p)
    p.add_argument("--overlays", type=Path, help="also write PNGs with the boxes to this folder")
    p.set_defaults(handler=cmd_predict, log_lines=True)
