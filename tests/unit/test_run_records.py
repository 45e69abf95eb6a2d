"""A run's stored records through `Run`: written once with their version, older records read,
newer ones refused by name, an unknown run refused in one line."""

from __future__ import annotations

import pytest

from pneumo_core.config.run import preset
from pneumo_core.errors import InputError
from pneumo_core.layout import DONE, EVALUATION, RECORD
from pneumo_core.runs.records import Evaluation, FoldResult
from pneumo_core.runs.run import Run
from pneumo_core.storage.local import LocalStore


@pytest.fixture
def run(tmp_path) -> Run:
    return Run.create(LocalStore(tmp_path), preset("ci"), "exp-1", "data.zip", "abc123")


def test_creating_a_run_records_when_and_from_what(run: Run) -> None:
    record = run.record()
    assert (record.run_id, record.source, record.manifest_digest) == ("exp-1", "data.zip", "abc123")
    assert record.created.endswith("+00:00")
    assert run.store.get_json(run.key(RECORD))["format_version"] == 1
    assert "created" not in run.store.get_json(run.key("config.json"))  # facts, not config


def test_the_same_recipe_again_is_the_same_run_and_another_is_refused(run: Run) -> None:
    again = Run.create(run.store, preset("ci"), "exp-1", "other.zip")
    assert again.record().source == "data.zip"  # the record is written once
    with pytest.raises(InputError, match="exp-1 already exists with a different recipe"):
        Run.create(run.store, preset("ci", epochs=3), "exp-1")
    assert run.config() == preset("ci")


def test_a_resume_may_change_execution_settings_never_the_hash(run: Run) -> None:
    faster = preset("ci", **{"execution.num_workers": 4, "execution.device": "cpu"})
    Run.create(run.store, faster, "exp-1")
    assert run.config().execution.num_workers == 4 and run.config().execution.device == "cpu"
    assert run.config().config_hash() == preset("ci").config_hash()
    assert run.config().recipe() == preset("ci").recipe()


def test_a_resume_on_other_data_is_refused_naming_both_digests(run: Run) -> None:
    before = run.store.get_json(run.key("config.json"))
    with pytest.raises(InputError, match=r"manifest abc123.*gives fff999.*data\.zip"):
        Run.create(run.store, preset("ci", num_workers=3), "exp-1", "other.zip", "fff999")
    assert run.store.get_json(run.key("config.json")) == before  # nothing of the run touched


def test_records_round_trip_through_the_store(run: Run) -> None:
    result = FoldResult(run_id="exp-1", fold=1, epochs=3, best_epoch=2, best_val_map=0.4)
    run.write_fold_result(result)
    assert run.fold_result(1) == result and run.fold_done(1) and run.fold_result(0) is None
    assert run.store.get_json(run.fold_key(1, DONE))["format_version"] == 1
    evaluation = Evaluation(run_id="exp-1", oof_map=0.3, per_fold=[{"fold": 1, "map": 0.3}])
    run.write_evaluation(evaluation)
    assert run.evaluation() == evaluation and run.evaluation().per_fold[0].map == 0.3


def test_a_record_written_before_versions_reads_as_version_one(run: Run) -> None:
    run.store.put_json(run.key(EVALUATION), {"oof_map": 0.5, "threshold": 0.3})
    evaluation = run.evaluation()
    assert (evaluation.oof_map, evaluation.threshold, evaluation.protocol) == (0.5, 0.3, None)


def test_a_newer_record_is_refused_naming_the_file(run: Run) -> None:
    run.store.put_json(run.fold_key(0, DONE), {"fold": 0, "format_version": 2})
    with pytest.raises(InputError, match=r"fold-0/done.json: format version 2 is newer"):
        run.fold_result(0)


def test_a_damaged_record_names_the_file_and_field(run: Run) -> None:
    run.store.put_json(run.key(EVALUATION), {"oof_map": "high"})
    with pytest.raises(InputError, match=r"evaluation.json: field oof_map"):
        run.evaluation()


def test_an_unknown_run_is_one_line_and_a_bad_id_is_refused(tmp_path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(InputError, match=r"run nope: no runs/nope/config\.json"):
        Run(store, "nope").config()
    with pytest.raises(InputError, match=r"run id '\.\./x'"):
        Run(store, "../x")
