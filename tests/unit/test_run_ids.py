"""Run ids: what they may be, checked before anything is written, and the Prefect keys
derived from them."""

from __future__ import annotations

import pytest
from prefect.types.names import raise_on_name_alphanumeric_dashes_only

from pneumo_core.config.run import preset
from pneumo_core.errors import InputError
from pneumo_core.layout import check_run_id
from pneumo_core.runs.ids import key_slug, new_run_id
from pneumo_core.runs.run import create_run
from pneumo_core.storage.open import open_store
from tasks.training import progress_key

GOOD = ["Exp_1", "v1.2", "exp-1", "EXP-1", "a", "20261127-101500-a1b2c3", "x" * 64]
BAD = ["My run", "-lead", ".hidden", "_x", "a/b", "a..b", "x" * 65, "é", "a\nb", "a%b"]


@pytest.mark.parametrize("run_id", GOOD)
def test_good_ids_give_valid_distinct_artifact_keys(run_id):
    assert check_run_id(run_id) == run_id
    key = progress_key(run_id, 3)
    raise_on_name_alphanumeric_dashes_only(key, "artifact key")  # Prefect's own rule


def test_slugs_are_distinct_for_distinct_ids():
    slugs = {key_slug(r) for r in GOOD}
    assert len(slugs) == len(GOOD)
    assert key_slug("exp-1") == "exp-1"  # already a valid key part: unchanged
    assert key_slug("Exp_1") != key_slug("exp-1") and key_slug("Exp_1").startswith("exp-1-")


def test_generated_ids_are_valid_and_empty_is_not():
    assert check_run_id(new_run_id())
    with pytest.raises(InputError, match="run id"):
        check_run_id("")


@pytest.mark.parametrize("run_id", BAD)
def test_bad_ids_are_refused_in_one_line_before_anything_is_written(run_id, tmp_path):
    store = open_store(tmp_path / "store")
    with pytest.raises(InputError, match="run id") as caught:
        create_run(store, preset("ci"), run_id)
    assert "\n" not in str(caught.value).replace(repr(run_id), "")
    assert store.list() == []
