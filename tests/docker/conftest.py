"""Fixtures for the tests on a real Docker engine: a private dockerd with the Debian base
image, and a local image registry (Debian's docker-registry) on 127.0.0.1.

Where no engine can start (no root, no dockerd, another OS) these tests skip with the
reason; under CI=true a skip here fails instead, so CI cannot pass without them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.docker.engine import Engine, start_engine, stop_engine, unavailable_reason
from tests.integration.conftest import prefect_server  # noqa: F401  (a server of its own)
from tests.seaweedfs import free_ports

IN_CI = os.environ.get("CI", "").lower() == "true"


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
    """A private dockerd with the base image imported; every container removed at the end."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no Docker engine: {reason}")
    engine = start_engine()
    try:
        engine.import_base()
        yield engine
    finally:
        stop_engine(engine)


@dataclass
class Registry:
    """A running docker-registry; `address` (host:port) prefixes image names pushed to it."""

    address: str
    process: subprocess.Popen


@pytest.fixture(scope="session")
def image_registry() -> Iterator[Registry]:
    """Debian's docker-registry on a free loopback port with a throwaway storage folder."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("docker-registry not installed (apt-get install docker-registry)")
    root = Path(tempfile.mkdtemp(prefix="pneumo-registry-"))
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    (root / "config.yml").write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: {address}}}\n"
    )
    with (root / "registry.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, "serve", str(root / "config.yml")], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{address}/v2/", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / "registry.log").read_text(errors="replace")[-2000:])
            time.sleep(0.3)
        yield Registry(address, process)
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
