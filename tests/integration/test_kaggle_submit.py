"""`pneumo submit` end to end on both stores: the real kaggle client talks HTTP to a local
stand-in for Kaggle's API (only the network is replaced)."""

from __future__ import annotations

import json

import pytest

from flows.cli.main import main
from pneumo_core import DEFAULT_DATASET
from pneumo_core.config.run import preset
from pneumo_core.layout import KAGGLE_SUBMISSIONS, run_key
from pneumo_core.runs import kaggle_submit
from pneumo_core.runs.run import Run, create_run
from pneumo_core.storage.base import ObjectStore
from tests.kaggle_stand_in import KaggleStandIn, kaggle_stand_in_fixture  # noqa: F401

TEST_IDS = ["test-a", "test-b", "test-c"]


def make_run(store: ObjectStore, rows: list[str] | None = None, oof_map: float = 0.4123) -> str:
    """A run with a configuration, an evaluation, a submission and the competition's sample."""
    run_id = create_run(store, preset("ci"))
    store.put_json(run_key(run_id, "evaluation.json"), {"oof_map": oof_map, "threshold": 0.3})
    header = "patientId,PredictionString\n"
    rows = rows if rows is not None else [f"{pid},0.9 10 20 30 40" for pid in TEST_IDS]
    store.put_text(run_key(run_id, "submission.csv"), header + "\n".join(rows) + "\n")
    sample = header + "".join(f"{pid},0.5 0 0 100 100\n" for pid in TEST_IDS)
    store.put_text(f"raw/{DEFAULT_DATASET}/stage_2_sample_submission.csv", sample)
    return run_id


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kaggle_submit, "BACKOFF_S", 0.01)


def test_submit_uploads_the_checked_file_and_records_it(
    cli_store: ObjectStore, kaggle_stand_in: KaggleStandIn, capsys: pytest.CaptureFixture
) -> None:
    store = cli_store
    run_id = make_run(store)
    assert main(["submit", "--run", run_id, "--storage", store.uri]) == 0
    out, err = capsys.readouterr()

    sent = store.get_bytes(run_key(run_id, "submission.csv"))
    assert list(kaggle_stand_in.uploads.values()) == [sent]
    (request,) = kaggle_stand_in.submissions
    assert request["competitionName"] == DEFAULT_DATASET
    message = request["submissionDescription"]
    config_hash = preset("ci").config_hash()
    assert run_id in message and "OOF mAP 0.4123" in message and config_hash[:12] in message

    (record,) = Run(store, run_id).kaggle_records()
    assert record["submitted"] is True and record["ref"] == 40001 and record["attempts"] == 1
    assert record["sha256"] == store.sha256(run_key(run_id, "submission.csv"))
    assert record["message"] == message and "Successfully submitted" in record["answer"]
    assert "submission 40001" in out
    stored = store.get_text(run_key(run_id, KAGGLE_SUBMISSIONS))
    for text in (out, err, stored):
        assert kaggle_stand_in.key not in text  # the API key is never printed nor stored


def test_an_invalid_submission_is_refused_before_any_upload(
    cli_store: ObjectStore, kaggle_stand_in: KaggleStandIn, capsys: pytest.CaptureFixture
) -> None:
    store = cli_store
    run_id = make_run(store, rows=["test-a,0.9 10 20 30", "test-a,", "stranger,"])
    assert main(["submit", "--run", run_id, "--storage", store.uri]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "row 2:" in err and "row 3: patientId test-a already on row 2" in err
    assert "stranger is not in the sample" in err and "test-b from the sample is missing" in err
    assert kaggle_stand_in.calls == [] and Run(store, run_id).kaggle_records() == []


def test_a_transient_failure_is_retried(
    cli_store: ObjectStore, kaggle_stand_in: KaggleStandIn, capsys: pytest.CaptureFixture
) -> None:
    store = cli_store
    run_id = make_run(store)
    kaggle_stand_in.fail = {"StartSubmissionUpload": [503], "upload": [500]}
    assert main(["submit", "--run", run_id, "--storage", store.uri, "--message", "m"]) == 0
    # try 1: 503 on start; try 2: the upload PUT fails (the client answers, not raises); try 3
    assert kaggle_stand_in.calls.count("StartSubmissionUpload") == 3
    (record,) = Run(store, run_id).kaggle_records()
    assert record["submitted"] and record["attempts"] == 3
    assert record["message"].startswith(f"m | pneumo run {run_id} | OOF mAP 0.4123 | config ")


def test_a_refusal_is_one_line_and_not_retried(
    cli_store: ObjectStore, kaggle_stand_in: KaggleStandIn, capsys: pytest.CaptureFixture
) -> None:
    store = cli_store
    run_id = make_run(store)
    kaggle_stand_in.fail = {"CreateSubmission": [400]}
    assert main(["submit", "--run", run_id, "--storage", store.uri]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HTTP 400" in err and "stand-in failure 400" in err
    assert kaggle_stand_in.calls.count("CreateSubmission") == 1
    (record,) = Run(store, run_id).kaggle_records()
    assert record["submitted"] is False and "HTTP 400" in record["answer"]
    assert record["ref"] is None


def test_wrong_credentials_name_the_fix(
    cli_store: ObjectStore,
    kaggle_stand_in: KaggleStandIn,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    store = cli_store
    run_id = make_run(store)
    monkeypatch.setenv("KAGGLE_KEY", "not-the-key")
    assert main(["submit", "--run", run_id, "--storage", store.uri]) == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "KAGGLE_USERNAME/KAGGLE_KEY" in err and "not-the-key" not in err
    assert kaggle_stand_in.calls == ["StartSubmissionUpload"]  # 4xx: no retry
    assert json.dumps(Run(store, run_id).kaggle_records()).count("not-the-key") == 0
