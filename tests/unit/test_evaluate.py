"""Out-of-fold evaluation on a hand-made run in a file:// store."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from pneumo_core.errors import InputError
from pneumo_core.evaluation.evaluate import evaluate_run
from pneumo_core.storage.open import open_store

DATASET = "toy"
SIZE = 256
RUN = "run-1"


SCORES = {"true": (0.6, 0.9), "false": (0.1, 0.4)}


def make_run(root, postprocess=None, grow=1.0, seed=0, scores=None):
    """40 patients in 2 folds of every kind; positives have 1-2 boxes. Every truth box is
    predicted with a score in 0.6-0.9 (`grow` times its size, same centre); every image also
    gets 2 far-off false positives scored 0.1-0.4. A threshold between 0.4 and 0.6 separates
    them. `scores`: {fold: {"true": (lo, hi), "false": (lo, hi)}} to change the ranges."""
    rng = np.random.default_rng(seed)
    store = open_store(f"file://{root}")
    labels, boxes, oof = [], [], []
    for i in range(40):
        pid, fold = f"p{i:02d}", (i // 4) % 2
        ranges = (scores or {}).get(fold, SCORES)
        n = [0, 1, 2, 0][i % 4]
        labels.append((pid, "Lung Opacity" if n else "Normal", int(n > 0), n))
        for j in range(n):
            x, y, w, h = 100 + 400 * j, 300.0, 150.0, 200.0
            boxes.append((pid, x, y, w, h, x / 4, y / 4, w / 4, h / 4))
            cx, cy = x + w / 2, y + h / 2
            gw, gh = w * grow, h * grow
            oof.append((pid, fold, rng.uniform(*ranges["true"]), cx - gw / 2, cy - gh / 2, gw, gh))
        for _ in range(2):
            oof.append((pid, fold, rng.uniform(*ranges["false"]), 850.0, 850.0, 100.0, 100.0))
    prefix = f"prepared/{DATASET}/{SIZE}"
    store.put_text(f"{prefix}/labels.csv", csv(labels, "patientId,class,target,n_boxes"))
    store.put_text(
        f"{prefix}/boxes.csv", csv(boxes, "patientId,x,y,width,height,sx,sy,swidth,sheight")
    )
    config = {"dataset": DATASET, "image_size": SIZE, "preset": "ci"}
    if postprocess is not None:
        config["postprocess"] = postprocess
    store.put_json(f"runs/{RUN}/config.json", config)
    frame = pd.DataFrame(oof, columns=["patientId", "fold", "score", "x", "y", "width", "height"])
    for fold, rows in frame.groupby("fold"):
        write_oof(store, fold, rows)
    return store


def csv(rows, header):
    return header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)


def write_oof(store, fold, frame):
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    store.put_text(f"runs/{RUN}/fold-{fold}/oof_predictions.csv", buffer.getvalue())


def test_tuning_finds_the_threshold_that_separates_good_from_bad_boxes(tmp_path):
    store = make_run(tmp_path, postprocess={"tune_shrink": False})
    result = evaluate_run(store, RUN)
    oof = pd.concat(
        pd.read_csv(io.BytesIO(store.get_bytes(f"runs/{RUN}/fold-{k}/oof_predictions.csv")))
        for k in (0, 1)
    )
    far_off = oof["x"] == 850
    assert oof.loc[far_off, "score"].max() < result.threshold <= oof.loc[~far_off, "score"].min()
    assert result.oof_map == 1.0 and result.max_boxes >= 2 and result.shrink == 1.0
    assert result.oof_map_in_sample == 1.0 and result.tuning == "cross-fitted"
    assert result.images == 40 and result.images_scored == 20  # negatives: no box left
    assert result.has_box == {
        "precision": 1.0, "recall": 1.0, "tp": 20, "fp": 0, "fn": 0, "tn": 20,
    }  # fmt: skip
    assert [f.fold for f in result.per_fold] == [0, 1]
    assert all(f.map == 1.0 and f.images == 20 for f in result.per_fold)
    curve = {point.threshold: point.map for point in result.curve}
    assert curve[0.05] < 0.5 and curve[0.5] == 1.0
    # the configured threshold (0.5 by default) was already good; max_boxes 4 as well
    assert result.map_at_configured_postprocess == 1.0
    assert store.get_json(f"runs/{RUN}/evaluation.json") == result.to_json()


def test_each_fold_is_scored_with_the_setting_tuned_on_the_other_folds(tmp_path):
    """Fold 0 separates at 0.6-0.8, fold 1 at 0.2-0.4: no threshold suits both, and each
    fold scored with the other's threshold does worse than the in-sample figure claims."""
    scores = {
        0: {"true": (0.8, 0.9), "false": (0.5, 0.6)},
        1: {"true": (0.4, 0.45), "false": (0.1, 0.2)},
    }
    store = make_run(tmp_path, postprocess={"tune_shrink": False}, scores=scores)
    result = evaluate_run(store, RUN)
    fold0, fold1 = result.per_fold
    assert 0.2 <= fold0.tuned_on_other_folds["score_threshold"] <= 0.4
    assert 0.6 <= fold1.tuned_on_other_folds["score_threshold"] <= 0.8
    assert fold1.map == 0.0  # every true box of fold 1 is below fold 0's threshold
    assert fold0.map < 1.0  # fold 0's false positives pass fold 1's threshold
    assert result.oof_map < result.oof_map_in_sample < 1.0
    assert result.oof_map_se > 0
    # the submission keeps the setting tuned on all folds
    assert result.postprocess["score_threshold"] == result.threshold


def test_a_single_fold_uses_the_configured_setting(tmp_path):
    store = make_run(tmp_path, postprocess={"score_threshold": 0.05, "tune_shrink": False})
    store.delete_prefix(f"runs/{RUN}/fold-1/")
    result = evaluate_run(store, RUN)
    assert result.tuning.startswith("configured")
    assert result.oof_map < result.oof_map_in_sample == 1.0  # 0.05 keeps false positives


def test_max_boxes_one_costs_the_second_box(tmp_path):
    store = make_run(tmp_path, postprocess={"tune": False, "tune_shrink": False, "max_boxes": 1})
    result = evaluate_run(store, RUN)
    assert result.max_boxes == 1 and result.threshold == 0.5
    # images with 2 truths keep 1 box: 1 TP, 1 FN -> 0.5; images with 1 truth stay at 1
    assert result.oof_map == pytest.approx(0.75)


def test_shrink_is_tuned_when_boxes_are_too_large(tmp_path):
    # 1.4 x the truth: shrinking by 0.8 gives IoU 1 / 1.12^2 = 0.797 (a hit everywhere),
    # by 0.85 only 0.706
    store = make_run(tmp_path, postprocess={"tune_shrink": True}, grow=1.4)
    result = evaluate_run(store, RUN)
    assert result.shrink == 0.8 and result.oof_map == pytest.approx(1.0)
    assert result.postprocess["shrink"] == 0.8
    # without shrinking, IoU is 0.51
    assert result.map_at_configured_postprocess < 1.0


def test_missing_predictions_is_a_clear_error(tmp_path):
    store = make_run(tmp_path)
    store.delete_prefix(f"runs/{RUN}/fold-")
    with pytest.raises(InputError, match="train at least one fold"):
        evaluate_run(store, RUN)


def test_a_patient_in_two_folds_is_an_error(tmp_path):
    store = make_run(tmp_path)
    rows = pd.DataFrame([("p00", 1, 0.5, 1.0, 1.0, 10.0, 10.0)], columns=list(OOF_HEADER))
    key = f"runs/{RUN}/fold-1/oof_predictions.csv"
    frame = pd.read_csv(io.BytesIO(store.get_bytes(key)))
    write_oof(store, 1, pd.concat([frame, rows]))
    with pytest.raises(InputError, match=r"more than one fold, e\.g\. p00"):
        evaluate_run(store, RUN)


OOF_HEADER = ("patientId", "fold", "score", "x", "y", "width", "height")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("p01,0,0.5,1,1,10,", "score and box fields must be all set or all empty"),
        ("p01,0,1.5,1,1,10,10", "score outside [0, 1]"),
        ("p01,0,0.5,one,1,10,10", "x 'one' is not a number"),
        ("p01,1,0.5,1,1,10,10", "fold is not 0"),
    ],
)
def test_bad_oof_rows_name_the_row(tmp_path, row, message):
    store = make_run(tmp_path)
    key = f"runs/{RUN}/fold-0/oof_predictions.csv"
    text = store.get_text(key)
    n_rows = text.count("\n") + 1  # header is row 1, the appended row is the last
    store.put_text(key, text + row + "\n")
    with pytest.raises(InputError) as error:
        evaluate_run(store, RUN)
    assert f"{key} row {n_rows}: {message}" in str(error.value)
    assert not store.exists(f"runs/{RUN}/evaluation.json")


def test_unknown_patient_and_missing_cache(tmp_path):
    store = make_run(tmp_path)
    key = f"runs/{RUN}/fold-0/oof_predictions.csv"
    store.put_text(key, store.get_text(key) + "zz,0,,,,,\n")
    with pytest.raises(InputError, match=r"not in prepared/toy/256/labels\.csv, e\.g\. zz"):
        evaluate_run(store, RUN)
    store.delete(f"prepared/{DATASET}/{SIZE}/boxes.csv")
    with pytest.raises(InputError, match=r"boxes\.csv is missing"):
        evaluate_run(store, RUN)


def test_the_gate_is_tuned_when_the_predictions_carry_an_opacity(tmp_path):
    """False positives on negative images outscore some true boxes, but the image head
    knows those images are clear: gating by P(opacity) separates them."""
    scores = {f: {"true": (0.5, 0.7), "false": (0.55, 0.8)} for f in (0, 1)}
    store = make_run(tmp_path, postprocess={"tune_shrink": False}, scores=scores)
    plain = evaluate_run(store, RUN)
    assert plain.postprocess["gate"] == 0.0  # no opacity column: nothing to tune
    labels = pd.read_csv(io.BytesIO(store.get_bytes(f"prepared/{DATASET}/{SIZE}/labels.csv")))
    positive = dict(zip(labels["patientId"], labels["target"], strict=True))
    for fold in (0, 1):
        key = f"runs/{RUN}/fold-{fold}/oof_predictions.csv"
        frame = pd.read_csv(io.BytesIO(store.get_bytes(key)))
        frame["opacity"] = frame["patientId"].map(lambda p: 0.9 if positive[p] else 0.2)
        write_oof(store, fold, frame)
    gated = evaluate_run(store, RUN)
    assert gated.postprocess["gate"] > 0
    assert all(f.tuned_on_other_folds["gate"] > 0 for f in gated.per_fold)
    assert gated.oof_map > plain.oof_map
