"""Seed recipe vs default recipe (and a naive one) on the same synthetic data and CPU budget.

Every recipe trains the same folds of the same prepared cache for the same number of epochs
with the same small backbone (ResNet-18-FPN standing in for ResNet-50 on a CPU), from random
weights (`pretrained=false`: the comparison is about the recipes, not the weights), both folds
at once as the pipeline's local runner trains them on CPU; then `evaluate` scores its
out-of-fold predictions (post-processing cross-fitted), and the fold ensemble predicts the
generated test images, scored against their hidden truth (data the run never saw), as does
each fold's model alone (the model an out-of-fold prediction comes from). Each data
seed is its own data set; a fold whose best validation mAP is below half its siblings' median
is flagged "weak", as the run report does. Prints a table and the command that reproduces it.

    .venv/bin/python -m bench.compare_presets            # hard data: seed vs default, naive
    .venv/bin/python -m bench.compare_presets --recipes seed,default --epochs 6
    .venv/bin/python -m bench.compare_presets --recipes default --seeds 0,1,2 \
        --backgrounds DIR --set lr=1e-4   # DIR: real DICOMs, e.g. stage_2_train_images/
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from bench.demo_training import train_folds
from pneumo_core.config.run import RunConfig, parse_overrides, preset
from pneumo_core.data.ingest import ingest
from pneumo_core.data.prepare import prepare_dataset
from pneumo_core.data.synthetic import generate, hidden_truth_path
from pneumo_core.evaluation import evaluate
from pneumo_core.evaluation.submission import score_submission
from pneumo_core.layout import TRAIN_LABELS, fold_key
from pneumo_core.model import predict
from pneumo_core.reports import report
from pneumo_core.runs.run import create_run
from pneumo_core.storage.open import open_store

# "Naive": small backbone from random weights, plain Adam at its default rate, flips only,
# no warm-up, schedule, clipping, TTA, box fusion or shrinking. Its score threshold and max
# boxes are tuned on the out-of-fold predictions like every scored recipe here, so a low score
# means it did not learn, not that a fixed threshold hid what it learned.
NAIVE = {
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "warmup_epochs": 0.0,
    "scheduler": "plateau",
    "grad_clip": None,
    "box_loss": "l1",
    "head_groupnorm": False,
    "tta_hflip": False,
    "augment.scale": 0.0,
    "augment.rotation_deg": 0.0,
    "augment.shear_deg": 0.0,
    "augment.shift": 0.0,
    "augment.gamma": 0.0,
    "augment.blur_p": 0.0,
    "augment.noise_p": 0.0,
    "augment.salt_pepper_p": 0.0,
    "postprocess.fusion": "nms",
    "postprocess.tune": True,
    "postprocess.tune_shrink": False,
}
# name -> (difficulty, preset, recipe overrides)
RECIPES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "seed": ("hard", "seed", {}),
    "default": ("hard", "default", {}),
    "naive-hard": ("hard", "default", NAIVE),
    "naive-easy": ("easy", "default", NAIVE),
    "seed-easy": ("easy", "seed", {}),
    "default-easy": ("easy", "default", {}),
    # default + the image-level head whose P(opacity) gates box scores (tuned out of fold)
    "gate": ("hard", "default", {"image_head_weight": 0.1}),
}
DEFAULT_RECIPES = ("seed", "default", "naive-hard", "naive-easy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/pneumo-bench-presets"))
    parser.add_argument(
        "--recipes", default=",".join(DEFAULT_RECIPES), help=f"comma-separated, of {list(RECIPES)}"
    )
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=100, help="test images, scored at the end")
    parser.add_argument("--dicom-size", type=int, default=512, help="synthetic DICOM size")
    parser.add_argument("--image-size", type=int, default=192, help="training size")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--backbone", default="resnet18", help="stands in for resnet50")
    parser.add_argument("--fpn-channels", type=int, default=64)
    parser.add_argument("--seeds", default="0", help="synthetic data seeds, comma-separated")
    parser.add_argument(
        "--backgrounds", type=Path, help="real DICOMs as hard backgrounds (default: drawn)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="on every recipe"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; choose from {sorted(RECIPES)}")

    budget = {
        "backbone": args.backbone,
        "pretrained": False,
        "fpn_channels": args.fpn_channels,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "n_folds": args.folds,
        "num_workers": 0,
        "device": "cpu",
        "max_parallel_folds": args.folds,
    }
    extra = parse_overrides(args.set)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in names:
            difficulty, preset_name, recipe = RECIPES[name]
            source, store = _dataset(args, difficulty, seed)
            config = preset(preset_name, **{**budget, **recipe, **extra})
            row = _train_and_score(store, source, name, difficulty, config)
            rows.append(row | {"seed": seed, "set": extra})
            print(_row(rows[-1]), flush=True)

    print()
    print(_table(rows))
    print()
    print("reproduce:", shlex.join([sys.executable, "-m", "bench.compare_presets", *sys.argv[1:]]))
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    return 0


def _dataset(args: argparse.Namespace, difficulty: str, seed: int) -> tuple[Path, Any]:
    """Synthesise, ingest and prepare once per difficulty and seed; later calls reuse it."""
    real = "-real" if args.backgrounds and difficulty == "hard" else ""
    name = f"{difficulty}{real}-n{args.n_train}-t{args.n_test}-px{args.dicom_size}-seed{seed}"
    source = args.out / name / "data" / "source"  # the hidden test truth goes beside it
    if not (source / TRAIN_LABELS).exists():
        generate(
            source, args.n_train, args.n_test, args.dicom_size, seed=seed, difficulty=difficulty,
            backgrounds=args.backgrounds if difficulty == "hard" else None,
        )  # fmt: skip
    store = open_store(str(args.out / name / "store"))
    ingest(str(source), store, progress=False)
    prepare_dataset(store, image_size=args.image_size, n_folds=args.folds, workers=1)
    return source, store


def _train_and_score(
    store, source: Path, name: str, difficulty: str, config: RunConfig
) -> dict[str, Any]:
    run_id = f"{name}-{config.config_hash()}"
    create_run(store, config, run_id)
    folds = train_folds(store, run_id, config)
    result = evaluate.evaluate_run(store, run_id)
    submission = source.parent / f"{run_id}-submission.csv"
    truth = hidden_truth_path(source)
    predict.predict_test_set(store, run_id, submission)
    test = score_submission(truth, submission)
    # Each fold's model alone on the test images: what the out-of-fold figure estimates (each
    # OOF prediction comes from one fold's model), against the ensemble the submission uses.
    alone = []
    for fold in range(config.n_folds):
        one = source.parent / f"{run_id}-fold-{fold}-submission.csv"
        predict.predict_test_set(store, run_id, one, folds=[fold])
        alone.append(score_submission(truth, one)["map"])
    flags = report.flag_weak_folds([{"best_val_map": f.best_val_map} for f in folds])
    # Training time from the metrics, so a re-run that reuses finished folds reports it too.
    seconds = sum(
        json.loads(line)["train_seconds"]
        for k in range(config.n_folds)
        for line in store.get_text(fold_key(run_id, k, "metrics.jsonl")).splitlines()
    )
    return {
        "recipe": name,
        "data": difficulty,
        "preset": config.preset,
        "oof_map": result.oof_map,  # cross-fitted post-processing
        "oof_map_se": result.oof_map_se,
        "oof_map_in_sample": result.oof_map_in_sample,
        "test_map": test["map"],
        "test_map_per_fold_model": alone,
        # What the recipe's predictions would score at their best threshold, tuned or not.
        "oof_map_any_threshold": max(
            (c.map for c in result.curve if c.map is not None), default=None
        ),
        "per_fold": [f.map for f in result.per_fold],
        "best_val_map": [round(f.best_val_map, 4) for f in folds],
        "weak_folds": [k for k, row in enumerate(flags) if row["flag"]],
        "threshold": result.threshold,
        "has_box_precision": result.has_box["precision"],
        "has_box_recall": result.has_box["recall"],
        "train_minutes": round(seconds / 60, 1),
        "run": store.url(f"runs/{run_id}/config.json").rsplit("/", 1)[0],
    }


def _row(r: dict[str, Any]) -> str:
    def cell(value: float | None) -> str:
        return "nan" if value is None else f"{value:.4f}"

    def per_fold(values: list[float | None]) -> str:
        return " ".join("-" if m is None else f"{m:.3f}" for m in values)

    folds, alone = per_fold(r["per_fold"]), per_fold(r["test_map_per_fold_model"])
    val = per_fold(r["best_val_map"])
    weak = ",".join(map(str, r["weak_folds"])) or "-"
    return (
        f"| {r['recipe']:<12} | {r['data']:<4} | {r['seed']:>4} | {cell(r['oof_map']):>7} "
        f"| {cell(r['oof_map_se']):>6} | {cell(r['test_map']):>8} | {alone:<13} | {folds:<13} "
        f"| {cell(r['oof_map_any_threshold']):>7} | {val:<13} | {weak:<4} "
        f"| {r['train_minutes']:>9} |"
    )


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| recipe       | data | seed | OOF mAP | SE     | test mAP | test, 1 model "
        "| per-fold mAP  | any thr | best val mAP  | weak | train min |"
    )
    rule = (
        "|--------------|------|------|---------|--------|----------|---------------"
        "|---------------|---------|---------------|------|-----------|"
    )
    note = (
        "OOF mAP: the out-of-fold predictions with the recipe's own post-processing, tuned on "
        "the other folds where the recipe tunes (cross-fitted), with its standard error over "
        "images; test mAP: the fold ensemble's submission on the generated test images against "
        "their hidden truth; test, 1 model: each fold's model alone on them (what OOF mAP "
        "estimates: each out-of-fold prediction comes from one model). any thr: the out-of-fold "
        "predictions at their best score threshold (what a fixed threshold may hide). best val "
        "mAP: per fold, the best epoch's validation mAP at the best of a few score thresholds; "
        "weak: folds below half their siblings' median."
    )
    return "\n".join([head, rule, *(_row(r) for r in rows), "", note])


if __name__ == "__main__":
    sys.exit(main())
