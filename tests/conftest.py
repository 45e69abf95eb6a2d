"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RSNA_SAMPLE = Path(os.environ.get("PNEUMO_RSNA_SAMPLE", REPO.parent / "shared" / "rsna-sample"))


@pytest.fixture(scope="session")
def rsna_sample() -> Path:
    """The real competition sample beside the repository; tests skip where it is absent."""
    if not (RSNA_SAMPLE / "stage_2_train_labels.csv").is_file():
        pytest.skip(f"real RSNA sample not found at {RSNA_SAMPLE} (set PNEUMO_RSNA_SAMPLE)")
    return RSNA_SAMPLE
