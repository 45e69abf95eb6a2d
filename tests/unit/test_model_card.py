"""The model card is built from the run's stored records and says what it is not for."""

from __future__ import annotations

import json

import pytest

from pneumo_core.config.run import preset
from pneumo_core.errors import InputError
from pneumo_core.layout import MODEL_CARD, run_key
from pneumo_core.reports.model_card import write_model_card
from pneumo_core.runs.run import create_run
from tests.conftest import TinyPrepared


def test_model_card_carries_the_runs_own_figures(tiny_prepared: TinyPrepared) -> None:
    store = tiny_prepared.store
    prefix = f"prepared/{tiny_prepared.dataset}/{tiny_prepared.image_size}/"
    summary = store.get_json(prefix + "summary.json")
    summary |= {"manifest_digest": "d1g3st", "n_train": 8, "n_test": 2, "n_boxes": 6}
    store.put_json(prefix + "summary.json", summary)
    store.put_text(
        prefix + "quarantine.csv",
        "patientId,split,key,reason\nbroken-1,train,raw/b.dcm,not a DICOM file\n",
    )
    config = preset("ci", dataset=tiny_prepared.dataset, image_size=tiny_prepared.image_size)
    run_id = create_run(store, config)
    info = {"weights": "resnet18-f37072fd.pth", "weights_sha256": "ab" * 32, "frozen_bn": True}
    for fold in (0, 1):
        store.put_json(
            run_key(run_id, f"fold-{fold}/done.json"),
            {"fold": fold, "epochs": 3, "best_epoch": 2, "best_val_map": 0.25, "n_train": 4,
             "device": "cuda", "model_info": info | {"weights_origin": "store s3://b/x"}},
        )  # fmt: skip
        history = [{"epoch": e, "train_seconds": 600.0} for e in range(3)]
        store.put_text(
            run_key(run_id, f"fold-{fold}/metrics.jsonl"),
            "".join(json.dumps(r) + "\n" for r in history),
        )
    evaluation = {
        "oof_map": 0.2345, "oof_map_se": 0.012, "oof_map_in_sample": 0.2611,
        "per_fold": [{"fold": 0, "map": 0.22}, {"fold": 1, "map": 0.25}],
        "postprocess": {"score_threshold": 0.35, "max_boxes": 3}, "images": 8,
    }  # fmt: skip
    store.put_json(run_key(run_id, "evaluation.json"), evaluation)

    key = write_model_card(store, run_id)
    assert key == run_key(run_id, MODEL_CARD)
    card = store.get_text(key)
    assert "not a medical device" in card and "do not use it for diagnosis" in card
    assert "manifest digest `d1g3st`" in card and "8 training, 2 test" in card
    # tiny_prepared: odd patients have boxes, even ones not: 4 of 8 each
    assert "Lung Opacity 4 (50.0%)" in card and "Normal 4 (50.0%)" in card
    assert "quarantined (unreadable, left out): 1" in card and "broken-1" in card
    assert f"configuration hash `{config.config_hash()}`" in card
    assert "`resnet18-f37072fd.pth`, sha256 `" + "ab" * 32 + "`, from store s3://b/x" in card
    assert "| 0 | 3 | 2 | 0.2500 | 4 | cuda | 0.50 |" in card
    assert "Training time in all: 1.00 h" in card
    assert "honest OOF mAP: 0.2345** ± 0.0120" in card and "in-sample OOF mAP: 0.2611" in card
    assert '"score_threshold": 0.35' in card and "## Known limitations" in card


def test_model_card_of_an_unknown_run_is_an_input_error(tiny_prepared: TinyPrepared) -> None:
    with pytest.raises(InputError, match="run nope"):
        write_model_card(tiny_prepared.store, "nope")
