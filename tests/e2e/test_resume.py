"""A fold killed mid-run (SIGKILL, no chance to clean up) resumes from its last checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pneumo_core.data.ingest import ingest
from pneumo_core.data.prepare import prepare_dataset
from pneumo_core.data.synthetic import generate
from pneumo_core.storage.open import open_store
from pneumo_core.train.checkpoint import load_checkpoint
from pneumo_core.train.fold import train_fold

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 4
pytestmark = pytest.mark.slow


def _train_fold(storage: str, run: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "flows.cli", "train-fold", "--run", run, "--fold", "0",
            "--storage", storage, "--preset", "ci", "--set", f"epochs={EPOCHS}",
            "--set", "image_size=64", "--set", "fpn_channels=32"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(argv, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def _trained_epochs(log: str) -> list[int]:
    return [int(e) for e in re.findall(r"fold 0 epoch (\d+): ", log)]


def test_killed_fold_resumes_without_repeating_an_epoch(tmp_path):
    src = generate(tmp_path / "data", n_train=60, n_test=2, image_size=128, seed=1)
    store = open_store(str(tmp_path / "store"))
    ingest(str(src), store, progress=False)
    prepare_dataset(store, image_size=64, n_folds=2, workers=1)
    storage, run = store.uri, "resume"
    last = tmp_path / "store" / "runs" / run / "fold-0" / "checkpoint-last.pt"

    first = _train_fold(storage, run)
    deadline = time.monotonic() + 300
    while not last.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert last.exists() and first.poll() is None, "the first epoch never finished"
    first.send_signal(signal.SIGKILL)
    _, first_log = first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    assert not store.exists(f"runs/{run}/fold-0/done.json")
    saved = load_checkpoint(store, f"runs/{run}/fold-0/checkpoint-last.pt")["epoch"]
    assert saved < EPOCHS - 1, "killed too late to test resuming"
    assert set(_trained_epochs(first_log)) <= set(range(saved + 1))

    second = _train_fold(storage, run)
    _, second_log = second.communicate(timeout=600)
    assert second.returncode == 0, second_log[-2000:]
    assert f"resuming after epoch {saved}" in second_log
    assert _trained_epochs(second_log) == list(range(saved + 1, EPOCHS))
    metrics = store.get_text(f"runs/{run}/fold-0/metrics.jsonl").splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == list(range(EPOCHS))
    done = store.get_json(f"runs/{run}/fold-0/done.json")
    assert done["epochs"] == EPOCHS

    # A finished fold is not trained again: the stored result comes straight back.
    started = time.monotonic()
    assert train_fold(store, run, 0).to_json() == done
    assert time.monotonic() - started < 5
