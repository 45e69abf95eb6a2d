"""`Run(store, run_id)`: a run's stored files, read and written through typed methods.

Callers never build a run's keys or parse its JSON themselves: the configuration comes back
as a `RunConfig`, a fold's result as a `FoldResult`, the evaluation as an `Evaluation`, and
an unknown run or a damaged record is one `InputError` naming the stored file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pneumo_core.config.run import RunConfig, preset, resumed
from pneumo_core.errors import InputError, ObjectNotFound
from pneumo_core.layout import (
    CONFIG,
    DONE,
    EVALUATION,
    KAGGLE_SUBMISSIONS,
    METRICS,
    MODEL_CARD,
    OOF_PREDICTIONS,
    PREDICTIONS,
    RECORD,
    REPORT,
    SUBMISSION,
    check_run_id,
    fold_key,
    fold_name,
    plot_key,
    run_key,
    run_prefix,
)
from pneumo_core.runs.ids import new_run_id
from pneumo_core.runs.records import Evaluation, FoldResult, RunRecord
from pneumo_core.storage.base import ObjectStore

log = logging.getLogger(__name__)


class Run:
    """One run of a store; cheap to make (no I/O until a method reads)."""

    def __init__(self, store: ObjectStore, run_id: str) -> None:
        self.store, self.run_id = store, check_run_id(run_id)

    @classmethod
    def create(
        cls,
        store: ObjectStore,
        config: RunConfig,
        run_id: str | None = None,
        source: str | None = None,
        manifest_digest: str | None = None,
    ) -> Run:
        """A new run with its configuration and record, or an existing one resumed: its
        recipe and data must be those it was made with (else InputError, nothing touched);
        new execution settings replace the stored ones."""
        run = cls(store, run_id or new_run_id())
        if run.exists():
            run._resume(config, manifest_digest)
            return run
        record = RunRecord(
            run_id=run.run_id,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            source=source,
            manifest_digest=manifest_digest,
        )
        store.put_json(run.key(RECORD), record.to_json())
        store.put_json(run.key(CONFIG), config.to_dict())
        return run

    def _resume(self, config: RunConfig, manifest_digest: str | None) -> None:
        stored = self.config()
        if stored.recipe() != config.recipe():
            raise InputError(f"run {self.run_id} already exists with a different recipe")
        record = self.record()
        recorded = record.manifest_digest if record else None
        if manifest_digest and recorded and manifest_digest != recorded:
            raise InputError(
                f"run {self.run_id} was trained on data set manifest {recorded[:12]}, the source "
                f"now gives {manifest_digest[:12]}: resume it with its own source "
                f"({record.source if record else 'unknown'}), or start a new run"
            )
        if stored.execution != config.execution:
            before, after = stored.execution.to_dict(), config.execution.to_dict()
            changed = ", ".join(
                f"{k} {before[k]!r} -> {v!r}" for k, v in after.items() if before[k] != v
            )
            log.info("run %s: execution settings changed: %s", self.run_id, changed)
            self.store.put_json(self.key(CONFIG), config.to_dict())

    # --- keys ------------------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return run_prefix(self.run_id)

    def key(self, name: str) -> str:
        return run_key(self.run_id, name)

    def fold_key(self, fold: int, name: str) -> str:
        return fold_key(self.run_id, fold, name)

    def plot_key(self, name: str) -> str:
        return plot_key(self.run_id, name)

    @property
    def submission_key(self) -> str:
        return self.key(SUBMISSION)

    @property
    def report_key(self) -> str:
        return self.key(REPORT)

    @property
    def card_key(self) -> str:
        return self.key(MODEL_CARD)

    def prediction_key(self, name: str) -> str:
        """Predictions for images outside the competition's test set, kept with the run."""
        return self.key(f"{PREDICTIONS}/{name}")

    def url(self, name: str) -> str:
        return self.store.url(self.key(name))

    # --- configuration and record ----------------------------------------------------------

    def exists(self) -> bool:
        return self.store.exists(self.key(CONFIG))

    def config(self) -> RunConfig:
        """The run's configuration; InputError for an unknown run."""
        return RunConfig.from_dict(self.config_dict())

    def config_dict(self) -> dict[str, Any]:
        """config.json as stored, for readers that must also show configurations an older
        pneumo wrote (listing and comparing runs)."""
        try:
            return self.store.get_json(self.key(CONFIG))
        except ObjectNotFound:
            raise InputError(
                f"run {self.run_id}: no {self.key(CONFIG)} in {self.store.uri}"
            ) from None

    def record(self) -> RunRecord | None:
        """When the run was made and from what; None for a run stored before records."""
        data = self.store.get_json_or_none(self.key(RECORD))
        return None if data is None else RunRecord.read(data, self.url(RECORD))

    # --- folds -----------------------------------------------------------------------------

    def fold_result(self, fold: int) -> FoldResult | None:
        """The fold's done.json; None while the fold is not trained."""
        key = self.fold_key(fold, DONE)
        data = self.store.get_json_or_none(key)
        return None if data is None else FoldResult.read(data, self.store.url(key))

    def write_fold_result(self, result: FoldResult) -> None:
        self.store.put_json(self.fold_key(result.fold, DONE), result.to_json())

    def fold_done(self, fold: int) -> bool:
        return self.store.exists(self.fold_key(fold, DONE))

    def fold_results(self, folds: range | list[int]) -> list[FoldResult]:
        """The results of those folds that are trained, in fold order."""
        return [r for fold in folds if (r := self.fold_result(fold)) is not None]

    def fold_history(self, fold: int) -> list[dict[str, Any]]:
        """The fold's metrics.jsonl records (one per epoch); empty before its first epoch."""
        return self._json_lines(self.fold_key(fold, METRICS))

    def write_fold_history(self, fold: int, history: list[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in history)
        self.store.put_text(self.fold_key(fold, METRICS), lines)

    def oof_keys(self) -> dict[int, str]:
        """Each fold's stored out-of-fold predictions, by fold."""
        keys = {}
        for key in self.store.list(self.prefix):
            name = key.removeprefix(self.prefix)
            fold = name.split("/", 1)[0].removeprefix("fold-")
            if fold.isdigit() and name == fold_name(int(fold), OOF_PREDICTIONS):
                keys[int(fold)] = key
        return dict(sorted(keys.items()))

    # --- evaluation and outputs ------------------------------------------------------------

    def evaluation(self) -> Evaluation | None:
        """evaluation.json; None before the run is evaluated."""
        data = self.store.get_json_or_none(self.key(EVALUATION))
        return None if data is None else Evaluation.read(data, self.url(EVALUATION))

    def write_evaluation(self, evaluation: Evaluation) -> None:
        self.store.put_json(self.key(EVALUATION), evaluation.to_json())

    def kaggle_records(self) -> list[dict[str, Any]]:
        """One record per Kaggle submission of this run, oldest first."""
        return self._json_lines(self.key(KAGGLE_SUBMISSIONS))

    def append_kaggle_record(self, record: dict[str, Any]) -> None:
        key = self.key(KAGGLE_SUBMISSIONS)
        text = self.store.get_text_or_none(key) or ""
        self.store.put_text(key, text + json.dumps(record, sort_keys=True) + "\n")

    def _json_lines(self, key: str) -> list[dict[str, Any]]:
        """The records of a JSON-lines object, oldest first; empty while it does not exist."""
        text = self.store.get_text_or_none(key) or ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def resolve_config(
    store: ObjectStore, preset_name: str | None, overrides: Mapping[str, Any], run_id: str | None
) -> RunConfig:
    """The configuration a run will use, built once from what was asked: for a new run the
    preset (default: "default") with the overrides; for an existing run its stored recipe
    with the execution settings asked now (a recipe change is refused, naming each field)."""
    if run_id is not None and (run := Run(store, run_id)).exists():
        return resumed(run.config(), run_id, preset_name, overrides)
    return preset(preset_name or "default", **overrides)


def create_run(store: ObjectStore, config: RunConfig, run_id: str | None = None) -> str:
    """`Run.create`'s id: a new run, or the same run again with the same configuration."""
    return Run.create(store, config, run_id).run_id


def load_run_config(store: ObjectStore, run_id: str) -> RunConfig:
    """`Run(store, run_id).config()`: InputError for an unknown run."""
    return Run(store, run_id).config()
