"""Metric speed on the full real labels file with a realistic random submission.

About 30 % of images get 1-3 boxes jittered around their truth (or anywhere on negatives),
and about 10 % get random false positives. Prints: one full score from dicts, one threshold
setting on a prepared table, a 100 x 4 threshold/max-boxes grid (setting by setting, and in
one pass per max-boxes value), and the baseline of scoring image by image.

    .venv/bin/python bench/bench_metric.py [--labels PATH] [--baseline-images N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pneumo_core.labels import load_targets
from pneumo_core.metric import ScoreTable, image_precision, map_score

DEFAULT_LABELS = Path(__file__).resolve().parents[2] / "shared/rsna-sample/stage_2_train_labels.csv"


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


def seconds(fn, repeat: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    parser.add_argument("--baseline-images", type=int, default=3000)
    args = parser.parse_args()

    gt = load_targets(args.labels).boxes_by_patient()
    preds = random_submission(gt)
    n_boxes = sum(len(s) for _, s in preds.values())
    print(f"images {len(gt)}, with predictions {len(preds)}, predicted boxes {n_boxes}")

    t_full, (value, scored) = seconds(lambda: map_score(gt, preds))
    print(f"map_score (dicts -> table -> score): {t_full:.3f} s, mAP {value:.4f}, scored {scored}")

    table = ScoreTable.from_dicts(gt, preds)
    t_one, _ = seconds(lambda: table.score(0.5, 3), repeat=20)
    print(f"one (threshold, max_boxes) on a built table: {t_one * 1e3:.2f} ms")
    thresholds = np.linspace(0.0, 0.99, 100)
    grid = [(t, m) for t in thresholds for m in (1, 2, 3, 4)]
    t_grid, _ = seconds(lambda: [table.score(t, m) for t, m in grid], repeat=1)
    print(f"tuning grid of {len(grid)} settings, one score() each: {t_grid:.3f} s")
    t_fast, _ = seconds(lambda: [table.score_grid(thresholds, m) for m in (1, 2, 3, 4)])
    print(f"the same grid through score_grid (what evaluate uses): {t_fast:.3f} s")

    ids = list(gt)[: args.baseline_images]
    empty = (np.zeros((0, 4)), np.zeros(0))

    def one_by_one() -> list:
        return [image_precision(gt[p], *preds.get(p, empty)) for p in ids]

    t_base, _ = seconds(one_by_one, repeat=1)
    per_image = t_base / len(ids)
    print(
        f"baseline, image by image: {t_base:.3f} s for {len(ids)} images "
        f"(~{per_image * len(gt):.1f} s for all {len(gt)}; "
        f"~{per_image * len(gt) * len(grid) / 3600:.1f} h for the grid)"
    )


if __name__ == "__main__":
    main()
