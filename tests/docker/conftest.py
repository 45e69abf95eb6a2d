"""Fixtures for the tests on a real Docker engine: a private dockerd with the Debian base
image, and a local image registry (Debian's docker-registry) on 127.0.0.1, both keeping
their images between sessions (tests/docker/engine.py).

Where no engine can start (no root, no dockerd, another OS) these tests skip with the
reason; under CI=true a skip here fails instead, so CI cannot pass without them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.docker.engine import (
    Engine,
    EngineUnavailable,
    Registry,
    start_engine,
    start_registry,
    stop_engine,
    stop_registry,
    unavailable_reason,
)
from tests.integration.conftest import prefect_server  # noqa: F401  (a server of its own)

IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Docker tests last: the worker image's build that .ci/run starts beside the suite
    gets the rest of the suite's time to finish (their engine waits for it)."""
    items.sort(key=lambda item: item.get_closest_marker("docker") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Under CI=true a skipped Docker test is a failed one."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and "tests/docker" in str(item.path):
        report.outcome = "failed"
        report.longrepr = f"CI=true: the Docker tests must run, but one skipped: {report.longrepr}"


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    """A private dockerd with the base image imported; every container removed at the end.
    It waits while another engine (a `warm` build) holds the kept data root."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no Docker engine: {reason}")
    started = time.monotonic()
    engine = start_engine()
    print(f"Docker engine up in {time.monotonic() - started:.0f} s (waits for a warm build)")
    try:
        engine.import_base()
        yield engine
    finally:
        stop_engine(engine)


@pytest.fixture(scope="session")
def image_registry(docker_engine: Engine) -> Iterator[Registry]:
    """Debian's docker-registry on 127.0.0.1 with the kept storage (tests/docker/engine.py)."""
    try:
        registry = start_registry()
    except EngineUnavailable as exc:
        pytest.skip(f"no image registry: {exc}")
    try:
        yield registry
    finally:
        stop_registry(registry)
