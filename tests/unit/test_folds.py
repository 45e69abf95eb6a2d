"""Stratified folds on the real labels file."""

from __future__ import annotations

import pandas as pd
import pytest

from pneumo_core.data.folds import make_folds
from pneumo_core.data.labels import load_labels
from pneumo_core.errors import InputError


@pytest.fixture(scope="module")
def patients(rsna_sample):
    return load_labels(
        rsna_sample / "stage_2_train_labels.csv", rsna_sample / "stage_2_detailed_class_info.csv"
    ).patients


def test_every_patient_once_with_even_classes(patients):
    folds = make_folds(patients, n_folds=4, seed=42)
    assert list(folds.columns) == ["patientId", "class", "fold"]
    assert folds["patientId"].tolist() == patients["patientId"].tolist()
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3]
    overall = patients["class"].value_counts(normalize=True)
    for _, fold in folds.groupby("fold"):
        assert abs(len(fold) - len(folds) / 4) <= 3
        share = fold["class"].value_counts(normalize=True)
        assert (share - overall).abs().max() < 0.01


def test_deterministic_for_a_seed_and_different_across_seeds(patients):
    first = make_folds(patients, n_folds=4, seed=42)
    again = make_folds(patients, n_folds=4, seed=42)
    pd.testing.assert_frame_equal(first, again)
    assert (make_folds(patients, n_folds=4, seed=7)["fold"] != first["fold"]).any()


def test_fold_count_is_configurable(patients):
    assert make_folds(patients, n_folds=5, seed=42)["fold"].nunique() == 5


def test_bad_input():
    small = pd.DataFrame({"patientId": ["a", "b", "c"], "class": ["Normal"] * 3})
    with pytest.raises(InputError, match="a class has only 3"):
        make_folds(small, n_folds=4, seed=42)
    with pytest.raises(InputError, match="a appears more than once"):
        make_folds(pd.concat([small, small]), n_folds=2, seed=42)
    with pytest.raises(InputError, match="missing"):
        make_folds(small[["patientId"]], n_folds=4, seed=42)
