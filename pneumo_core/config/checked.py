"""`CheckedModel`: the base of every configuration section (run, augmentation, post-processing).

A frozen pydantic model that refuses unknown fields, NaN and infinity, and turns pydantic's
`ValidationError` into one `InputError` line naming the dotted field (`augment.hflip_p`), so
a bad value typed on the command line, stored in a config.json or entered in the Prefect
UI's form fails the same clear way. pydantic also coerces command-line strings ("1e-4",
"3", "false") to each field's declared type, which is what `with_overrides` relies on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from pneumo_core.errors import InputError

_NONE_WORDS = ("none", "null", "")


def _none_from_text(value: Any) -> Any:
    """`--set weights_path=none` means None for a field that may be None."""
    return None if isinstance(value, str) and value.strip().lower() in _NONE_WORDS else value


NoneFromText = BeforeValidator(_none_from_text)
"""Annotate an optional field with it: `x: Annotated[float | None, NoneFromText] = None`."""

# pydantic calls a model's own __init__ for nested sections too: only the outermost call
# turns errors into InputError, so pydantic can gather every bad field, nested ones included.
_OUTERMOST = ContextVar("_OUTERMOST", default=True)


@contextmanager
def _as_input_error(section: str) -> Iterator[None]:
    if not _OUTERMOST.get():
        yield
        return
    token = _OUTERMOST.set(False)
    try:
        yield
    except ValidationError as exc:
        raise InputError(describe(exc, section)) from None
    finally:
        _OUTERMOST.reset(token)


class CheckedModel(BaseModel):
    """Frozen, no unknown fields, finite numbers; errors are `InputError` naming the field."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    section: ClassVar[str] = ""  # dotted prefix in messages: "augment." for AugmentConfig

    def __init__(self, **data: Any) -> None:
        with _as_input_error(self.section):
            super().__init__(**data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Inverse of `to_dict`; unknown fields are an error so typos never pass silently."""
        if not isinstance(data, Mapping):
            raise InputError(f"config {cls.section or 'run'}: expected a mapping, got {data!r:.60}")
        with _as_input_error(cls.section):
            return cls.model_validate(dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (nested sections as dicts): JSON-ready, and `from_dict`'s input."""
        return self.model_dump()

    def with_overrides(self, overrides: Mapping[str, Any]) -> Self:
        """Copy with fields replaced and checked; keys may be dotted (`augment.rotation_deg`)
        and values may be strings as typed on a command line (coerced to the field's type)."""
        data = self.to_dict()
        for key, value in overrides.items():
            head, _, rest = key.partition(".")
            if rest:
                section = data.get(head)
                if not isinstance(section, dict):
                    raise InputError(
                        f"config override {self.section}{key}: {head!r} is not a nested section"
                    )
                section[rest] = value
            else:
                data[key] = value
        return self.from_dict(data)


def describe(exc: ValidationError, section: str = "") -> str:
    """One line naming every bad field: `config field lr=-1.0: Input should be greater than 0`."""
    parts = []
    for error in exc.errors():
        name = section + ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            parts.append(f"unknown field {name}")
        elif not error["loc"]:
            parts.append(f"{section.rstrip('.') or 'run'}: {message}")
        else:
            parts.append(f"field {name}={error['input']!r:.60}: {message}")
    return "config " + "; ".join(parts)
