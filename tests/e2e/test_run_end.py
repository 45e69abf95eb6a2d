"""A run whose folds trained is never thrown away at the end: a test DICOM prepare quarantined,
objects of an earlier ingest and a failing prediction step all still end with an evaluation,
a promotion decision and a report; a resume then redoes only the failed prediction."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest

from flows.pipeline import pipeline
from pneumo_core import DEFAULT_DATASET
from pneumo_core.data.ingest import ingest
from pneumo_core.data.synthetic import generate
from pneumo_core.layout import prepared_prefix
from pneumo_core.model import predict
from pneumo_core.runs import champion
from pneumo_core.storage.open import open_store
from tests.e2e.test_flows import eventually, latest_pipeline_run, task_runs

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

OVERRIDES = {"image_size": 64, "epochs": 1}
RAW = f"raw/{DEFAULT_DATASET}"


def _rows(text: str) -> dict[str, str]:
    return {r["patientId"]: r["PredictionString"] for r in csv.DictReader(text.splitlines())}


def test_bad_test_image_strays_and_failed_predict_still_end_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    torch.set_num_threads(1)
    data = generate(tmp_path / "data", n_train=24, n_test=4, image_size=96, seed=5)
    bad = sorted((data / "stage_2_test_images").glob("*.dcm"))[0]
    bad.write_bytes(bad.read_bytes()[:300])  # truncated: prepare quarantines it
    store = open_store(tmp_path / "store")
    # An earlier ingest of another source leaves its test images in the store.
    other = generate(tmp_path / "other", n_train=4, n_test=2, image_size=96, seed=9)
    ingest(str(other), store, progress=False)
    strays = {p.stem for p in (other / "stage_2_test_images").glob("*.dcm")}
    wanted = _rows((data / "stage_2_sample_submission.csv").read_text())
    assert strays and not strays & set(wanted)

    # First run: the store refuses the submission object (a folder holds its name), so the
    # prediction step fails after every fold trained.
    run_id = "end-test"
    blocker = tmp_path / "store" / "runs" / run_id / "submission.csv"
    blocker.mkdir(parents=True)
    state = pipeline(
        source=str(data), storage=store.uri, preset="ci", overrides=OVERRIDES, run_id=run_id,
        return_state=True,
    )  # fmt: skip
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "the last step, predict-test-images, failed" in message
    assert "submission.csv" in message
    evaluation = store.get_bytes(f"runs/{run_id}/evaluation.json")
    report = store.get_text(f"runs/{run_id}/report.md")
    assert "Predicting the test images failed" in report and "**promoted**" in report
    assert champion.read_champion(store).run_id == run_id
    checkpoints = {f: store.get_bytes(f"runs/{run_id}/fold-{f}/checkpoint-last.pt") for f in (0, 1)}

    # The cause fixed, a resume redoes only the prediction (no training, no evaluation); a
    # prepared object damaged meanwhile is found by its checksum and rebuilt before use.
    blocker.rmdir()
    damaged = f"{prepared_prefix(DEFAULT_DATASET, 64)}images-test.npy"
    whole = store.get_bytes(damaged)
    store.put_bytes(damaged, whole[:-100])
    resumed = pipeline(
        source=str(data), storage=store.uri, preset="ci", overrides=OVERRIDES, run_id=run_id,
        return_state=True,
    )  # fmt: skip
    assert resumed.is_completed(), resumed.message
    submission = _rows(store.get_text(f"runs/{run_id}/submission.csv"))
    assert set(submission) == set(wanted)  # the manifest's test images, no stray
    assert submission[bad.stem] == ""
    report = store.get_text(f"runs/{run_id}/report.md")
    assert bad.stem in report and "could not be read" in report
    assert store.get_bytes(f"runs/{run_id}/evaluation.json") == evaluation
    for fold, before in checkpoints.items():
        assert store.get_bytes(f"runs/{run_id}/fold-{fold}/checkpoint-last.pt") == before
    flow_run = latest_pipeline_run()
    runs = eventually(lambda: task_runs([flow_run.id]), lambda r: "report" in r)
    assert "predict-test-images" in runs and "evaluate" not in runs
    assert store.get_bytes(damaged) == whole and "does not match the sha256" in caplog.text

    # Predicting a store prefix reads bytes: the warning names the object, never "<bytes>".
    caplog.set_level(logging.WARNING, logger="pneumo_core.model.predict")
    out = predict.predict_images(
        store, run_id, store.url(f"{RAW}/stage_2_test_images"), tmp_path / "all.csv"
    )
    assert _rows(out.read_text())[bad.stem] == ""
    assert f"stage_2_test_images/{bad.name}" in caplog.text and "<bytes>" not in caplog.text
