"""`pneumo runs`, `pneumo champion`, `pneumo compare` and fresh links, on both stores."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx
import pytest

from flows.cli.main import main
from pneumo_core.config.run import preset
from pneumo_core.layout import run_key
from pneumo_core.runs import champion, kaggle_submit
from pneumo_core.runs.links import PUBLIC_ENDPOINT_ENV
from pneumo_core.runs.run import Run, create_run
from pneumo_core.storage.base import ObjectStore
from tests.conftest import S3Server


def make_run(
    store: ObjectStore,
    run_id: str,
    folds_done: int,
    per_fold: list[float],
    oof_map: float,
    test_images: int = 3,
    **overrides: object,
) -> str:
    """A run as the pipeline leaves it: config, done folds, evaluation, submission."""
    create_run(store, preset("ci", **overrides), run_id)
    for k in range(folds_done):
        store.put_json(run_key(run_id, f"fold-{k}/done.json"), {"fold": k})
        store.put_bytes(run_key(run_id, f"fold-{k}/checkpoint-best.pt"), b"weights %d" % k)
    store.put_json(
        run_key(run_id, "evaluation.json"),
        {
            "oof_map": oof_map,
            "threshold": 0.3,
            "images": 10,
            "per_fold": [{"fold": k, "map": m} for k, m in enumerate(per_fold)],
        },
    )
    rows = "".join(f"t{i},\n" for i in range(test_images))
    store.put_text(run_key(run_id, "submission.csv"), "patientId,PredictionString\n" + rows)
    store.put_text(run_key(run_id, "report.md"), f"# Run {run_id}\n")
    return run_id


OLD, NEW, HALF = "20261101-101010-aaaaaa", "20261120-090000-bbbbbb", "20261125-120000-cccccc"


@pytest.fixture
def three_runs(cli_store: ObjectStore) -> ObjectStore:
    store = cli_store
    make_run(store, OLD, 2, [0.30, 0.32], 0.31)
    make_run(store, NEW, 2, [0.40, 0.44], 0.42, test_images=5, lr=5e-4, **{"augment.hflip_p": 0.0})
    make_run(store, HALF, 1, [0.2], 0.2)  # still training: one fold of two
    champion.promote_if_better(store, champion.candidate(OLD, 0.31, "h-old"))
    decision = champion.promote_if_better(store, champion.candidate(NEW, 0.42, "h-new"))
    assert decision.promoted
    store.put_text("test-promotion-reason.txt", decision.reason)
    record = kaggle_submit.SubmissionRecord(
        "2026-11-21T00:00:00+00:00", NEW, "c", "m", "f", "s", True, "ok", 1, 1
    )
    Run(store, NEW).append_kaggle_record(record.to_dict())
    return store


def test_runs_lists_newest_first_with_champion_and_submissions(
    three_runs: ObjectStore, capsys: pytest.CaptureFixture
) -> None:
    assert main(["runs", "--storage", three_runs.uri, "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in runs] == [HALF, NEW, OLD]
    by_id = {r["run_id"]: r for r in runs}
    assert by_id[NEW] | {"config_hash": None} == {
        "run_id": NEW,
        "created": "2026-11-20T09:00:00+00:00",
        "preset": "ci",
        "folds_trained": 2,
        "n_folds": 2,
        "oof_map": 0.42,
        "test_images": 5,
        "champion": True,
        "submitted": 1,
        "config_hash": None,
    }
    assert (
        by_id[NEW]["config_hash"] == preset("ci", lr=5e-4, **{"augment.hflip_p": 0.0}).config_hash()
    )
    assert by_id[HALF]["folds_trained"] == 1 and not by_id[HALF]["champion"]
    assert by_id[OLD]["submitted"] == 0

    assert main(["runs", "--storage", three_runs.uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        *("run", "created", "(UTC)", "preset", "folds", "OOF", "mAP", "test", "submitted")
    ]
    expected = ["*", NEW, "2026-11-20", "09:00:00", "ci", "2/2", "0.4200", "5", "yes", "(1)"]
    assert lines[2].split() == expected
    assert lines[3].split()[-3:] == ["0.3100", "3", "no"]


def test_champion_says_why_it_won(three_runs: ObjectStore, capsys: pytest.CaptureFixture) -> None:
    assert main(["champion", "--storage", three_runs.uri]) == 0
    out = capsys.readouterr().out
    assert f"champion: run {NEW}, OOF mAP 0.4200" in out
    assert f"why: {three_runs.get_text('test-promotion-reason.txt')}\n" in out


def test_champion_of_an_empty_store_is_a_clear_error(
    cli_store: ObjectStore, capsys: pytest.CaptureFixture
) -> None:
    assert main(["champion", "--storage", cli_store.uri]) == 2
    assert "no champion at" in capsys.readouterr().err


def test_compare_shows_differing_fields_and_figures(
    three_runs: ObjectStore, capsys: pytest.CaptureFixture
) -> None:
    assert main(["compare", OLD, NEW, "--storage", three_runs.uri, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config_rows"] == [
        {"field": "augment.hflip_p", OLD: 0.5, NEW: 0.0},
        {"field": "lr", OLD: preset("ci").lr, NEW: 5e-4},
    ]
    figures = {r["figure"]: (r[OLD], r[NEW]) for r in result["figure_rows"]}
    assert figures["fold 0 mAP"] == (0.30, 0.40) and figures["fold 1 mAP"] == (0.32, 0.44)
    assert figures["oof_map"] == (0.31, 0.42) and figures["images"] == (10, 10)

    assert main(["compare", OLD, NEW, "--storage", three_runs.uri]) == 0
    out = capsys.readouterr().out
    assert "lr" in out and "fold 1 mAP  0.3200" in out.replace("   ", "  ")

    assert main(["compare", OLD, "no-such-run", "--storage", three_runs.uri]) == 2
    assert "run no-such-run: no runs/no-such-run/config.json" in capsys.readouterr().err


def test_fresh_links_on_a_file_store(tmp_path, capsys: pytest.CaptureFixture) -> None:
    from pneumo_core.storage.open import open_store

    store = open_store(tmp_path / "store")
    make_run(store, OLD, 1, [0.3], 0.3)
    assert main(["runs", "--storage", store.uri, "--links", OLD]) == 0
    out = capsys.readouterr().out
    assert f"{OLD}/report.md: file://" in out and "fold-0/checkpoint-best.pt" in out


def test_public_links_download_from_the_public_endpoint(
    seaweedfs: S3Server,
    s3_env: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """Workers use the endpoint as configured (127.0.0.1); a browser reaches the same server
    under another name (localhost here, http://HOST:8333 in the compose stack)."""
    from pneumo_core.storage.open import open_store

    store = open_store(s3_env)
    make_run(store, OLD, 1, [0.3], 0.3)
    public = seaweedfs.endpoint.replace("127.0.0.1", "localhost")
    monkeypatch.setenv(PUBLIC_ENDPOINT_ENV, public)
    assert main(["runs", "--storage", s3_env, "--links", OLD]) == 0
    out = capsys.readouterr().out
    links = dict(line.split(": ", 1) for line in out.splitlines())
    url, note = links[f"{OLD}/report.md"].split("  (")
    assert urlsplit(url).netloc == urlsplit(public).netloc
    assert "expires 20" in note and "pneumo runs --links RUN_ID" in note
    assert httpx.get(url).content == store.get_bytes(run_key(OLD, "report.md"))
    url = links[f"{OLD}/fold-0/checkpoint-best.pt"].split("  (")[0]
    assert httpx.get(url).content == b"weights 0"
    # the workers' link, opened at the public address, is refused: signing for it matters
    internal = store.presigned_url(run_key(OLD, "report.md"))
    assert httpx.get(internal.replace("127.0.0.1", "localhost")).status_code == 403


def test_report_champion_section_shows_the_comparison(three_runs: ObjectStore) -> None:
    from pneumo_core.reports.report import render_markdown
    from pneumo_core.runs.catalog import compare_runs

    decision = champion.Decision(
        True, "better", champion.candidate(NEW, 0.42, "h"), champion.candidate(OLD, 0.31, "h")
    )
    evaluation = Run(three_runs, NEW).evaluation()
    config = three_runs.get_json(run_key(NEW, "config.json"))
    comparison = compare_runs(three_runs, NEW, OLD)
    markdown = render_markdown(NEW, config, evaluation, [], decision, [], comparison=comparison)
    champion_section = markdown.split("## Champion")[1]
    assert f"differ from run {OLD}" in champion_section
    assert f"| field | {NEW} | {OLD} |" in champion_section
    assert "| augment.hflip_p | 0.0000 | 0.5000 |" in champion_section
    assert "| fold 1 mAP | 0.4400 | 0.3200 |" in champion_section
