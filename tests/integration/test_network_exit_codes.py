"""The network's failures are the machine's, not the user's: exit 1 with one line, for a
Kaggle submission, a Kaggle download and a weights download. The real kaggle client and
torchvision's real download talk to local servers (only the network is replaced)."""

from __future__ import annotations

import pytest

from flows.cli.main import main
from pneumo_core import DEFAULT_DATASET
from pneumo_core.config.run import preset
from pneumo_core.layout import SAMPLE_SUBMISSION, SUBMISSION, raw_key, run_key
from pneumo_core.runs import kaggle_submit
from pneumo_core.runs.run import Run, create_run
from pneumo_core.storage.base import ObjectStore
from tests.kaggle_stand_in import KaggleStandIn, kaggle_stand_in_fixture  # noqa: F401


def make_run(store: ObjectStore) -> str:
    """A run with a valid submission.csv, and the competition's sample submission."""
    run_id = create_run(store, preset("ci"))
    text = "patientId,PredictionString\ntest-a,0.9 10 20 30 40\n"
    store.put_text(run_key(run_id, SUBMISSION), text)
    store.put_text(raw_key(DEFAULT_DATASET, SAMPLE_SUBMISSION), text)
    return run_id


def test_kaggle_failing_on_every_submission_try_exits_1(
    cli_store: ObjectStore,
    kaggle_stand_in: KaggleStandIn,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setattr(kaggle_submit, "BACKOFF_S", 0.01)
    run_id = make_run(cli_store)
    kaggle_stand_in.fail = {"StartSubmissionUpload": [503] * kaggle_submit.ATTEMPTS}
    assert main(["submit", "--run", run_id, "--storage", cli_store.uri]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HTTP 503" in err
    (record,) = Run(cli_store, run_id).kaggle_records()
    assert record["submitted"] is False and record["attempts"] == kaggle_submit.ATTEMPTS


def test_kaggle_failing_the_download_exits_1_in_one_line(
    kaggle_stand_in: KaggleStandIn, tmp_path, capsys: pytest.CaptureFixture
) -> None:
    kaggle_stand_in.fail = {"DownloadDataFiles": [503] * 10}
    store = tmp_path / "store"
    argv = ["ingest", "--source", "kaggle://rsna-pneumonia-detection-challenge"]
    assert main([*argv, "--storage", str(store)]) == 1
    err = capsys.readouterr().err.splitlines()[-1]  # ingest logs its progress; the error is last
    assert err.startswith("pneumo ingest: error: Kaggle failed the download of "), err
    assert "(HTTP 503)" in err and "--debug" not in err
    assert not list(store.rglob("manifest.json"))


def test_a_weights_server_out_of_reach_exits_1(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    torchvision = pytest.importorskip("torchvision")
    published = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty hub cache
    # port 9 (discard) on the loopback: nothing listens, the connection is refused
    monkeypatch.setattr(published.value, "url", "http://127.0.0.1:9/resnet18-f37072fd.pth")
    store = tmp_path / "store"
    assert main(["weights", "fetch", "--backbone", "resnet18", "--storage", str(store)]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert "could not fetch" in err and "pneumo weights fetch" in err
    assert not list(store.rglob("*.pth"))
