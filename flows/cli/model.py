"""`pneumo train-fold` and `pneumo predict`: one fold of a run, and a run's model applied to
images.
"""

from __future__ import annotations

import argparse
import errno
from pathlib import Path

from flows.cli.common import add_storage


def cmd_train_fold(args: argparse.Namespace) -> int:
    import json

    from pneumo_core.config.run import parse_overrides, preset
    from pneumo_core.runs.run import create_run
    from pneumo_core.storage.open import open_store
    from pneumo_core.train.fold import train_fold

    store = open_store(args.storage)
    if args.preset or args.set:
        config = preset(args.preset or "default", **parse_overrides(args.set))
        create_run(store, config, args.run)
    result = train_fold(store, args.run, args.fold)
    print(json.dumps(result.to_json(), sort_keys=True))
    return 0


def add_train_fold(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-fold", help="train (or resume) one fold of a run")
    p.add_argument("--run", required=True, help="run id (runs/<id>/config.json in the store)")
    p.add_argument("--fold", required=True, type=int)
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
    if Path(args.out).is_dir():
        raise IsADirectoryError(errno.EISDIR, "--out is a folder, not a CSV file path", args.out)
    from pneumo_core.model.predict import predict_images
    from pneumo_core.storage.open import open_store

    out = predict_images(open_store(args.storage), args.run, args.images, args.out, args.overlays)
    print(out)
    return 0


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict DICOMs with a trained run -> submission CSV")
    p.add_argument("--run", required=True, help="run id")
    p.add_argument("--images", required=True, help="folder, one .dcm, or s3://bucket/prefix")
    p.add_argument("--out", required=True, help="submission CSV to write")
    add_storage(p)
    p.add_argument("--overlays", type=Path, help="also write PNGs with the boxes to this folder")
    p.set_defaults(handler=cmd_predict, log_lines=True)
