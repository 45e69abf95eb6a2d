"""`pneumo runs`, `pneumo champion`, `pneumo compare` and fresh links, on both stores: newest
first by the recorded creation time, a damaged run listed as such, an unknown run id refused."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx
import pytest

from flows.cli.main import main
from pneumo_core.config.run import preset
from pneumo_core.layout import CONFIG, RECORD, run_key
from pneumo_core.runs import champion, kaggle_submit
from pneumo_core.runs.catalog import created_from_id
from pneumo_core.runs.links import PUBLIC_ENDPOINT_ENV
from pneumo_core.runs.records import RunRecord
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
    created: str | None = None,
    **overrides: object,
) -> str:
    """A run as the pipeline leaves it: config, record, done folds, evaluation, submission;
    made at `created` (default: the time in its id)."""
    create_run(store, preset("ci", **overrides), run_id)
    set_created(store, run_id, created or created_from_id(run_id))
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


def set_created(store: ObjectStore, run_id: str, created: str | None) -> None:
    """The run's record says it was made at `created`."""
    record = RunRecord(run_id=run_id, created=created or "")
    store.put_json(run_key(run_id, RECORD), record.to_json())


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
        "damaged": None,
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


def test_runs_named_by_hand_sort_by_their_recorded_time(
    cli_store: ObjectStore, capsys: pytest.CaptureFixture
) -> None:
    store = cli_store
    make_run(store, "zeta-first", 1, [0.1], 0.1, created="2026-01-01T08:00:00+00:00")
    make_run(store, "alpha-later", 1, [0.1], 0.1, created="2026-03-01T08:00:00+00:00")
    before_records = make_run(store, "20260201-000000-dddddd", 1, [0.1], 0.1)
    store.delete(run_key(before_records, RECORD))  # stored before runs had a record
    create_run(store, preset("ci"), "named-now")  # as `pneumo run --run-id named-now` makes it
    assert main(["runs", "--storage", store.uri, "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in runs] == [
        "named-now", "alpha-later", before_records, "zeta-first",
    ]  # fmt: skip
    created = {r["run_id"]: r["created"] for r in runs}
    assert created["named-now"] == Run(store, "named-now").record().created
    assert created["alpha-later"] == "2026-03-01T08:00:00+00:00"
    assert created[before_records] == "2026-02-01T00:00:00+00:00"  # from the id, as before

    assert main(["runs", "--storage", store.uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[:3] == ["alpha-later", "2026-03-01", "08:00:00"]


def test_a_damaged_run_is_listed_as_damaged_and_the_others_as_usual(
    three_runs: ObjectStore, capsys: pytest.CaptureFixture
) -> None:
    store = three_runs
    for key in (run_key(OLD, CONFIG), run_key(HALF, RECORD)):
        store.put_text(key, store.get_text(key)[:20])  # cut off mid-write
    assert main(["runs", "--storage", store.uri, "--json"]) == 0
    runs = {r["run_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(runs) == [HALF, NEW, OLD]
    assert f"{run_key(OLD, CONFIG)} is not valid JSON" in runs[OLD]["damaged"]
    assert runs[OLD]["created"] == "2026-11-01T10:10:10+00:00"  # its record still reads
    assert f"{run_key(HALF, RECORD)} is not valid JSON" in runs[HALF]["damaged"]
    assert runs[HALF]["created"] == "2026-11-25T12:00:00+00:00"  # from the id
    assert runs[NEW]["damaged"] is None and runs[NEW]["oof_map"] == 0.42

    assert main(["runs", "--storage", store.uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    old_row = next(line.split() for line in lines if line.split()[:1] == [OLD])
    assert old_row[3] == "damaged"
    notes = [line for line in lines if line.startswith("damaged: ")]
    assert len(notes) == 2 and notes[1].startswith(f"damaged: run {OLD}: ")


def test_an_unknown_run_id_is_one_line_exit_2_in_every_command(
    three_runs: ObjectStore, capsys: pytest.CaptureFixture
) -> None:
    unknown = "no-such-run"
    for argv in (
        ["runs", "--links", unknown],
        ["compare", OLD, unknown],
        ["submit", "--run", unknown],
    ):
        assert main([*argv, "--storage", three_runs.uri]) == 2, argv
        out, err = capsys.readouterr()
        assert err.count("\n") == 1 and out == "", (argv, err, out)
        assert f"run {unknown}: no {run_key(unknown, CONFIG)} in {three_runs.uri}" in err, err
