"""RunOverrides: every configuration field optional, typed and ranged, with the presets'
values as hints; the pipeline flow validates its `overrides` through it."""

from __future__ import annotations

import pytest

from pneumo_core.config.form import RunOverrides
from pneumo_core.config.run import PRESETS, RunConfig, preset
from pneumo_core.data.augment_config import AugmentConfig
from pneumo_core.errors import InputError
from pneumo_core.evaluation.postprocess import PostprocessConfig


def test_every_field_but_preset_is_an_optional_override() -> None:
    schema = RunOverrides.model_json_schema()
    assert set(schema["properties"]) == set(RunConfig.model_fields) - {"preset"}
    assert schema["additionalProperties"] is False
    sections = {"augment": AugmentConfig, "postprocess": PostprocessConfig}
    for name, section in sections.items():
        sub = schema["$defs"][f"RunOverrides{name.title()}"]
        assert set(sub["properties"]) == set(section.model_fields)
    for prop in schema["properties"].values():
        assert prop["default"] is None and {"type": "null"} in prop["anyOf"]


def test_types_limits_and_preset_hints_reach_the_schema() -> None:
    props = RunOverrides.model_json_schema()["properties"]
    lr = props["lr"]
    assert {"type": "number", "exclusiveMinimum": 0, "maximum": 1} in lr["anyOf"]
    for name in PRESETS:
        assert f"{name}: {preset(name).lr!r}" in lr["description"]
    assert {"type": "string", "enum": ["resnet18", "resnet34", "resnet50"]} in props["backbone"][
        "anyOf"
    ]
    assert {"type": "integer", "minimum": 2, "maximum": 50} in props["n_folds"]["anyOf"]


def test_empty_keeps_the_preset_and_filled_overrides() -> None:
    assert RunOverrides().to_overrides() == {}
    form = RunOverrides.model_validate({"lr": 1e-3, "augment": {"hflip_p": 0.0}})
    assert form.to_overrides() == {"lr": 1e-3, "augment.hflip_p": 0.0}
    made = preset("ci", **form.to_overrides())
    assert made.lr == 1e-3 and made.augment.hflip_p == 0.0
    assert made.epochs == preset("ci").epochs  # untouched fields keep the preset's value
    # dotted keys and command-line strings, as `pneumo run --set` gives them
    dotted = RunOverrides.from_overrides({"epochs": "3", "augment.hflip_p": "0"})
    assert dotted.to_overrides() == {"epochs": 3, "augment.hflip_p": 0.0}


@pytest.mark.parametrize(
    ("bad", "field"),
    [({"lr": -1}, "lr"), ({"n_folds": 1}, "n_folds"), ({"backbone": "vgg"}, "backbone"),
     ({"augment.hflip_p": 2}, "augment.hflip_p"), ({"lrr": 1}, "lrr")],
)  # fmt: skip
def test_bad_values_are_refused_naming_the_field(bad: dict, field: str) -> None:
    with pytest.raises(InputError, match=f"config .*{field}"):
        RunOverrides.from_overrides(bad)


def test_the_pipeline_flow_validates_its_overrides() -> None:
    from prefect.exceptions import ParameterTypeError

    from flows.pipeline import pipeline

    given = {"source": "s", "storage": "file:///x", "overrides": {"augment.hflip_p": "0"}}
    checked = pipeline.validate_parameters(given)
    assert checked["overrides"].to_overrides() == {"augment.hflip_p": 0.0}
    with pytest.raises(ParameterTypeError, match="lr"):
        pipeline.validate_parameters({**given, "overrides": {"lr": -1}})


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("promotion_margin", float("nan")),
        ("promotion_margin", float("inf")),
        ("promotion_margin", -1.0),
        ("max_parallel_folds", 0),
        ("gpus_per_worker", -1),
        ("fold_pickup_timeout_s", 0.0),
        ("fold_pickup_timeout_s", float("inf")),
        ("folds", [-1]),
        ("preset", "best"),
        ("fold_runner", "cluster"),
    ],
)
def test_every_pipeline_parameter_is_ranged_before_the_run_starts(parameter, value) -> None:
    from prefect.exceptions import ParameterTypeError

    from flows.pipeline import pipeline

    given = {"source": "s", "storage": "file:///x"}
    pipeline.validate_parameters(given)  # the defaults pass
    with pytest.raises(ParameterTypeError, match=parameter):
        pipeline.validate_parameters({**given, parameter: value})
