"""RunConfig: presets, JSON round trip, hashing and command-line overrides."""

from __future__ import annotations

import json
from typing import get_args

import pytest
from pydantic import ValidationError

from pneumo_core.config.run import PRESETS, PresetName, RunConfig, parse_overrides, preset, resumed
from pneumo_core.data.augment import AugmentConfig
from pneumo_core.errors import InputError


def test_seed_preset_is_the_design_recipe():
    cfg = preset("seed")
    assert (cfg.backbone, cfg.image_size, cfg.n_folds, cfg.seed) == ("resnet50", 512, 4, 42)
    assert (cfg.batch_size, cfg.execution.val_batch_size) == (6, 4)
    assert (cfg.optimizer, cfg.lr, cfg.warmup_epochs) == ("adam", 1e-5, 0.0)
    assert (cfg.scheduler, cfg.plateau_patience, cfg.plateau_factor) == ("plateau", 4, 0.2)
    assert cfg.conv1_init == "random"
    assert cfg.augment == AugmentConfig.seed_recipe()
    assert cfg.augment.rotation_deg == 6 and cfg.augment.shear_deg == 4
    assert not cfg.tta_hflip and not cfg.postprocess.tune


def test_default_and_ci_differ_from_seed_where_it_matters():
    seed, default, ci = preset("seed"), preset("default"), preset("ci")
    assert default.optimizer == "adamw" and default.lr > seed.lr and default.warmup_epochs > 0
    assert default.conv1_init == "sum_rgb" and default.freeze_bn and default.grad_clip
    assert default.tta_hflip and default.postprocess.tune and default.postprocess.fusion == "wbf"
    assert ci.backbone == "resnet18" and ci.image_size <= 192 and ci.epochs <= 12


@pytest.mark.parametrize("name", PRESETS)
def test_round_trip_through_json(name):
    cfg = preset(name)
    again = RunConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    assert again.config_hash() == cfg.config_hash()


def test_hash_changes_with_any_field_including_nested():
    base = preset("ci")
    assert base.with_overrides({"lr": 0.5}).config_hash() != base.config_hash()
    assert base.with_overrides({"augment.gamma": 0.1}).config_hash() != base.config_hash()


def test_overrides_from_the_command_line_are_typed():
    items = [
        "lr=1e-4",
        "epochs=3",
        "tta_hflip=false",
        "weights_path=none",
        "augment.rotation_deg=0",
    ]
    cfg = preset("default", **parse_overrides([*items, "postprocess.fusion=nms", "grad_clip=5"]))
    assert cfg.lr == 1e-4 and isinstance(cfg.epochs, int) and cfg.epochs == 3
    assert cfg.tta_hflip is False and cfg.weights_path is None
    assert cfg.augment.rotation_deg == 0.0 and cfg.augment.shear_deg == 4.0
    assert cfg.postprocess.fusion == "nms" and cfg.grad_clip == 5.0
    assert cfg.preset == "default"


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("epochs=three", "epochs"),
        ("optimizer=sgd", "optimizer"),
        ("no_such_field=1", "no_such_field"),
        ("augment.no_such=1", "augment.no_such"),
        ("epochs=0", "epochs"),
        ("backbone=resnet101", "backbone"),
        ("augment.hflip_p=2", "hflip_p"),
    ],
)
def test_bad_overrides_name_the_field(item, fragment):
    with pytest.raises(InputError, match=fragment):
        preset("ci", **parse_overrides([item]))


def test_malformed_override_and_unknown_preset():
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_overrides(["lr"])
    with pytest.raises(InputError, match="unknown preset"):
        preset("best")


def test_from_dict_rejects_unknown_fields():
    data = preset("ci").to_dict()
    data["learning_rate"] = 1.0
    with pytest.raises(InputError, match="learning_rate"):
        RunConfig.from_dict(data)
    data = preset("ci").to_dict()
    data["postprocess"]["threshold"] = 0.3
    with pytest.raises(InputError, match=r"postprocess\.threshold"):
        RunConfig.from_dict(data)


def test_config_is_frozen():
    with pytest.raises(ValidationError, match="frozen"):
        preset("ci").lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("lr=nan", "field lr="),
        ("lr=inf", "field lr="),
        ("lr=-1e-4", "field lr="),
        ("lr=0", "field lr="),
        ("weight_decay=-0.1", "field weight_decay="),
        ("focal_alpha=1.5", "field focal_alpha="),
        ("focal_alpha=-0.1", "field focal_alpha="),
        ("seed=-1", "field seed="),
        ("device=gpu", "field execution.device="),
        ("device=cuda:x", "field execution.device="),
        ("dataset=../raw", "field dataset="),
        ("grad_clip=0", "field grad_clip="),
        ("num_workers=-1", "field execution.num_workers="),
        ("tta_hflip=maybe", "field tta_hflip="),
        ("postprocess.shrink=0", "field postprocess.shrink="),
        ("augment.salt_pepper_size_min=0.5", "salt_pepper_size_min=0.5 must not exceed"),
    ],
)
def test_every_field_has_a_checked_range(item, fragment):
    with pytest.raises(InputError, match=fragment) as caught:
        preset("ci", **parse_overrides([item]))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_device_syntax(device):
    assert preset("ci", device=device).execution.device == device


def test_a_stored_config_with_a_wrong_type_names_the_field():
    data = preset("ci").to_dict()
    data["augment"]["hflip_p"] = "often"
    data["epochs"] = 2.5
    with pytest.raises(InputError, match=r"field epochs=.*; field augment\.hflip_p="):
        RunConfig.from_dict(data)
    with pytest.raises(InputError, match="expected a mapping"):
        RunConfig.from_dict(["epochs", 3])  # type: ignore[arg-type]


def test_python_construction_is_checked_too():
    with pytest.raises(InputError, match="field lr="):
        RunConfig(lr=float("nan"))


def test_execution_settings_live_in_their_own_section_and_out_of_the_hash():
    base = preset("ci")
    assert "num_workers" not in base.recipe() and "execution" not in base.recipe()
    moved = base.with_overrides(parse_overrides(["num_workers=3", "execution.amp=true"]))
    assert (moved.execution.num_workers, moved.execution.amp) == (3, True)
    assert moved.config_hash() == base.config_hash()
    assert moved.with_overrides({"epochs": 2}).config_hash() != base.config_hash()


def test_a_config_stored_before_the_execution_section_reads_and_hashes_as_its_recipe():
    stored = preset("ci").to_dict()
    flat = {k: v for k, v in stored.items() if k != "execution"} | stored["execution"]
    old = RunConfig.from_dict(flat)
    assert old == preset("ci") and old.config_hash() == preset("ci").config_hash()


def test_a_resume_keeps_the_recipe_and_takes_new_execution_settings():
    stored = preset("ci")
    resumed_config = resumed(stored, "r1", None, {"execution.num_workers": "4"})
    assert resumed_config.execution.num_workers == 4 and resumed_config.recipe() == stored.recipe()
    with pytest.raises(InputError, match=r"another recipe: lr \(stored 0\.001, asked 0\.5\)"):
        resumed(stored, "r1", None, {"lr": "0.5"})
    with pytest.raises(InputError, match="preset"):
        resumed(stored, "r1", "default", {})


def test_the_preset_choice_lists_every_preset():
    assert set(get_args(PresetName)) == set(PRESETS)


def test_prepare_checks_its_arguments_as_a_run_does(tmp_path):
    from pneumo_core.data.prepare import prepare_dataset
    from pneumo_core.storage.local import LocalStore

    with pytest.raises(InputError, match="field image_size=8"):
        prepare_dataset(LocalStore(tmp_path), image_size=8)
    with pytest.raises(InputError, match="field n_folds=1"):
        prepare_dataset(LocalStore(tmp_path), n_folds=1)
