"""Folds trained at once in threads of one process (the local runner on CPU) end with exactly
the weights and out-of-fold predictions they get when trained one after the other."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from pneumo_core.config.run import preset
from pneumo_core.data.ingest import ingest
from pneumo_core.data.prepare import prepare_dataset
from pneumo_core.data.synthetic import generate
from pneumo_core.runs.run import create_run
from pneumo_core.storage.open import open_store
from pneumo_core.train.checkpoint import load_checkpoint
from pneumo_core.train.fold import train_fold


def test_folds_trained_at_once_match_folds_trained_alone(tmp_path):
    src = generate(tmp_path / "data", n_train=24, n_test=0, image_size=128, seed=2)
    store = open_store(str(tmp_path / "store"))
    ingest(str(src), store, progress=False)
    prepare_dataset(store, image_size=64, n_folds=2, workers=1)
    config = preset("ci", image_size=64, fpn_channels=32, epochs=2, max_parallel_folds=2)
    folds = range(config.n_folds)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order on both sides
    try:
        alone = create_run(store, config, "alone")
        for fold in folds:
            train_fold(store, alone, fold)
        together = create_run(store, config, "together")
        with ThreadPoolExecutor(config.execution.max_parallel_folds) as pool:
            list(pool.map(lambda fold: train_fold(store, together, fold), folds))
    finally:
        torch.set_num_threads(threads)

    for fold in folds:
        weights = [
            load_checkpoint(store, f"runs/{run}/fold-{fold}/checkpoint-last.pt")["model"]
            for run in (alone, together)
        ]
        assert weights[0].keys() == weights[1].keys()
        for name, tensor in weights[0].items():
            assert torch.equal(tensor, weights[1][name]), f"fold {fold}: {name} differs"
        oof = [
            store.get_text(f"runs/{run}/fold-{fold}/oof_predictions.csv")
            for run in (alone, together)
        ]
        assert oof[0] == oof[1]
