"""The competition metric: hand-worked cases and a straightforward reference loop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pneumo_core.errors import InputError
from pneumo_core.evaluation.metric import (
    IOU_THRESHOLDS,
    ScoreTable,
    image_precision,
    iou_xywh,
    map_score,
)

EMPTY = np.zeros((0, 4))


def reference_precision(gt, pred, scores):
    """DESIGN.md's wording, one loop per threshold and prediction."""
    gt, pred = np.asarray(gt, float).reshape(-1, 4), np.asarray(pred, float).reshape(-1, 4)
    if len(gt) == 0:
        return None if len(pred) == 0 else 0.0
    order = sorted(range(len(pred)), key=lambda j: -scores[j])
    total = 0.0
    for t in [0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75]:
        unmatched = list(range(len(gt)))
        tp = 0
        for j in order:
            best, best_iou = None, -1.0
            for g in unmatched:
                value = reference_iou(pred[j], gt[g])
                if value > best_iou:
                    best, best_iou = g, value
            if best is not None and best_iou > t:
                unmatched.remove(best)
                tp += 1
        fp, fn = len(pred) - tp, len(gt) - tp
        total += tp / (tp + fp + fn)
    return total / 8


def reference_iou(a, b):
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def test_thresholds_are_the_competition_ones():
    assert IOU_THRESHOLDS.tolist() == [0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75]


def test_iou_of_overlapping_boxes():
    iou = iou_xywh(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 10, 10], [20, 20, 5, 5]]))
    assert iou.tolist() == [[50 / 150, 0.0]]


def test_image_without_truth_and_without_prediction_is_not_scored():
    assert image_precision(EMPTY, EMPTY, np.zeros(0)) is None


def test_any_prediction_on_a_negative_image_scores_zero():
    assert image_precision(EMPTY, np.array([[0, 0, 10, 10]]), np.array([0.01])) == 0.0


def test_missed_truth_scores_zero():
    assert image_precision(np.array([[0, 0, 10, 10]]), EMPTY, np.zeros(0)) == 0.0


def test_perfect_prediction_scores_one():
    box = np.array([[100, 200, 50, 80]])
    assert image_precision(box, box, np.array([0.3])) == 1.0


def test_iou_exactly_at_a_threshold_is_not_a_match():
    # IoU = 50 / 100 = 0.5 exactly: a hit for 0.40 and 0.45 only.
    assert image_precision(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 5]]), np.ones(1)) == (
        2 / 8
    )
    # IoU = 0.4 exactly: no threshold is strictly below it.
    assert image_precision(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 4]]), np.ones(1)) == 0


def test_the_most_confident_prediction_claims_the_truth_first():
    gt = np.array([[0, 0, 10, 10], [2, 0, 10, 10]])  # A and B, overlapping
    near_a = [0.5, 0, 10, 10]  # IoU 95/105 = 0.905 with A, 85/115 = 0.739 with B
    exact_a = [0, 0, 10, 10]  # IoU 1 with A, 80/120 = 0.667 with B
    preds = np.array([near_a, exact_a])
    # near_a first takes A; exact_a then claims B (0.667): a hit for the 6 thresholds below
    # 0.667, else TP 1, FP 1, FN 1.
    assert image_precision(gt, preds, np.array([0.9, 0.1])) == pytest.approx((6 + 2 / 3) / 8)
    # exact_a first takes A; near_a then claims B (0.739): a hit for 7 thresholds.
    assert image_precision(gt, preds, np.array([0.1, 0.9])) == pytest.approx((7 + 1 / 3) / 8)


def test_a_prediction_claims_only_unmatched_truth():
    gt = np.array([[0, 0, 10, 10]])
    # two perfect boxes: the second finds no unmatched truth and is a false positive
    two = np.array([[0, 0, 10, 10], [0, 0, 10, 10]])
    assert image_precision(gt, two, np.array([0.9, 0.8])) == 0.5
    # a box below every threshold claims nothing, so the next one still can
    preds = np.array([[0, 0, 10, 3], [0, 0, 10, 10]])
    assert image_precision(gt, preds, np.array([0.9, 0.8])) == 0.5


def test_several_boxes_mixed_hits():
    gt = np.array([[0, 0, 100, 100], [200, 200, 100, 100]])
    preds = np.array([[0, 0, 100, 100], [200, 200, 100, 70], [500, 500, 10, 10]])
    # first: TP everywhere; second: IoU 0.7 -> TP for t < 0.7 (6 thresholds); third: FP.
    expected = (6 * (2 / 3) + 2 * (1 / (1 + 2 + 1))) / 8
    assert image_precision(gt, preds, np.array([0.9, 0.8, 0.7])) == pytest.approx(expected)


def test_map_averages_scored_images_only():
    gt = {"a": np.array([[0, 0, 10, 10]]), "b": EMPTY, "c": EMPTY}
    preds = {
        "a": (np.array([[0, 0, 10, 10]]), np.array([0.9])),
        "c": (np.array([[1, 1, 5, 5]]), [0.2]),
    }
    assert map_score(gt, preds) == (0.5, 2)  # a: 1, b: not scored, c: 0


def test_prediction_for_an_unknown_patient_is_an_error():
    with pytest.raises(InputError, match="no ground truth"):
        map_score({"a": EMPTY}, {"zz": (EMPTY, np.zeros(0))})


def test_threshold_and_max_boxes_pick_prefixes():
    gt = {"a": np.array([[0, 0, 10, 10]]), "b": EMPTY}
    preds = {
        "a": (np.array([[50, 50, 5, 5], [0, 0, 10, 10]]), np.array([0.95, 0.6])),
        "b": (np.array([[3, 3, 4, 4]]), np.array([0.4])),
    }
    table = ScoreTable.from_dicts(gt, preds)
    assert table.score(0.0) == (pytest.approx(0.25), 2)  # a: 1/2, b: 0
    assert table.score(0.5) == (pytest.approx(0.5), 1)  # a: 1/2, b not scored
    assert table.score(0.5, max_boxes=1) == (0.0, 1)  # a keeps only the wrong box
    assert table.score(0.99) == (0.0, 1)  # a: missed
    assert table.kept(0.5).tolist() == [2, 0]


boxes = st.tuples(
    st.integers(0, 60), st.integers(0, 60), st.integers(1, 40), st.integers(1, 40)
).map(list)


@settings(max_examples=300, deadline=None)
@given(
    gt=st.lists(boxes, max_size=4),
    pred=st.lists(st.tuples(boxes, st.integers(0, 20)), max_size=7),
)
def test_matches_the_reference_loop(gt, pred):
    pred_boxes = np.array([b for b, _ in pred], float).reshape(-1, 4)
    # distinct confidences: the order of ties is an implementation detail
    scores = np.array([s + j / 100 for j, (_, s) in enumerate(pred)], float)
    expected = reference_precision(gt, pred_boxes, scores)
    got = image_precision(np.array(gt, float).reshape(-1, 4), pred_boxes, scores)
    assert (got is None) == (expected is None)
    if expected is not None:
        assert got == pytest.approx(expected, abs=1e-12)


def test_many_images_at_once_match_the_reference():
    rng = np.random.default_rng(3)
    gt, preds = {}, {}
    for i in range(300):
        n, m = rng.integers(0, 4), rng.integers(0, 12)
        truth = np.column_stack([rng.uniform(0, 80, (n, 2)), rng.uniform(5, 40, (n, 2))])
        jitter = truth[rng.integers(0, max(n, 1), m)] if n else np.zeros((m, 4))
        guess = np.abs(jitter + rng.normal(0, 4, (m, 4))) + np.array([0, 0, 1, 1])
        gt[f"p{i}"], preds[f"p{i}"] = truth, (guess, rng.uniform(0, 1, m))
    table = ScoreTable.from_dicts(gt, preds)
    for threshold, max_boxes in [(0.0, None), (0.5, None), (0.3, 2)]:
        expected = []
        for pid, truth in gt.items():
            boxes_, scores = preds[pid]
            keep = np.argsort(-scores, kind="stable")
            keep = keep[scores[keep] >= threshold][:max_boxes]
            value = reference_precision(truth, boxes_[keep], scores[keep])
            if value is not None:
                expected.append(value)
        value, scored = table.score(threshold, max_boxes)
        assert scored == len(expected)
        assert value == pytest.approx(np.mean(expected), abs=1e-12)


def test_keep_top_is_exact_up_to_its_box_count():
    rng = np.random.default_rng(0)
    gt = {f"p{i}": rng.uniform(10, 50, (2, 4)) for i in range(50)}
    preds = {
        p: (b[[0, 1, 0, 1, 0, 1]] + rng.normal(0, 3, (6, 4)), rng.uniform(0, 1, 6))
        for p, b in gt.items()
    }
    full, top = ScoreTable.from_dicts(gt, preds), ScoreTable.from_dicts(gt, preds, keep_top=3)
    for max_boxes in (1, 2, 3):
        assert full.score(0.2, max_boxes) == top.score(0.2, max_boxes)


def test_score_grid_equals_score_at_each_threshold():
    rng = np.random.default_rng(5)
    gt = {f"p{i}": rng.uniform(10, 60, (int(rng.integers(0, 3)), 4)) for i in range(200)}
    preds = {
        p: (rng.uniform(10, 60, (m, 4)), rng.uniform(0, 1, m).round(2))
        for p in gt
        for m in [int(rng.integers(0, 5))]
    }
    table = ScoreTable.from_dicts(gt, preds)
    thresholds = [0.9, 0.0, 0.33, 0.5, 0.5, 0.999, 0.21]  # unsorted, repeated, on score values
    for max_boxes in (None, 1, 2):
        maps, scored = table.score_grid(thresholds, max_boxes)
        for t, m, n in zip(thresholds, maps, scored, strict=True):
            expected, expected_n = table.score(t, max_boxes)
            assert n == expected_n
            assert m == pytest.approx(expected, abs=1e-12, nan_ok=True)
