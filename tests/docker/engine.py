"""A private Docker engine for the tests, and the Debian base image it builds on.

dockerd runs on its own socket, data root and exec root, with no bridge, no iptables rules
and no masquerading: it makes no network interface and no address outside 127.0.0.0/8.
Every build and container uses host networking, so containers reach the servers that the
tests start on 127.0.0.1 and nothing else. No image registry is reachable here, so the base
image is bootstrapped from Debian packages (debootstrap) with this machine's CA bundle and
pip settings, and cached as a tarball so that it is made once per machine:

    python -m tests.docker.engine base-tarball   # tests/docker/prerequisites.sh, before pytest
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BASE_IMAGE = "local/bookworm-python:1"
"""Tag of the test base image (any Debian/Ubuntu image with Python 3.11+ would do)."""
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PIP_CONF = Path("/etc/pip.conf")
CACHE = Path(os.environ.get("PNEUMO_TEST_CACHE", Path.home() / ".cache" / "pneumo-tests"))
BASE_ENV = {
    "PIP_CERT": str(CA_BUNDLE),
    "SSL_CERT_FILE": str(CA_BUNDLE),
    "REQUESTS_CA_BUNDLE": str(CA_BUNDLE),
    "PIP_DEFAULT_TIMEOUT": "180",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}
"""Set in the base image: pip and Python trust this machine's CA bundle."""


class EngineUnavailable(RuntimeError):
    """No Docker engine can be started here (no dockerd, not root, no debootstrap)."""


def unavailable_reason() -> str | None:
    """Why no private engine can run on this machine; None when it can."""
    if sys.platform != "linux":
        return f"a private dockerd needs Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "a private dockerd needs root"
    missing = [tool for tool in ("dockerd", "docker", "debootstrap") if not shutil.which(tool)]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install docker.io debootstrap)"
    return None


def _mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources)."""
    for sources in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    for line in Path("/etc/apt/sources.list").read_text().splitlines():
        if line.startswith("deb "):
            return line.split()[1]
    raise EngineUnavailable("no Debian mirror in the apt sources")


def base_tarball() -> Path:
    """A root filesystem tarball of Debian bookworm with Python 3, made once and cached.

    The cache name carries a digest of the CA bundle and pip settings copied into it, so a
    changed trust store makes a new one.
    """
    digest = hashlib.sha256(
        b"".join(p.read_bytes() for p in (CA_BUNDLE, PIP_CONF) if p.exists())
        + " ".join(DEBIAN_PACKAGES).encode()
    ).hexdigest()[:12]
    tarball = CACHE / f"bookworm-python-{digest}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pneumo-rootfs-", dir=CACHE) as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            [
                *("debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}"),
                *("bookworm", str(rootfs), _mirror()),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        shutil.copy(CA_BUNDLE, rootfs / CA_BUNDLE.relative_to("/"))
        if PIP_CONF.exists():  # only the CA setting: the local wheel folders are not inside
            (rootfs / "etc" / "pip.conf").write_text(f"[global]\ncert = {CA_BUNDLE}\n")
        partial = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
    return tarball


@dataclass
class Engine:
    """A running private dockerd; `env` points the docker CLI, docker-py and Prefect at it."""

    root: Path
    process: subprocess.Popen
    host: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        """`docker ARGS` against this engine; its stdout ("" on failure when not `check`)."""
        result = subprocess.run(
            ["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            if check:
                raise RuntimeError(f"docker {' '.join(args)} failed:\n{result.stderr[-4000:]}")
            return ""
        return result.stdout

    def import_base(self) -> str:
        """The base image, imported from the cached tarball; its tag."""
        changes = [f"--change=ENV {k}={v}" for k, v in BASE_ENV.items()]
        self.docker("import", *changes, str(base_tarball()), BASE_IMAGE)
        return BASE_IMAGE


def start_engine() -> Engine:
    """dockerd on a private socket and data root, with no bridge and no iptables rules."""
    reason = unavailable_reason()
    if reason:
        raise EngineUnavailable(reason)
    root = Path(tempfile.mkdtemp(prefix="pneumo-dockerd-"))  # short: socket paths are limited
    host = f"unix://{root / 'docker.sock'}"
    with (root / "dockerd.log").open("wb") as log:
        process = subprocess.Popen(
            [
                *("dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "x")),
                *("-H", host, "--pidfile", str(root / "dockerd.pid")),
                *("--bridge=none", "--iptables=false", "--ip-masq=false"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    engine = Engine(root, process, host)
    deadline = time.monotonic() + 60
    while not engine.docker("version", "--format", "{{.Server.Version}}", check=False, timeout=10):
        if process.poll() is not None or time.monotonic() > deadline:
            log_text = (root / "dockerd.log").read_text(errors="replace")[-3000:]
            stop_engine(engine)
            raise EngineUnavailable(f"dockerd did not start:\n{log_text}")
        time.sleep(0.5)
    return engine


def stop_engine(engine: Engine) -> None:
    """Remove every container, stop dockerd (its containerd goes with it), drop its data."""
    if engine.process.poll() is None:
        with contextlib.suppress(Exception):
            ids = engine.docker("ps", "-aq", timeout=30).split()
            if ids:
                engine.docker("rm", "-f", *ids, timeout=120)
        engine.process.send_signal(signal.SIGTERM)
        try:
            engine.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(engine.process.pid, signal.SIGKILL)
            engine.process.wait(timeout=30)
    # dockerd leaves its network namespace mounted under the exec root
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{engine.root}/")), reverse=True):
        subprocess.run(["umount", mount], check=False)
    shutil.rmtree(engine.root, ignore_errors=True)


def main(argv: list[str]) -> int:
    if argv != ["base-tarball"]:
        print("usage: python -m tests.docker.engine base-tarball", file=sys.stderr)
        return 2
    reason = unavailable_reason()
    if reason:
        print(f"no Docker engine here: {reason}", file=sys.stderr)
        return 1
    print(base_tarball())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
