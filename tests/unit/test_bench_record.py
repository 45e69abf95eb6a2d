"""The benchmark record (one JSON line per figure) and the README table built from it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import record, table


@pytest.fixture
def results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(record, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(table, "RESULTS", tmp_path / "results")
    return tmp_path / "results"


def test_emit_appends_one_line_with_ratio_and_machine(results: Path) -> None:
    record.emit("decode", 2.0, "ms/image", baseline=5.0, limit=1.0, higher_is_better=False)
    record.emit("loader", 300.0, "images/s", baseline=50.0)
    lines = [json.loads(x) for x in record.results_file().read_text().splitlines()]
    assert [(x["name"], x["ratio"]) for x in lines] == [("decode", 2.5), ("loader", 6.0)]
    assert {"cpu", "cpus", "torch_threads", "device", "load_1min"} <= set(lines[0]["machine"])


def test_table_takes_each_figures_last_line_and_replaces_only_between_markers(
    results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record.emit("loader", 100.0, "images/s", baseline=50.0)
    record.emit("metric", 0.1, "s")
    record.emit("loader", 300.0, "images/s", baseline=50.0)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{table.START}\nold table\n{table.END}\nafter\n")
    rows = table.markdown(table.latest_figures(table.newest_results()), record.results_file())
    assert "| loader | 300 images/s | 50 | **6.00×** |" in rows
    assert "| metric | 0.1 s | – | – |" in rows
    assert "100 images/s" not in rows

    monkeypatch.setattr(sys, "argv", ["table", "--write", str(readme)])
    table.main()
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n")
    assert "old table" not in text and "| loader | 300 images/s" in text


def test_a_broken_results_line_is_named(results: Path) -> None:
    results.mkdir()
    bad = results / "2026-01-01-host.jsonl"
    bad.write_text('{"name": "x"}\nnot json\n')
    with pytest.raises(SystemExit, match=r"2026-01-01-host\.jsonl:2: not a JSON line"):
        table.latest_figures(bad)


def test_bench_results_names_one_file_for_a_whole_run(
    results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make bench` sets BENCH_RESULTS once, so a run that passes midnight stays one file."""
    named = tmp_path / "elsewhere" / "run.jsonl"
    monkeypatch.setenv("BENCH_RESULTS", str(named))
    record.emit("loader", 300.0, "images/s")
    assert [json.loads(x)["name"] for x in named.read_text().splitlines()] == ["loader"]
    assert not results.exists()
