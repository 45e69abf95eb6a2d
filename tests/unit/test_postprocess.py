"""Post-processing: threshold, max boxes, shrink, and box fusion across prediction sets."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo_core.errors import InputError
from pneumo_core.evaluation.postprocess import PostprocessConfig, apply, fuse, shrink_boxes

BOXES = np.array([[100, 100, 200, 200], [600, 600, 100, 100], [10, 10, 50, 50]], float)
SCORES = np.array([0.3, 0.9, 0.6])


def test_apply_thresholds_orders_and_caps():
    boxes, scores = apply(BOXES, SCORES, PostprocessConfig(score_threshold=0.3, max_boxes=2))
    assert scores.tolist() == [0.9, 0.6]
    assert boxes.tolist() == [[600, 600, 100, 100], [10, 10, 50, 50]]
    boxes, scores = apply(BOXES, SCORES, PostprocessConfig(score_threshold=0.95))
    assert boxes.shape == (0, 4) and scores.shape == (0,)


def test_shrink_keeps_the_centre():
    shrunk = shrink_boxes(np.array([[100, 200, 80, 40]]), 0.875)
    assert shrunk.tolist() == [[105, 202.5, 70, 35]]
    boxes, _ = apply(BOXES[:1], SCORES[:1], PostprocessConfig(score_threshold=0, shrink=0.5))
    assert boxes.tolist() == [[150, 150, 100, 100]]


@pytest.mark.parametrize(
    "field",
    [
        {"score_threshold": 1.5},
        {"max_boxes": 0},
        {"shrink": 0},
        {"shrink": 1.2},
        {"fusion": "soft"},
        {"fusion_iou": 1.0},
        {"skip_threshold": -0.1},
    ],
)
def test_bad_config_names_the_field(field):
    with pytest.raises(InputError, match=f"postprocess.{next(iter(field))}"):
        PostprocessConfig(**field)


def test_config_round_trip_and_unknown_fields():
    cfg = PostprocessConfig(score_threshold=0.4, fusion="nms")
    assert PostprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="unknown field"):
        PostprocessConfig.from_dict({"threshold": 0.3})


def two_views():
    first = (np.array([[100, 100, 200, 200], [600, 600, 100, 100]], float), np.array([0.9, 0.3]))
    second = (np.array([[110, 100, 200, 200]], float), np.array([0.7]))
    return [first, second]


def test_wbf_averages_agreeing_boxes_and_discounts_lonely_ones():
    boxes, scores = fuse(two_views(), PostprocessConfig(fusion="wbf"))
    # the overlapping pair becomes one box at the score-weighted mean position
    np.testing.assert_allclose(boxes[0], [(100 * 0.9 + 110 * 0.7) / 1.6, 100, 200, 200])
    np.testing.assert_allclose(scores, [0.8, 0.15], rtol=1e-6)  # seen by 1 of 2 sets: halved
    np.testing.assert_allclose(boxes[1], [600, 600, 100, 100], rtol=1e-6)


def test_wbf_respects_a_non_square_frame():
    view = (np.array([[50, 20, 100, 40]], float), np.array([0.8]))
    boxes, _ = fuse([view, view], PostprocessConfig(), image_size=(100, 300))
    np.testing.assert_allclose(boxes, [[50, 20, 100, 40]], rtol=1e-6)


def test_nms_keeps_the_best_of_an_overlapping_group():
    boxes, scores = fuse(two_views(), PostprocessConfig(fusion="nms"))
    assert scores.tolist() == [0.9, 0.3]
    assert boxes.tolist() == [[100, 100, 200, 200], [600, 600, 100, 100]]


def test_none_concatenates_and_skip_threshold_drops():
    cfg = PostprocessConfig(fusion="none", skip_threshold=0.5)
    boxes, scores = fuse(two_views(), cfg)
    assert scores.tolist() == [0.9, 0.7] and len(boxes) == 2


def test_fusing_nothing():
    empty = (np.zeros((0, 4)), np.zeros(0))
    for fusion in ("wbf", "nms", "none"):
        boxes, scores = fuse([empty, empty], PostprocessConfig(fusion=fusion))
        assert boxes.shape == (0, 4) and scores.shape == (0,)


def test_the_gate_multiplies_scores_by_the_opacity_probability():
    boxes = np.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 10.0, 10.0]])
    scores = np.array([0.9, 0.6])
    cfg = PostprocessConfig(score_threshold=0.5, gate=1.0)
    kept, kept_scores = apply(boxes, scores, cfg, opacity=0.6)
    assert len(kept) == 1 and kept_scores[0] == pytest.approx(0.54)
    assert len(apply(boxes, scores, cfg)[0]) == 2  # no image head: no gate
    assert len(apply(boxes, scores, cfg.with_overrides({"gate": 0.0}), opacity=0.1)[0]) == 2
