"""The runs in a store at a glance, and two runs side by side.

Listing reads one listing of `runs/` (no per-run listing) and then the few small records
of each run (config.json, run.json, evaluation.json, submission.csv, kaggle-submissions.jsonl)
in parallel, so it stays quick on a store with hundreds of runs, on S3 as on a local folder.
A run whose records cannot be read is listed as damaged, with the reason; the others as usual.
"""

from __future__ import annotations

import math
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pneumo_core.config.run import RunConfig, flatten
from pneumo_core.errors import InputError, ObjectNotFound
from pneumo_core.layout import (
    CHAMPION_KEY,
    CONFIG,
    DONE,
    EVALUATION,
    KAGGLE_SUBMISSIONS,
    RECORD,
    RUNS,
    SUBMISSION,
    fold_name,
)
from pneumo_core.runs.champion import read_champion
from pneumo_core.runs.records import Evaluation
from pneumo_core.runs.run import Run
from pneumo_core.storage.base import ObjectStore

READERS = 16  # parallel GETs: the store's latency, not its bandwidth, bounds a listing


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    # ISO 8601 UTC: run.json's; for a run stored before records, the time in its id (None
    # for one named by hand)
    created: str | None
    preset: str | None
    folds_trained: int
    n_folds: int | None
    oof_map: (
        float | None
    )  # evaluation.json's oof_map: predictions of models that never saw the image
    test_images: int | None  # rows of submission.csv
    champion: bool
    submitted: int  # submissions Kaggle accepted
    config_hash: str | None
    damaged: str | None = None  # why the run's records could not be read; None when they could

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def created_from_id(run_id: str) -> str | None:
    """New run ids start with their UTC creation time (train.new_run_id)."""
    try:
        stamp = datetime.strptime(run_id[:15], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return stamp.isoformat()


def list_runs(store: ObjectStore) -> list[RunSummary]:
    """Every run with a config.json, newest first (runs without a known time last)."""
    names: dict[str, set[str]] = defaultdict(set)
    for key in store.list(RUNS):
        parts = key.split("/", 2)
        if len(parts) == 3:
            names[parts[1]].add(parts[2])
    champion = read_champion(store)
    champion_id = champion.run_id if champion else None
    run_ids = [r for r, files in names.items() if CONFIG in files]
    with ThreadPoolExecutor(READERS) as pool:
        summaries = list(
            pool.map(lambda r: _summary_or_damaged(store, r, names[r], r == champion_id), run_ids)
        )
    return sorted(summaries, key=lambda s: (s.created or "", s.run_id), reverse=True)


# What a damaged record raises: InputError (not JSON, a bad field), ValueError (a JSON line or
# text that does not decode), TypeError (a JSON value of the wrong kind). Storage errors are
# the machine's and still fail the listing.
_DAMAGE = (InputError, ValueError, TypeError)


def _summary_or_damaged(
    store: ObjectStore, run_id: str, files: set[str], champion: bool
) -> RunSummary:
    """The run's summary; one whose records cannot be read is listed as damaged, with why."""
    try:
        return _summary(store, run_id, files, champion)
    except _DAMAGE as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
    try:
        created = _created(Run(store, run_id), files)
    except _DAMAGE:
        created = created_from_id(run_id)
    return RunSummary(
        run_id=run_id,
        created=created,
        preset=None,
        folds_trained=0,
        n_folds=None,
        oof_map=None,
        test_images=None,
        champion=champion,
        submitted=0,
        config_hash=None,
        damaged=reason,
    )


def _created(run: Run, files: set[str]) -> str | None:
    """run.json's creation time, in UTC; the id's time for a run stored before records."""
    record = run.record() if RECORD in files else None
    if record is None:
        return created_from_id(run.run_id)
    try:
        stamp = datetime.fromisoformat(record.created)
    except ValueError:
        raise InputError(
            f"{run.url(RECORD)}: created {record.created!r} is not an ISO 8601 time"
        ) from None
    if stamp.tzinfo is None:  # written as UTC by Run.create
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC).isoformat(timespec="seconds")


def _summary(store: ObjectStore, run_id: str, files: set[str], champion: bool) -> RunSummary:
    """From the names `files` under the run's folder (one listing) and the few it holds."""
    run = Run(store, run_id)
    config = run.config_dict()
    if not isinstance(config, dict):
        raise InputError(f"{run.url(CONFIG)}: expected a JSON object")
    evaluation = run.evaluation() if EVALUATION in files else None
    test_images = None
    if SUBMISSION in files:
        test_images = max(0, len(store.get_text(run.submission_key).strip().splitlines()) - 1)
    submitted = 0
    if KAGGLE_SUBMISSIONS in files:
        submitted = sum(bool(r.get("submitted")) for r in run.kaggle_records())
    n_folds = config.get("n_folds")
    trained = sum(fold_name(k, DONE) in files for k in range(int(n_folds or 0)))
    return RunSummary(
        run_id=run_id,
        created=_created(run, files),
        preset=config.get("preset"),
        folds_trained=trained,
        n_folds=n_folds,
        oof_map=evaluation.oof_map if evaluation else None,
        test_images=test_images,
        champion=champion,
        submitted=submitted,
        config_hash=_config_hash(config),
    )


def _config_hash(config: dict) -> str | None:
    try:
        return RunConfig.from_dict(config).config_hash()
    except InputError:  # a configuration of an older layout: listed, without a hash
        return None


def champion_record(store: ObjectStore) -> dict[str, Any]:
    """models/champion.json as stored (with the reason it won, where recorded)."""
    try:
        return store.get_json(CHAMPION_KEY)
    except ObjectNotFound:
        raise InputError(f"no champion at {store.url(CHAMPION_KEY)}: no run promoted yet") from None


# --- comparing two runs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    run_a: str
    run_b: str
    config_rows: list[dict[str, Any]]  # {field, <run_a>, <run_b>} for the fields that differ
    figure_rows: list[dict[str, Any]]  # {figure, <run_a>, <run_b>}: per fold, OOF

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_runs(store: ObjectStore, run_a: str, run_b: str) -> Comparison:
    configs = [flatten(Run(store, r).config_dict()) for r in (run_a, run_b)]
    fields = sorted(set(configs[0]) | set(configs[1]))
    config_rows = [
        {"field": f, run_a: configs[0].get(f), run_b: configs[1].get(f)}
        for f in fields
        if f != "preset" and configs[0].get(f) != configs[1].get(f)
    ]
    evaluations = [Run(store, r).evaluation() or Evaluation() for r in (run_a, run_b)]
    return Comparison(run_a, run_b, config_rows, figure_rows(run_a, run_b, *evaluations))


def figure_rows(
    run_a: str, run_b: str, eval_a: Evaluation, eval_b: Evaluation
) -> list[dict[str, Any]]:
    """Per-fold mAP, then every whole-run figure evaluation.json holds, for both runs."""
    folds = [_fold_maps(eval_a), _fold_maps(eval_b)]
    eval_a, eval_b = _figures(eval_a), _figures(eval_b)
    rows = [
        {"figure": f"fold {k} mAP", run_a: folds[0].get(k), run_b: folds[1].get(k)}
        for k in sorted(set(folds[0]) | set(folds[1]))
    ]
    for name in sorted(set(eval_a) | set(eval_b)):
        a, b = eval_a.get(name), eval_b.get(name)
        if _is_figure(a) or _is_figure(b):
            rows.append({"figure": name, run_a: a, run_b: b})
    return rows


def _is_figure(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fold_maps(evaluation: Evaluation) -> dict[int, float | None]:
    return {r.fold: r.map for r in evaluation.per_fold}


def _figures(evaluation: Evaluation) -> dict[str, Any]:
    """The evaluation's fields as stored, less the record's own format version."""
    return evaluation.model_dump(exclude={"format_version"})
