"""Out-of-fold evaluation of a run: gather every fold's validation predictions, tune the
post-processing for the competition metric on them, and report an honest score.

The headline `oof_map` is cross-fitted: each fold's images are scored with the setting
(score threshold x max boxes x shrink) tuned on the OTHER folds' out-of-fold predictions, so
no image helps choose the setting it is scored with. The setting tuned on all folds together
is what the submission uses; its score on those same predictions is kept as
`oof_map_in_sample` (optimistic by construction).
"""

from __future__ import annotations

import io
import itertools
import math
import time
from typing import Any

import numpy as np
import pandas as pd

from pneumo_core.data.labels import BOX_COLUMNS, group_boxes
from pneumo_core.errors import InputError, ObjectNotFound
from pneumo_core.evaluation.metric import ScoreTable, mean_scored
from pneumo_core.evaluation.postprocess import PostprocessConfig, shrink_boxes
from pneumo_core.layout import BOXES, LABELS, OOF_PREDICTIONS, fold_key, prepared_key
from pneumo_core.runs.records import Evaluation
from pneumo_core.runs.run import Run
from pneumo_core.storage.base import ObjectStore

# Names how oof_map is computed; champions are compared only under the same protocol.
EVALUATION_PROTOCOL = "oof-cross-fitted-postprocess-v1"
OOF_COLUMNS = ("patientId", "fold", "score", *BOX_COLUMNS)
THRESHOLD_GRID = tuple(round(float(t), 2) for t in np.arange(0.05, 0.96, 0.01))
MAX_BOXES_GRID = (1, 2, 3, 4, 5, 6, 8)
SHRINK_GRID = (1.0, 0.95, 0.9, 0.875, 0.85, 0.8)
GATE_GRID = (0.0, 0.5, 1.0, 2.0)  # exponent of the image head's P(opacity); 0 = no gate


def evaluate_run(store: ObjectStore, run_id: str) -> Evaluation:
    """Tune and score the run's out-of-fold predictions; writes runs/<id>/evaluation.json."""
    started = time.perf_counter()
    run = Run(store, run_id)
    config = run.config()
    configured = config.postprocess
    oof = read_oof(store, run_id)
    gt, targets = read_truth(store, config.dataset, config.image_size, oof)

    best, tables = tune(oof, gt, configured)
    tuned = configured.with_overrides(best)
    table = tables[tuned.shrink, tuned.gate]
    in_sample, _ = mean_scored(table.image_scores(tuned.score_threshold, tuned.max_boxes))
    curve_maps, _ = table.score_grid(THRESHOLD_GRID, tuned.max_boxes)
    at_config = _table(oof, gt, configured, configured.shrink, tables, configured.gate).score(
        configured.score_threshold, configured.max_boxes
    )[0]
    values, per_fold, tuning = cross_fitted(oof, gt, configured)
    oof_map, scored = mean_scored(values)

    has_box = table.kept(tuned.score_threshold, tuned.max_boxes) > 0
    positive = targets.reindex(list(table.patient_ids)).to_numpy() == 1
    result = {
        "run_id": run_id,
        "dataset": config.dataset,
        "image_size": config.image_size,
        "oof_map": _number(oof_map),
        "oof_map_se": _number(_standard_error(values)),
        "oof_map_in_sample": _number(in_sample),
        "protocol": EVALUATION_PROTOCOL,
        "tuning": tuning,
        "images": len(table.patient_ids),
        "images_scored": scored,
        "predicted_boxes": int(oof["score"].notna().sum()),
        "threshold": tuned.score_threshold,
        "max_boxes": tuned.max_boxes,
        "shrink": tuned.shrink,
        "postprocess": tuned.to_dict(),
        "map_at_configured_postprocess": _number(at_config),
        "per_fold": per_fold,
        "curve": [
            {"threshold": t, "map": _number(m)}
            for t, m in zip(THRESHOLD_GRID, curve_maps, strict=True)
        ],
        "has_box": _has_box(has_box, positive),
        "seconds": round(time.perf_counter() - started, 3),
    }
    evaluation = Evaluation.model_validate(result)
    run.write_evaluation(evaluation)
    return evaluation


def cross_fitted(
    oof: pd.DataFrame, gt: dict[str, np.ndarray], configured: PostprocessConfig
) -> tuple[np.ndarray, list[dict[str, Any]], str]:
    """Per-image scores (NaN = not scored) where each fold is scored with the setting tuned on
    the other folds; with a single fold there is nothing to tune on, so the configured
    setting is used. Returns the scores, the per-fold rows and how the setting was chosen."""
    folds = sorted(int(f) for f in oof["fold"].unique())
    tuning = "cross-fitted" if len(folds) > 1 else "configured (one fold: nothing to cross-fit)"
    all_values, per_fold = [], []
    for fold in folds:
        inside = oof["fold"] == fold
        own = oof[inside]
        own_gt = _subset(gt, own)
        if len(folds) > 1:
            others = oof[~inside]
            setting, _ = tune(others, _subset(gt, others), configured)
        else:
            setting = {
                "score_threshold": configured.score_threshold,
                "max_boxes": configured.max_boxes,
                "shrink": configured.shrink,
                "gate": configured.gate,
            }
        table = _table(own, own_gt, configured, setting["shrink"], {}, setting["gate"])
        values = table.image_scores(setting["score_threshold"], setting["max_boxes"])
        fold_map, fold_scored = mean_scored(values)
        per_fold.append(
            {
                "fold": fold,
                "map": _number(fold_map),
                "images": len(own_gt),
                "images_scored": fold_scored,
                "tuned_on_other_folds": setting,
            }
        )
        all_values.append(values)
    return np.concatenate(all_values), per_fold, tuning


def tune(
    oof: pd.DataFrame, gt: dict[str, np.ndarray], configured: PostprocessConfig
) -> tuple[dict[str, Any], dict[tuple[float, float], ScoreTable]]:
    """Best (score_threshold, max_boxes, shrink, gate) on the grids the configuration opens
    up (the gate only where the predictions carry an image opacity); ties keep the first
    setting found. Returns it and the ScoreTable built per (shrink, gate)."""
    thresholds = THRESHOLD_GRID if configured.tune else (configured.score_threshold,)
    max_boxes = MAX_BOXES_GRID if configured.tune else (configured.max_boxes,)
    shrinks = SHRINK_GRID if configured.tune_shrink else (configured.shrink,)
    with_opacity = "opacity" in oof and oof["opacity"].notna().any()
    gates = GATE_GRID if configured.tune_gate and with_opacity else (configured.gate,)
    tables: dict[tuple[float, float], ScoreTable] = {}
    best: tuple[float, dict[str, Any]] = (-math.inf, {})
    for shrink, gate in itertools.product(shrinks, gates):
        table = _table(oof, gt, configured, shrink, tables, gate)
        for limit in max_boxes:
            maps, _ = table.score_grid(thresholds, limit)
            maps = np.where(np.isnan(maps), -math.inf, maps)
            i = int(np.argmax(maps))
            if maps[i] > best[0] or not best[1]:
                setting = {"score_threshold": thresholds[i], "max_boxes": limit}
                best = (float(maps[i]), setting | {"shrink": shrink, "gate": gate})
    return best[1], tables


def read_oof(store: ObjectStore, run_id: str) -> pd.DataFrame:
    """Every fold's oof_predictions.csv of the run, checked, in one frame."""
    keys = Run(store, run_id).oof_keys()
    if not keys:
        raise InputError(
            f"run {run_id}: no {fold_key(run_id, 0, OOF_PREDICTIONS).replace('fold-0', 'fold-<k>')}"
            f" in {store.uri}; train at least one fold first"
        )
    frames = [_read_oof_file(store, key, fold) for fold, key in keys.items()]
    oof = pd.concat(frames, ignore_index=True)
    folds_per_patient = oof.groupby("patientId")["fold"].nunique()
    twice = folds_per_patient[folds_per_patient > 1]
    if len(twice):
        raise InputError(
            f"run {run_id}: {len(twice)} patient(s) are in the predictions of more than one "
            f"fold, e.g. {twice.index[0]}"
        )
    return oof


def read_truth(
    store: ObjectStore, dataset: str, image_size: int, oof: pd.DataFrame
) -> tuple[dict[str, np.ndarray], pd.Series]:
    """Ground-truth boxes (original px) of the out-of-fold patients and their target."""
    labels_key = prepared_key(dataset, image_size, LABELS)
    labels = _read_csv(store, labels_key, ("patientId", "target"))
    boxes = _read_csv(store, prepared_key(dataset, image_size, BOXES), ("patientId", *BOX_COLUMNS))
    patients = oof["patientId"].drop_duplicates()
    unknown = patients[~patients.isin(labels["patientId"])]
    if len(unknown):
        raise InputError(
            f"{len(unknown)} out-of-fold patient(s) are not in {labels_key}, e.g. {unknown.iloc[0]}"
        )
    gt = group_boxes(patients, boxes[boxes["patientId"].isin(patients)])
    return gt, labels.set_index("patientId")["target"]


def _table(
    oof: pd.DataFrame,
    gt: dict[str, np.ndarray],
    configured: PostprocessConfig,
    shrink: float,
    tables: dict[tuple[float, float], ScoreTable],
    gate: float = 0.0,
) -> ScoreTable:
    """The ScoreTable of the predictions shrunk by `shrink` and gated by `gate`, built once
    per pair; exact up to the largest max_boxes tried."""
    if (shrink, gate) not in tables:
        boxes = oof.dropna(subset=["score"])
        scores = boxes["score"].to_numpy(np.float64)
        if "opacity" in boxes and gate:
            scores = scores * boxes["opacity"].fillna(1.0).to_numpy(np.float64) ** gate
        index = {pid: i for i, pid in enumerate(gt)}
        gt_image = np.repeat(np.arange(len(gt)), [len(b) for b in gt.values()])
        tables[shrink, gate] = ScoreTable.build(
            list(gt),
            gt_image=gt_image,
            gt_boxes=np.concatenate([*gt.values(), np.zeros((0, 4))]),
            pred_image=boxes["patientId"].map(index).to_numpy(),
            pred_boxes=shrink_boxes(boxes[list(BOX_COLUMNS)].to_numpy(np.float64), shrink),
            pred_scores=scores,
            keep_top=max(*MAX_BOXES_GRID, configured.max_boxes),
        )
    return tables[shrink, gate]


def _subset(gt: dict[str, np.ndarray], oof: pd.DataFrame) -> dict[str, np.ndarray]:
    return {pid: gt[pid] for pid in oof["patientId"].drop_duplicates()}


def _standard_error(values: np.ndarray) -> float:
    """Of the mean image score: the spread a different sample of images would give."""
    scored = values[~np.isnan(values)]
    return float(scored.std(ddof=1) / math.sqrt(len(scored))) if len(scored) > 1 else math.nan


def _read_oof_file(store: ObjectStore, key: str, expected: int) -> pd.DataFrame:
    frame = _read_csv(store, key, OOF_COLUMNS, optional=("opacity",))
    numeric = ["score", *BOX_COLUMNS]
    with_box = frame[numeric].notna()
    partial = with_box.any(axis=1) & ~with_box.all(axis=1)
    if partial.any():
        row = int(np.flatnonzero(partial.to_numpy())[0]) + 2
        raise InputError(f"{key} row {row}: score and box fields must be all set or all empty")
    scored = frame["score"].dropna()
    if ((scored < 0) | (scored > 1)).any():
        row = int(frame.index.get_loc(scored[(scored < 0) | (scored > 1)].index[0])) + 2
        raise InputError(f"{key} row {row}: score outside [0, 1]")
    if (frame["fold"] != expected).any():
        row = int(np.flatnonzero((frame["fold"] != expected).to_numpy())[0]) + 2
        raise InputError(f"{key} row {row}: fold is not {expected}")
    return frame


def _read_csv(
    store: ObjectStore, key: str, columns: tuple[str, ...], optional: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Columns of a stored CSV (and the `optional` ones it has); numeric columns other than
    patientId must parse."""
    try:
        data = store.get_bytes(key)
    except ObjectNotFound:
        raise InputError(f"{store.url(key)} is missing") from None
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype={"patientId": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{key}: cannot read as CSV: {exc}") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{key}: missing column(s) {', '.join(missing)}")
    columns = (*columns, *(c for c in optional if c in frame.columns))
    frame = frame[list(columns)]
    for column in columns[1:]:
        converted = pd.to_numeric(frame[column], errors="coerce")
        bad = converted.isna() & frame[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            value = frame[column].iloc[row - 2]
            raise InputError(f"{key} row {row}: {column} {value!r} is not a number")
        frame[column] = converted
    return frame


def _has_box(predicted: np.ndarray, positive: np.ndarray) -> dict[str, Any]:
    """Image-level detection quality: does the image get any box when it should?"""
    tp = int((predicted & positive).sum())
    fp = int((predicted & ~positive).sum())
    fn = int((~predicted & positive).sum())
    tn = int((~predicted & ~positive).sum())
    return {
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def _number(value: float) -> float | None:
    """JSON has no NaN: a score over no scored image is null."""
    return None if math.isnan(value) else float(value)
