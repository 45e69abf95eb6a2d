"""The PNEUMO_* knobs: defaults, values from the environment as it is at each call, and a
bad value refused in one line that names the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from pneumo_core.errors import InputError
from pneumo_core.settings import Settings, settings

NAMES = [f"PNEUMO_{name.upper()}" for name in Settings.model_fields]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


def test_defaults(tmp_path):
    knobs = settings()
    assert knobs.s3_max_attempts == 10
    assert knobs.s3_backoff_s == 0.5
    assert knobs.cache_dir == tmp_path / ".cache" / "pneumo"
    assert (knobs.lock_ttl_s, knobs.lock_wait_s) == (120.0, 900.0)
    assert knobs.max_dicom_bytes == 64 << 20
    assert (knobs.ingest_max_bytes, knobs.ingest_max_ratio) == (64 << 30, 100.0)
    assert knobs.s3_public_endpoint is None
    assert knobs.debug is False


def test_values_come_from_the_environment_at_each_call(monkeypatch):
    monkeypatch.setenv("PNEUMO_S3_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("PNEUMO_LOCK_WAIT_S", "0.25")
    monkeypatch.setenv("PNEUMO_CACHE_DIR", "/var/cache/pneumo")
    monkeypatch.setenv("PNEUMO_S3_PUBLIC_ENDPOINT", "http://127.0.0.1:8333")
    knobs = settings()
    assert (knobs.s3_max_attempts, knobs.lock_wait_s) == (3, 0.25)
    assert knobs.cache_dir == Path("/var/cache/pneumo")
    assert knobs.s3_public_endpoint == "http://127.0.0.1:8333"
    monkeypatch.setenv("PNEUMO_S3_MAX_ATTEMPTS", "4")
    assert settings().s3_max_attempts == 4
    monkeypatch.delenv("PNEUMO_S3_MAX_ATTEMPTS")
    assert settings().s3_max_attempts == 10


def test_an_empty_variable_is_unset(monkeypatch):
    for name in NAMES:
        monkeypatch.setenv(name, "")
    assert settings() == Settings()
    assert settings().s3_public_endpoint is None and settings().debug is False


@pytest.mark.parametrize("value", ["1", "yes", "0"])
def test_any_debug_value_turns_debug_on(monkeypatch, value):
    monkeypatch.setenv("PNEUMO_DEBUG", value)
    assert settings().debug is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PNEUMO_S3_MAX_ATTEMPTS", "x"),
        ("PNEUMO_S3_MAX_ATTEMPTS", "2.5"),
        ("PNEUMO_LOCK_TTL_S", "2m"),
    ],
)
def test_a_bad_number_is_one_line_naming_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(InputError) as caught:
        settings()
    assert str(caught.value) == f"environment variable {name}={value!r} is not a number"


@pytest.mark.parametrize(
    "name", ["PNEUMO_S3_BACKOFF_S", "PNEUMO_MAX_DICOM_BYTES", "PNEUMO_INGEST_MAX_RATIO"]
)
def test_a_negative_number_is_refused(monkeypatch, name):
    monkeypatch.setenv(name, "-1")
    with pytest.raises(InputError) as caught:
        settings()
    assert str(caught.value) == f"environment variable {name}='-1' must not be negative"


def test_zero_is_allowed(monkeypatch):
    monkeypatch.setenv("PNEUMO_LOCK_WAIT_S", "0")
    monkeypatch.setenv("PNEUMO_S3_MAX_ATTEMPTS", "0")
    assert (settings().lock_wait_s, settings().s3_max_attempts) == (0.0, 0)


def test_settings_are_read_only():
    with pytest.raises(ValueError, match="frozen"):
        settings().lock_wait_s = 1.0  # type: ignore[misc]
