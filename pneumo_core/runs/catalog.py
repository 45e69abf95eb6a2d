"""The runs in a store at a glance, and two runs side by side.

Listing reads one listing of `runs/` (no per-run listing) and then the few small records
of each run (config.json, evaluation.json, submission.csv, kaggle-submissions.jsonl) in
parallel, so it stays quick on a store with hundreds of runs, on S3 as on a local folder.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pneumo_core.config.run import RunConfig, flatten
from pneumo_core.errors import InputError, ObjectNotFound
from pneumo_core.runs.champion import CHAMPION_KEY, read_champion
from pneumo_core.runs.ids import run_key
from pneumo_core.runs.kaggle_submit import RECORD_NAME
from pneumo_core.storage.base import ObjectStore

READERS = 16  # parallel GETs: the store's latency, not its bandwidth, bounds a listing


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    created: str | None  # ISO 8601 UTC from the run id; None for a run named by hand
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
    """Every run with a config.json, newest first (runs without a time in the id last)."""
    names: dict[str, set[str]] = defaultdict(set)
    for key in store.list("runs/"):
        parts = key.split("/", 2)
        if len(parts) == 3:
            names[parts[1]].add(parts[2])
    champion = read_champion(store)
    champion_id = champion.run_id if champion else None
    run_ids = [r for r, files in names.items() if "config.json" in files]
    with ThreadPoolExecutor(READERS) as pool:
        summaries = list(
            pool.map(lambda r: _summary(store, r, names[r], r == champion_id), run_ids)
        )
    return sorted(summaries, key=lambda s: (s.created or "", s.run_id), reverse=True)


def _summary(store: ObjectStore, run_id: str, files: set[str], champion: bool) -> RunSummary:
    config = store.get_json(run_key(run_id, "config.json"))
    evaluation = _json_or_none(store, run_key(run_id, "evaluation.json"), files)
    submission = run_key(run_id, "submission.csv")
    test_images = None
    if "submission.csv" in files:
        test_images = max(0, len(store.get_text(submission).strip().splitlines()) - 1)
    submitted = 0
    if RECORD_NAME in files:
        lines = store.get_text(run_key(run_id, RECORD_NAME)).splitlines()
        submitted = sum(bool(json.loads(line).get("submitted")) for line in lines if line.strip())
    n_folds = config.get("n_folds")
    trained = sum(f"fold-{k}/done.json" in files for k in range(int(n_folds or 0)))
    return RunSummary(
        run_id=run_id,
        created=created_from_id(run_id),
        preset=config.get("preset"),
        folds_trained=trained,
        n_folds=n_folds,
        oof_map=(evaluation or {}).get("oof_map"),
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


def _json_or_none(store: ObjectStore, key: str, files: set[str]) -> dict | None:
    if key.rsplit("/", 1)[-1] not in files:
        return None
    try:
        return store.get_json(key)
    except ObjectNotFound:
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
    configs = [flatten(_stored(store, r, "config.json")) for r in (run_a, run_b)]
    fields = sorted(set(configs[0]) | set(configs[1]))
    config_rows = [
        {"field": f, run_a: configs[0].get(f), run_b: configs[1].get(f)}
        for f in fields
        if f != "preset" and configs[0].get(f) != configs[1].get(f)
    ]
    evaluations = [_evaluation(store, r) for r in (run_a, run_b)]
    return Comparison(run_a, run_b, config_rows, figure_rows(run_a, run_b, *evaluations))


def figure_rows(run_a: str, run_b: str, eval_a: dict, eval_b: dict) -> list[dict[str, Any]]:
    """Per-fold mAP, then every whole-run figure evaluation.json holds, for both runs."""
    folds = [_fold_maps(eval_a), _fold_maps(eval_b)]
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


def _fold_maps(evaluation: dict) -> dict[int, float | None]:
    return {int(r["fold"]): r.get("map") for r in evaluation.get("per_fold") or []}


def _stored(store: ObjectStore, run_id: str, name: str) -> dict:
    try:
        return store.get_json(run_key(run_id, name))
    except ObjectNotFound:
        raise InputError(f"run {run_id}: no {run_key(run_id, name)} in {store.uri}") from None


def _evaluation(store: ObjectStore, run_id: str) -> dict:
    _stored(store, run_id, "config.json")  # an unknown run is an error, not an empty column
    try:
        return store.get_json(run_key(run_id, "evaluation.json"))
    except ObjectNotFound:
        return {}
