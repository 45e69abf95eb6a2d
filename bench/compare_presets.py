"""Seed recipe vs default recipe (and a naive one) on the same synthetic data and CPU budget.

Every recipe trains the same folds of the same prepared cache for the same number of epochs
with the same small backbone (ResNet-18-FPN standing in for ResNet-50 on a CPU), from random
weights (`pretrained=false`: the comparison is about the recipes, not the weights), then
`evaluate` tunes and scores its out-of-fold predictions. Prints a table and the command that
reproduces it.

    .venv/bin/python bench/compare_presets.py            # hard data: seed vs default, naive
    .venv/bin/python bench/compare_presets.py --recipes seed,default --epochs 6
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from pneumo_core import evaluate, kaggle, prepare, synthetic, train
from pneumo_core.config import RunConfig, preset
from pneumo_core.storage import open_store

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
    parser.add_argument("--dicom-size", type=int, default=512, help="synthetic DICOM size")
    parser.add_argument("--image-size", type=int, default=192, help="training size")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--backbone", default="resnet18", help="stands in for resnet50")
    parser.add_argument("--fpn-channels", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
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
    }
    rows = []
    for name in names:
        difficulty, preset_name, recipe = RECIPES[name]
        store = _dataset(args, difficulty)
        config = preset(preset_name, **budget, **recipe)
        rows.append(_train_and_score(store, name, difficulty, config))
        print(_row(rows[-1]), flush=True)

    print()
    print(_table(rows))
    print()
    print("reproduce:", shlex.join([sys.executable, *sys.argv]))
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    return 0


def _dataset(args: argparse.Namespace, difficulty: str):
    """Synthesise, ingest and prepare once per difficulty; later calls reuse it."""
    root = args.out / f"{difficulty}-n{args.n_train}-px{args.dicom_size}-seed{args.seed}"
    source = root / "source"
    if not (source / synthetic.TRAIN_LABELS).exists():
        synthetic.generate(
            source, args.n_train, 20, args.dicom_size, seed=args.seed, difficulty=difficulty
        )
    store = open_store(str(root / "store"))
    kaggle.ingest(str(source), store, progress=False)
    prepare.prepare_dataset(store, image_size=args.image_size, n_folds=args.folds, workers=1)
    return store


def _train_and_score(store, name: str, difficulty: str, config: RunConfig) -> dict[str, Any]:
    run_id = f"{name}-{config.config_hash()}"
    train.create_run(store, config, run_id)
    folds = [train.train_fold(store, run_id, k) for k in range(config.n_folds)]
    result = evaluate.evaluate_run(store, run_id)
    # Training time from the metrics, so a re-run that reuses finished folds reports it too.
    seconds = sum(
        json.loads(line)["train_seconds"]
        for k in range(config.n_folds)
        for line in store.get_text(train.fold_key(run_id, k, "metrics.jsonl")).splitlines()
    )
    return {
        "recipe": name,
        "data": difficulty,
        "preset": config.preset,
        "oof_map": result["oof_map"],  # cross-fitted post-processing
        "oof_map_in_sample": result["oof_map_in_sample"],
        # What the recipe's predictions would score at their best threshold, tuned or not.
        "oof_map_any_threshold": max(
            (c["map"] for c in result["curve"] if c["map"] is not None), default=None
        ),
        "per_fold": [f["map"] for f in result["per_fold"]],
        "best_val_map": [round(f["best_val_map"], 4) for f in folds],
        "threshold": result["threshold"],
        "has_box_precision": result["has_box"]["precision"],
        "has_box_recall": result["has_box"]["recall"],
        "train_minutes": round(seconds / 60, 1),
        "run": store.url(f"runs/{run_id}/config.json").rsplit("/", 1)[0],
    }


def _row(r: dict[str, Any]) -> str:
    folds = " ".join(f"{m:.3f}" if m is not None else "-" for m in r["per_fold"])
    val = " ".join(f"{m:.3f}" for m in r["best_val_map"])
    oof, ceiling = (
        f"{r[k]:.4f}" if r[k] is not None else "nan" for k in ("oof_map", "oof_map_any_threshold")
    )
    return (
        f"| {r['recipe']:<12} | {r['data']:<4} | {oof:>7} | {folds:<13} | {r['threshold']:<5} "
        f"| {ceiling:>7} | {val:<13} | {r['train_minutes']:>9} |"
    )


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| recipe       | data | OOF mAP | per-fold mAP  | thr   | any thr | best val mAP  "
        "| train min |"
    )
    rule = (
        "|--------------|------|---------|---------------|-------|---------|---------------"
        "|-----------|"
    )
    note = (
        "OOF mAP: evaluate on the out-of-fold predictions with the recipe's own post-processing "
        "(tuned threshold/max boxes/shrink where the recipe tunes, else fixed). any thr: the "
        "same predictions at their best score threshold (what a fixed threshold may hide). "
        "best val mAP: per fold, the best epoch's validation mAP at the best of a few score "
        "thresholds."
    )
    return "\n".join([head, rule, *(_row(r) for r in rows), "", note])


if __name__ == "__main__":
    sys.exit(main())
