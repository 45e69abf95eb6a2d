"""Promotion: a run becomes the champion only by beating it by more than the margin."""

from __future__ import annotations

import math

import pytest

from pneumo_core.errors import InputError
from pneumo_core.runs import champion
from pneumo_core.storage.open import open_store


@pytest.fixture
def store(tmp_path):
    return open_store(tmp_path.as_uri())


def make(run_id: str, oof_map: float, data: str = "m1", labels: str = "l1", protocol="p1"):
    return champion.candidate(run_id, oof_map, f"hash-{run_id}", data, labels, protocol)


def test_first_run_becomes_champion_and_is_recorded(store):
    decision = champion.promote_if_better(store, make("run-a", 0.10), margin=0.01)
    assert decision.promoted and decision.previous is None
    assert "no champion yet" in decision.reason
    stored = champion.read_champion(store)
    assert stored == decision.candidate
    assert champion.champion_run_id(store) == "run-a"
    record = store.get_json(champion.CHAMPION_KEY)
    assert set(record) == {
        *("run_id", "oof_map", "config_hash", "created", "reason"),
        *("manifest_digest", "labels_digest", "protocol"),
    }
    assert record["reason"] == decision.reason  # `pneumo champion` says why it won


@pytest.mark.parametrize(
    ("new_map", "promoted"),
    [(0.2101, True), (0.21, False), (0.205, False), (0.1, False)],
)
def test_promotion_needs_more_than_the_margin(store, new_map, promoted):
    champion.promote_if_better(store, make("run-a", 0.20), margin=0.01)
    decision = champion.promote_if_better(store, make("run-b", new_map), margin=0.01)
    assert decision.promoted is promoted
    assert decision.previous.run_id == "run-a"
    assert champion.champion_run_id(store) == ("run-b" if promoted else "run-a")
    assert ("promoted" if promoted else "not promoted") in decision.reason
    assert decision.champion.run_id == champion.champion_run_id(store)


def test_same_run_is_not_promoted_twice(store):
    champion.promote_if_better(store, make("run-a", 0.3), margin=0.0)
    before = store.get_bytes(champion.CHAMPION_KEY)
    decision = champion.promote_if_better(store, make("run-a", 0.9), margin=0.0)
    assert not decision.promoted and "already the champion" in decision.reason
    assert store.get_bytes(champion.CHAMPION_KEY) == before


def test_nan_score_is_never_promoted(store):
    decision = champion.decide(make("run-a", math.nan), None)
    assert not decision.promoted and "finite" in decision.reason


def test_negative_margin_is_rejected():
    with pytest.raises(InputError, match="margin"):
        champion.decide(make("run-a", 0.1), None, margin=-0.1)


def test_no_champion_is_a_clear_error(store):
    assert champion.read_champion(store) is None
    with pytest.raises(InputError, match="no champion"):
        champion.champion_run_id(store)


def test_corrupt_champion_file_names_the_file(store):
    store.put_json(champion.CHAMPION_KEY, {"run_id": "x"})
    with pytest.raises(InputError, match=r"models/champion\.json"):
        champion.read_champion(store)


@pytest.mark.parametrize(
    ("changed", "words"),
    [
        ({"data": "m2"}, "different data set (manifest digest): m2"),
        ({"labels": "l2"}, "different labels: l2"),
        ({"protocol": "p2"}, "different evaluation protocol: p2"),
    ],
)
def test_a_run_on_other_data_or_protocol_is_not_comparable(store, changed, words):
    champion.promote_if_better(store, make("run-a", 0.20), margin=0.0)
    decision = champion.promote_if_better(store, make("run-b", 0.90, **changed), margin=0.0)
    assert not decision.promoted and "not comparable" in decision.reason
    assert words in decision.reason
    assert champion.champion_run_id(store) == "run-a"


def test_a_champion_without_digests_is_replaced_by_the_first_comparable_run(store):
    old = {"run_id": "old", "oof_map": 0.9, "config_hash": "h", "created": "2024-01-01"}
    store.put_json(champion.CHAMPION_KEY, old)  # written before digests existed
    decision = champion.promote_if_better(store, make("run-b", 0.10), margin=0.0)
    assert decision.promoted and "unknown data" in decision.reason
    assert champion.read_champion(store).manifest_digest == "m1"


def test_data_digests_come_from_the_manifest(store):
    members = [
        {"key": "raw/d/stage_2_train_labels.csv", "size": 1, "sha256": "aa"},
        {"key": "raw/d/stage_2_detailed_class_info.csv", "size": 1, "sha256": "bb"},
    ]
    store.put_json("raw/d/manifest.json", {"digest": "dd", "members": members})
    assert champion.data_digests(store, "raw/d/manifest.json") == ("dd", "aa")
    with pytest.raises(InputError, match="ingest"):
        champion.data_digests(store, "raw/other/manifest.json")
