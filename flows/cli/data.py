"""`pneumo synth`, `ingest`, `prepare`, `score` and `check-submission`: the data and the submission
files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from flows.cli.common import add_storage, deferred_int, field_int, positive_int


def cmd_ingest(args: argparse.Namespace) -> int:
    from pneumo_core.data.ingest import ingest
    from pneumo_core.storage.open import open_store

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
    add_storage(p)
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="name under raw/ in the store")
    p.set_defaults(handler=cmd_ingest, log_lines=True)


def cmd_prepare(args: argparse.Namespace) -> int:
    from pneumo_core.data.prepare import prepare_dataset
    from pneumo_core.storage.open import open_store

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
    from pneumo_core.config.cache import CacheSpec

    spec = CacheSpec.model_fields
    p = sub.add_parser("prepare", help="decode, resize and cache the images; labels and folds")
    add_storage(p)
    p.add_argument(
        "--image-size", type=field_int(CacheSpec, "image_size"),
        default=spec["image_size"].default, help="cache size in px (square)",
    )  # fmt: skip
    p.add_argument(
        "--folds", type=field_int(CacheSpec, "n_folds"), default=spec["n_folds"].default,
        help="number of stratified folds",
    )  # fmt: skip
    p.add_argument(
        "--dataset", default=spec["dataset"].default, help="name under raw/ in the store"
    )
    p.add_argument("--workers", type=positive_int, help="decoding processes (default: all cores)")
    p.set_defaults(handler=cmd_prepare, log_lines=True)


def cmd_score(args: argparse.Namespace) -> int:
    import json

    from pneumo_core.evaluation.submission import score_submission

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
    from pneumo_core.errors import InputError
    from pneumo_core.evaluation.submission import check_submission

    # a file that is not there is a wrong argument (exit 2), not an invalid submission (exit 1)
    for flag, path in (("submission", args.submission), ("--sample", args.sample)):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{flag} {path}: no such file")
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
        help="validate a Kaggle submission CSV (exit 0 valid, 1 invalid, 2 no such file)",
    )
    p.add_argument("submission", help="patientId,PredictionString CSV")
    p.add_argument("--sample", help="sample submission: its patientIds must appear exactly once")
    p.set_defaults(handler=cmd_check_submission)


def cmd_synth(args: argparse.Namespace) -> int:
    from pneumo_core.data.synthetic import generate, hidden_truth_path

    target = generate(
        args.out, args.n_train, args.n_test, args.image_size, args.seed, args.difficulty,
        args.zip, args.backgrounds,
    )  # fmt: skip
    print(
        f"{target}: {args.n_train} train + {args.n_test} test images at {args.image_size}px, "
        f"{args.difficulty}, seed {args.seed}"
        + (f", real backgrounds from {args.backgrounds}" if args.backgrounds else "")
    )
    print(f"test images' truth (not for ingest): {hidden_truth_path(args.out)}")
    return 0


def _synth_int(name: str) -> Callable[[str], int]:
    """The bounds `synthetic.generate` holds its argument `name` to; the module (OpenCV,
    pydicom: half a second) is imported only when synth's flag is parsed."""

    def bounds() -> tuple[int, int]:
        from pneumo_core.data.synthetic import BOUNDS

        return BOUNDS[name]

    return deferred_int(bounds)


def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate a Kaggle-shaped synthetic dataset")
    p.add_argument("--out", required=True, help="folder to write into (archive names must be free)")
    p.add_argument(
        "--n-train", type=_synth_int("n_train"), default=200, help="train images (with labels)"
    )
    p.add_argument(
        "--n-test", type=_synth_int("n_test"), default=50, help="test images (sample submission)"
    )
    p.add_argument(
        "--image-size", type=_synth_int("image_size"), default=1024, help="square size in px"
    )
    p.add_argument("--seed", type=_synth_int("seed"), default=0, help="same seed, same dataset")
    p.add_argument("--difficulty", choices=("easy", "hard"), default="easy")
    p.add_argument(
        "--zip", action="store_true", help="write rsna-pneumonia-detection-challenge.zip"
    )
    p.add_argument(
        "--backgrounds", type=Path, metavar="DIR",
        help="hard: your own radiographs (DICOMs) as backgrounds; default: drawn ones",
    )  # fmt: skip
    p.set_defaults(handler=cmd_synth)
