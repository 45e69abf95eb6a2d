"""Stratified folds over the three competition classes, as the seed recipe made them."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from pneumo_core.errors import InputError


def make_folds(patients: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """patientId, class, fold (0..n_folds-1): one row per patient, in the input order.

    Stratifying on the class (not only the target) keeps the "No Lung Opacity / Not Normal"
    hard negatives evenly spread, so each fold's validation mAP measures the same thing.
    """
    missing = {"patientId", "class"} - set(patients.columns)
    if missing:
        raise InputError(f"folds need columns patientId and class; missing {sorted(missing)}")
    if patients["patientId"].duplicated().any():
        dup = patients.loc[patients["patientId"].duplicated(), "patientId"].iloc[0]
        raise InputError(f"folds need one row per patient; {dup} appears more than once")
    if n_folds < 2:
        raise InputError(f"n_folds must be at least 2, got {n_folds}")
    smallest = patients["class"].value_counts().min() if len(patients) else 0
    if smallest < n_folds:
        raise InputError(
            f"cannot make {n_folds} stratified folds: a class has only {smallest} patient(s)"
        )
    folds = np.empty(len(patients), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    classes = patients["class"].to_numpy()
    for fold, (_, validation) in enumerate(splitter.split(np.zeros(len(classes)), classes)):
        folds[validation] = fold
    return pd.DataFrame(
        {"patientId": patients["patientId"].to_numpy(), "class": classes, "fold": folds}
    )
