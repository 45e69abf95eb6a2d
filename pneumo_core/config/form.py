"""The run configuration as a form of overrides: every RunConfig field optional, with its
type and limits, and each preset's value as the hint.

The `pipeline` flow takes a `RunOverrides` instead of an untyped dict, so the Prefect UI
draws one typed input per field (nested sections as groups) and both the form and the API
refuse a bad value before a run starts. An empty field keeps the chosen preset's value.
Built from RunConfig itself, so a new configuration field appears in the form by itself.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic.fields import FieldInfo

from pneumo_core.config.checked import describe
from pneumo_core.config.run import PRESETS, RunConfig, preset
from pneumo_core.errors import InputError

NOT_OVERRIDDEN = ("preset",)  # chosen by the flow's own `preset` parameter


class OverrideForm(BaseModel):
    """Optional overrides of one configuration section; None (empty) = the preset's value."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    def to_overrides(self, prefix: str = "") -> dict[str, Any]:
        """The filled fields as dotted keys, for `preset(name, **overrides)`."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, OverrideForm):
                out |= value.to_overrides(f"{prefix}{name}.")
            elif value is not None:
                out[f"{prefix}{name}"] = value
        return out

    @model_validator(mode="before")
    @classmethod
    def _nest_dotted(cls, data: Any) -> Any:
        """Dotted keys (`{"augment.hflip_p": 0}`, as `--set` gives them) become sections."""
        if not isinstance(data, dict) or not any("." in str(k) for k in data):
            return data
        nested: dict[str, Any] = {}
        for key, value in data.items():
            *sections, name = str(key).split(".")
            target = nested
            for section in sections:
                target = target.setdefault(section, {})
            target[name] = value
        return nested

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any]) -> Self:
        """From dotted keys; values may be command-line strings. InputError naming the field."""
        try:
            return cls.model_validate(overrides)
        except ValidationError as exc:
            raise InputError(describe(exc)) from None


def _hint(values: dict[str, Any]) -> str:
    shown = ", ".join(f"{name}: {value!r}" for name, value in values.items())
    return f"empty = the preset's value ({shown})"


def _form(
    section: type[BaseModel], name: str, values: dict[str, dict[str, Any]]
) -> type[OverrideForm]:
    """An OverrideForm mirroring `section`; `values[preset]` is that preset's section dict."""
    fields: dict[str, Any] = {}
    for field, info in section.model_fields.items():
        if field in NOT_OVERRIDDEN:
            continue
        per_preset = {p: values[p][field] for p in values}
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sub = _form(annotation, f"{name}{field.title()}", per_preset)
            doc = f"{field}: leave a field empty to keep the preset's value"
            fields[field] = (sub | None, Field(None, description=doc))
            continue
        optional = FieldInfo.merge_field_infos(info, default=None, description=_hint(per_preset))
        fields[field] = (annotation | None, optional)
    return create_model(name, __base__=OverrideForm, __doc__=section.__doc__, **fields)


RunOverrides: type[OverrideForm] = _form(
    RunConfig, "RunOverrides", {p: preset(p).to_dict() for p in PRESETS}
)
"""Every RunConfig field but `preset`, optional; the `pipeline` flow's `overrides`."""
