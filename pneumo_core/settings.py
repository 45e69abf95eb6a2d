"""The environment knobs, `PNEUMO_*`, in one typed place (docs/configuration.md lists them).

`settings()` follows the environment as it is at each call, so a value takes effect where it
is used, without a restart of anything that imported this module. An empty variable counts
as unset. A bad value is an InputError of one line naming the variable and its value.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pneumo_core.errors import InputError

ENV_PREFIX = "PNEUMO_"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "pneumo"


class Settings(BaseSettings):
    """Every `PNEUMO_*` variable the library reads; the field name is the variable's suffix."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore", frozen=True
    )

    s3_max_attempts: int = Field(10, ge=0)
    """How many times one S3 request is tried before a transient failure is given up on
    (0 counts as 1). Each retry waits a jittered, growing delay of at most 20 s."""

    s3_silence_s: float = Field(120.0, ge=0)
    """How long, in seconds, a command waits in all for an S3 endpoint that sends nothing
    before giving up; each try waits a quarter of it for a byte, so a download that keeps
    receiving bytes is never cut."""

    s3_backoff_s: float = Field(0.5, ge=0)
    """The first wait, in seconds, before a broken S3 download is read again; it doubles up
    to 20 s. Short waits suit tests, longer ones a flaky network."""

    cache_dir: Path = Field(default_factory=_default_cache_dir)
    """Where files read from S3 are kept on local disk, so that a second read of an unchanged
    object downloads nothing. A worker points it at a volume that outlives the container."""

    lock_ttl_s: float = Field(120.0, ge=0)
    """How long, in seconds, a writer's lock lasts without renewal (at least 1 s); a writer
    killed without unlocking blocks the others for at most this long."""

    lock_wait_s: float = Field(900.0, ge=0)
    """How long, in seconds, to wait for a lock another writer holds before failing."""

    max_dicom_bytes: int = Field(64 << 20, ge=0)
    """The largest DICOM file read, in bytes; a larger one is quarantined unread, so that a
    hostile file cannot fill memory. Real radiographs are a few MB."""

    ingest_max_bytes: int = Field(64 << 30, ge=0)
    """The ceiling, in bytes, on what an ingested archive inflates to in all; a larger
    archive is refused before anything is unpacked (a zip bomb). The real one is about 4 GB."""

    ingest_max_ratio: float = Field(100.0, ge=0)
    """The ceiling on one archive member's compression ratio (members over 1 MiB); a member
    over it refuses the whole archive. DICOMs barely compress, the CSVs about 5x."""

    s3_public_endpoint: str | None = None
    """The S3 address a person's browser reaches, for which the links shown to people are
    signed; unset, links use the address the workers use."""

    debug: bool = False
    """Any non-empty value: the `pneumo` command shows the traceback of an error, as with
    `--debug`, instead of one line."""

    @field_validator("debug", mode="before")
    @classmethod
    def _any_value_is_on(cls, value: Any) -> Any:
        return bool(value) if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment alone: no .env file nor secrets folder is read."""
        return init_settings, env_settings


def settings() -> Settings:
    """The knobs as the environment sets them now; InputError (one line) for a bad value.

    Building a Settings takes about 0.2 ms, a tenth of decoding a radiograph, and some knobs
    are read once per image: so the last few are kept, each under the environment it came
    from (every `PNEUMO_*` variable and HOME), and one is built again when that changes.
    """
    return _settings(_environment())


def _environment() -> tuple[tuple[str, str], ...]:
    """What a Settings depends on: the PNEUMO_* variables, in any case, and HOME."""
    found = [(k, v) for k, v in os.environ.items() if k[:7].upper() == ENV_PREFIX or k == "HOME"]
    return tuple(sorted(found))


@functools.lru_cache(maxsize=8)
def _settings(environment: tuple[tuple[str, str], ...]) -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise InputError("; ".join(_describe(error) for error in exc.errors())) from None


def _describe(error: Any) -> str:
    field = str(error["loc"][0]) if error["loc"] else "?"
    where = f"environment variable {ENV_PREFIX}{field.upper()}={error['input']!r}"
    if error["type"] in ("greater_than_equal", "greater_than"):
        return f"{where} must not be negative"
    if error["type"].startswith(("int_", "float_")):
        return f"{where} is not a number"
    return f"{where}: {' '.join(str(error['msg']).split())}"
