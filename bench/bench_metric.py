"""Competition-metric speed at full scale, against a per-image pure-Python metric.

Ground truth: the competition's labels file (--labels), or by default a generated one of the
same shape (26,684 images, 22.5 % with 1-4 boxes). The submission is random but realistic:
about 30 % of images get 1-3 boxes jittered around their truth (or anywhere on negatives),
about 10 % random false positives. Figures:

- one full score (`metric.map_score`: dicts -> table -> score);
- a 100 thresholds x 4 max-boxes tuning grid on the built table (`score_grid`, what
  `evaluate` uses).

Baseline: the metric as a seed-style notebook writes it (per image, per IoU threshold, sort
the predictions by score and match greedily in Python), timed on --baseline-images images
and extrapolated to the whole set (stated in the note). Both must agree to 1e-9 on those
images, or the benchmark stops.

    .venv/bin/python -m bench.bench_metric [--labels PATH] [--baseline-images N]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from bench.record import emit
from pneumo_core.data.labels import load_targets
from pneumo_core.evaluation.metric import IOU_THRESHOLDS, ScoreTable, map_score

N_IMAGES, POSITIVE_SHARE = 26_684, 0.225


def generated_truth(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = {}
    for i in range(N_IMAGES):
        n = int(rng.integers(1, 5)) if rng.random() < POSITIVE_SHARE else 0
        gt[f"img-{i:05d}"] = np.column_stack(
            [rng.uniform(50, 600, (n, 2)), rng.uniform(60, 300, (n, 2))]
        )
    return gt


def random_submission(gt: dict[str, np.ndarray], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    preds = {}
    for pid, truth in gt.items():
        boxes = []
        if rng.random() < 0.3:
            n = int(rng.integers(1, 4))
            if len(truth):
                base = truth[rng.integers(0, len(truth), n)]
            else:
                base = np.column_stack([rng.uniform(0, 700, (n, 2)), rng.uniform(60, 300, (n, 2))])
            boxes.append(base + rng.normal(0, 0.1, (n, 4)) * base[:, [2, 3, 2, 3]])
        if rng.random() < 0.1:
            n = int(rng.integers(1, 3))
            boxes.append(
                np.column_stack([rng.uniform(0, 700, (n, 2)), rng.uniform(60, 300, (n, 2))])
            )
        if boxes:
            stacked = np.concatenate(boxes)
            preds[pid] = (stacked, rng.uniform(0, 1, len(stacked)))
    return preds


def python_iou(a: list[float], b: list[float]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = min(ax + aw, bx + bw) - max(ax, bx)
    h = min(ay + ah, by + bh) - max(ay, by)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / (aw * ah + bw * bh - inter)


def python_image_precision(gt: list[list[float]], preds: list[tuple[float, list[float]]]):
    """The seed-style metric for one image: None when neither truth nor predictions."""
    if not gt and not preds:
        return None
    if not gt or not preds:
        return 0.0
    ranked = [box for _, box in sorted(preds, key=lambda p: -p[0])]
    total = 0.0
    for threshold in IOU_THRESHOLDS:
        matched, tp = set(), 0
        for box in ranked:
            best, best_j = threshold, None
            for j, truth in enumerate(gt):
                iou = python_iou(box, truth)
                if j not in matched and iou > best:
                    best, best_j = iou, j
            if best_j is not None:
                matched.add(best_j)
                tp += 1
        total += tp / (tp + (len(ranked) - tp) + (len(gt) - tp))
    return total / len(IOU_THRESHOLDS)


def seconds(fn, repeat: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, help="stage_2_train_labels.csv (default: generated)")
    parser.add_argument("--baseline-images", type=int, default=3000)
    args = parser.parse_args()
    gt = load_targets(args.labels).boxes_by_patient() if args.labels else generated_truth()
    preds = random_submission(gt)
    source = "real labels" if args.labels else "generated labels"

    t_full, (value, _) = seconds(lambda: map_score(gt, preds))
    table = ScoreTable.from_dicts(gt, preds)
    thresholds = np.linspace(0.0, 0.99, 100)
    t_grid, _ = seconds(lambda: [table.score_grid(thresholds, m) for m in (1, 2, 3, 4)])

    ids = list(gt)[: args.baseline_images]
    empty = (np.zeros((0, 4)), np.zeros(0))
    as_lists = {}
    for p in ids:
        boxes, scores = preds.get(p, empty)
        as_lists[p] = (gt[p].tolist(), list(zip(scores.tolist(), boxes.tolist(), strict=True)))
    started = time.perf_counter()
    reference = [python_image_precision(*as_lists[p]) for p in ids]
    per_image = (time.perf_counter() - started) / len(ids)
    ours = ScoreTable.from_dicts(
        {p: gt[p] for p in ids}, {p: preds[p] for p in ids if p in preds}
    ).image_scores()
    for pid, want, got in zip(ids, reference, ours, strict=True):
        if not (want is None and math.isnan(got)) and abs((want or 0.0) - got) > 1e-9:
            raise SystemExit(f"metric disagrees with the reference on {pid}: {got} vs {want}")

    note = f"{len(gt)} images ({source}), {len(preds)} with predictions; baseline timed on "
    note += f"{len(ids)} images and extrapolated"
    emit(
        "competition metric, one full score",
        t_full,
        "s",
        baseline=per_image * len(gt),
        higher_is_better=False,
        note=f"{note}; mAP {value:.4f}",
    )
    emit(
        "threshold tuning, 100 thresholds x 4 max boxes",
        t_grid,
        "s",
        baseline=per_image * len(gt) * 400,
        higher_is_better=False,
        note=f"{note} (x 400 settings)",
    )


if __name__ == "__main__":
    main()
