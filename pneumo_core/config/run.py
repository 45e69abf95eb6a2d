"""Typed run configuration and its presets.

A run is fully described by one `RunConfig`, saved as `runs/<run_id>/config.json`, so a
fold can be trained (or resumed) on any worker from the store alone, and two runs can be
compared field by field. It is the recipe (everything that decides the model) plus an
`execution` section (device, precision, loader workers, folds at once) that a resume may
change; the configuration hash covers the recipe only. Presets:

- `seed`: the first design's recipe, exactly, kept as the baseline to beat (docs/kaggle.md).
- `default`: our best recipe (docs/benchmarks.md compares it with the seed).
- `ci`: the smallest setting that still learns on a CPU, for tests and the demo.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from pneumo_core.config.cache import CacheSpec
from pneumo_core.config.checked import NoneFromText
from pneumo_core.config.execution import SECTION, ExecutionConfig, canonical_key
from pneumo_core.data.augment_config import AugmentConfig
from pneumo_core.errors import InputError
from pneumo_core.evaluation.postprocess import PostprocessConfig
from pneumo_core.model.backbones import Backbone


class RunConfig(CacheSpec):
    """Everything that decides what a run trains and how it predicts, and (its `execution`
    section) where and how fast it trains.

    Every field has a checked type and range (pydantic): a bad value, from Python, a
    command-line `--set`, a stored config.json or the Prefect UI's form, is an InputError
    naming the field. The data set, image size, folds and seed come from `CacheSpec`.
    """

    preset: str = Field("default", min_length=1)
    # model
    backbone: Backbone = "resnet50"
    pretrained: bool = True  # weights required: weights_path, the store or torch's hub cache
    weights_path: Annotated[str | None, NoneFromText] = Field(None, min_length=1)
    conv1_init: Literal["sum_rgb", "random"] = "sum_rgb"
    fpn_channels: int = Field(256, ge=8, le=1024)
    freeze_bn: bool = (
        True  # only with pretrained statistics; random BN stats are not worth freezing
    )
    trainable_backbone_layers: int = Field(5, ge=0, le=5)
    head_groupnorm: bool = True
    # image-level class head beside the detector (its loss weight; 0 = no head): its opacity
    # probability can gate box scores (postprocess.gate, tuned out of fold)
    image_head_weight: float = Field(0.0, ge=0, le=10)
    focal_alpha: float = Field(0.25, ge=0, le=1)
    focal_gamma: float = Field(2.0, ge=0, le=10)
    box_loss: Literal["l1", "smooth_l1", "giou"] = "giou"
    detections_per_img: int = Field(
        20, ge=1, le=1000
    )  # boxes kept per image before post-processing
    oof_score_floor: float = Field(0.05, ge=0, lt=1)  # boxes below this never leave the model
    # optimisation
    epochs: int = Field(16, ge=1, le=10_000)
    batch_size: int = Field(6, ge=1, le=4096)
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = Field(2e-4, gt=0, le=1)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    warmup_epochs: float = Field(0.5, ge=0)
    scheduler: Literal["plateau", "cosine"] = "cosine"
    plateau_patience: int = Field(4, ge=0)
    plateau_factor: float = Field(0.2, gt=0, lt=1)
    grad_clip: Annotated[float | None, NoneFromText] = Field(10.0, gt=0)
    val_every: int = Field(1, ge=1)
    # inference
    tta_hflip: bool = True
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    @model_validator(mode="before")
    @classmethod
    def _execution_in_its_section(cls, data: Any) -> Any:
        """Execution settings given at the top level (a config.json stored before the
        section existed, or `num_workers` without its section) move into `execution`."""
        flat = isinstance(data, Mapping) and any(k in ExecutionConfig.model_fields for k in data)
        if not flat:
            return data
        data = dict(data)
        section = dict(data.get(SECTION) or {})
        for key in ExecutionConfig.model_fields:
            if key in data:
                section[key] = data.pop(key)
        return data | {SECTION: section}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def recipe(self) -> dict[str, Any]:
        """The configuration without its execution settings: what decides the model."""
        return self.model_dump(exclude={SECTION})

    def config_hash(self) -> str:
        """Short, stable digest of the recipe (champion records, run comparison): the same
        recipe hashes the same whatever device or loader workers ran it."""
        canonical = json.dumps(self.recipe(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """`["lr=1e-4", "augment.rotate=0"]` -> `{"lr": "1e-4", "augment.rotate": "0"}`."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"override {item!r}: expected KEY=VALUE (e.g. augment.rotate=0)")
        out[canonical_key(key.strip())] = value.strip()
    return out


def resumed(
    stored: RunConfig, run_id: str, preset_name: str | None, overrides: Mapping[str, Any]
) -> RunConfig:
    """The configuration a resume of `run_id` continues with: its stored recipe, with the
    execution settings asked now. A preset or recipe override that differs from what the run
    was created with is refused, naming each field (a run's model never changes midway)."""
    asked = stored.with_overrides(overrides)
    before, after = flatten(stored.recipe()), flatten(asked.recipe())
    differ = [
        f"{k} (stored {before[k]!r}, asked {after[k]!r})" for k in before if before[k] != after[k]
    ]
    if preset_name is not None and preset_name != stored.preset:
        differ.insert(0, f"preset (stored {stored.preset!r}, asked {preset_name!r})")
    if differ:
        raise InputError(
            f"run {run_id} exists with another recipe: {'; '.join(differ)}. Resume it without "
            "--preset/--epochs/--folds/--set of recipe fields (execution.* may change), or "
            "start a new run with another --run-id"
        )
    return asked


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested configuration as dotted field names: {"augment": {"gamma": 0.2}} ->
    {"augment.gamma": 0.2} (resume checks and run comparisons name fields this way)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def preset(name: str, **overrides: Any) -> RunConfig:
    """A named recipe, with keyword overrides (dotted keys via `**{"augment.rotate": 0}`)."""
    try:
        base = _PRESETS[name]()
    except KeyError:
        raise InputError(f"unknown preset {name!r}: choose one of {sorted(_PRESETS)}") from None
    return base.with_overrides(overrides) if overrides else base


def _seed() -> RunConfig:
    """The first design's recipe, exactly (its augmentation is AugmentConfig's seed default)."""
    return RunConfig(
        preset="seed",
        image_size=512,
        n_folds=4,
        seed=42,
        backbone="resnet50",
        pretrained=True,
        conv1_init="random",
        freeze_bn=True,
        trainable_backbone_layers=3,
        head_groupnorm=False,
        box_loss="l1",
        epochs=16,
        batch_size=6,
        optimizer="adam",
        lr=1e-5,
        weight_decay=0.0,
        warmup_epochs=0.0,
        scheduler="plateau",
        plateau_patience=4,
        plateau_factor=0.2,
        grad_clip=None,
        tta_hflip=False,
        augment=AugmentConfig.seed_recipe(),
        # The seed kept a fixed threshold: no tuning, no shrinking, folds merged by NMS.
        postprocess=PostprocessConfig(fusion="nms", tune=False, tune_shrink=False),
    )


def _default() -> RunConfig:
    """Our best recipe (the field defaults), chosen by measurement against the seed with
    bench/compare_presets.py (figures: docs/benchmarks.md, the preset comparison).
    The seed's Adam 1e-5 barely moves a detector; AdamW with warm-up and cosine decay does, and
    most of the gap is the learning rate. GIoU beat L1 as the box loss; anchors stay at
    torchvision's sizes rather than scaled down with the image. Flip TTA, WBF and the
    out-of-fold-tuned threshold, box limit and shrink come on top. The pretrained-weight
    choices (conv1 from summed RGB kernels, frozen BN) follow the winning solutions; they
    cannot be measured offline, where no weights exist."""
    return RunConfig(preset="default")


def _ci() -> RunConfig:
    """Small enough to learn in minutes on two CPU cores (tests/e2e/test_core_pipeline.py
    holds its OOF mAP). Both folds train at once, one thread each, and validate every fifth
    epoch only: the demo's training phase is faster that way (`python -m bench.demo_training`;
    figures in docs/benchmarks.md). A larger batch was faster still but less stable from run to run,
    so batch, rate and steps stay as they are."""
    return _default().with_overrides(
        {
            "preset": "ci",
            "image_size": 128,
            "n_folds": 2,
            "backbone": "resnet18",
            "pretrained": False,
            "fpn_channels": 64,
            "epochs": 10,
            "batch_size": 4,
            "lr": 1e-3,
            "val_every": 5,
            "execution.val_batch_size": 16,
            "execution.num_workers": 0,
            "execution.max_parallel_folds": 2,
        }
    )


_PRESETS = {"seed": _seed, "default": _default, "ci": _ci}
PRESETS = tuple(_PRESETS)
PresetName = Literal["seed", "default", "ci"]  # a choice in forms; `preset` checks it too
