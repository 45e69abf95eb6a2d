"""The per-epoch validation mAP that picks each fold's best checkpoint."""

from __future__ import annotations

import numpy as np

from pneumo_core.evaluation.metric import ScoreTable
from pneumo_core.train.engine import validation_map


def test_a_fold_with_low_but_well_ranked_scores_does_not_read_as_collapsed():
    """Focal-loss detectors often score true boxes below 0.1 early on; above the model's floor
    (0.05) they still count, as they do in the out-of-fold tuning."""
    gt = {"a": np.array([[10.0, 10.0, 40.0, 40.0]]), "b": np.zeros((0, 4))}
    preds = {
        "a": (np.array([[10.0, 10.0, 40.0, 40.0]]), np.array([0.08])),
        "b": (np.array([[60.0, 60.0, 20.0, 20.0]]), np.array([0.06])),
    }
    val_map, threshold = validation_map(ScoreTable.from_dicts(gt, preds))
    assert val_map == 1.0 and 0.06 < threshold <= 0.08
