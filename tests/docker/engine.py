"""A private Docker engine for the tests, and the Debian base image it builds on.

dockerd runs on its own socket, data root and exec root, with no bridge, no iptables rules
and no masquerading: it makes no network interface and no address outside 127.0.0.0/8.
Every build and container uses host networking, so containers reach the servers that the
tests start on 127.0.0.1 and nothing else. No image registry is reachable here, so the base
image is bootstrapped from Debian packages (debootstrap) with this machine's CA bundle and
pip settings, and cached as a tarball so that it is made once per machine:

    python -m tests.docker.engine base-tarball   # tests/docker/prerequisites.sh, before pytest

The image registry is Debian's docker-registry on 127.0.0.1. The engine's data root and the
registry's storage are kept between sessions (under the test cache): then `prefect deploy`'s
build in the tests reuses the layers that an earlier build made (Docker's layer cache), and
its push skips the layers that the registry holds already (the engine remembers the digests
it pushed), as on a GPU host's second deploy.
`warm` makes that build and push ahead of time, exactly as the deploy's steps will (same
Dockerfile, context, build arguments and repository): .ci/run starts it beside the CPU-bound
suite, and the Docker tests, which pytest runs last, wait for it (one engine at a time, a
file lock):

    python -m tests.docker.engine warm           # tests/docker/prerequisites.sh warm
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.seaweedfs import free_ports

BASE_IMAGE = "local/bookworm-python:1"
"""Tag of the test base image (any Debian/Ubuntu image with Python 3.11+ would do)."""
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PIP_CONF = Path("/etc/pip.conf")
CACHE = Path(os.environ.get("PNEUMO_TEST_CACHE", Path.home() / ".cache" / "pneumo-tests"))
DATA_ROOT = CACHE / "docker-data"
"""The engine's images and layer cache, kept between sessions (containers and volumes are not)."""
LOCK = CACHE / "docker.lock"
"""Held by whoever runs the engine on DATA_ROOT: a second one waits."""
LOCK_WAIT_S = 3600.0
REPO = Path(__file__).resolve().parents[2]
REGISTRY_ROOT = CACHE / "registry"
WORKER_REPOSITORY = "pneumo-worker"
"""Under the registry's address: PNEUMO_IMAGE in the tests."""
BASE_LABEL = "pneumo.base-tarball"
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
    lock: IO[bytes]

    @property
    def env(self) -> dict[str, str]:
        # DOCKER_BUILDKIT=0: the classic builder, the one prefect.yaml's build step uses
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0"}

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

    def remove_containers(self, *filters: str, wait_s: float = 120) -> None:
        """Remove the containers matching every `filters` (all of them when none) and wait
        until they are gone: a container the worker started with auto-remove may be on its
        way out already, and then `docker rm -f` answers "removal ... already in progress"
        (seen in CI)."""
        deadline = time.monotonic() + wait_s
        selection = [arg for f in filters for arg in ("--filter", f)]
        while ids := self.docker("ps", "-aq", *selection, timeout=30).split():
            if time.monotonic() > deadline:
                raise RuntimeError(f"containers {ids} still present after {wait_s:.0f} s")
            self.docker("rm", "-f", *ids, timeout=120, check=False)
            time.sleep(1)

    def import_base(self) -> str:
        """The base image, imported from the cached tarball unless the data root has it
        already (a new import is a new image id, which would miss every cached layer)."""
        tarball = base_tarball()
        label = f'{{{{index .Config.Labels "{BASE_LABEL}"}}}}'
        found = self.docker("image", "inspect", "--format", label, BASE_IMAGE, check=False)
        if found.strip() != tarball.name:
            changes = [f"--change=ENV {k}={v}" for k, v in BASE_ENV.items()]
            changes.append(f"--change=LABEL {BASE_LABEL}={tarball.name}")
            self.docker("import", *changes, str(tarball), BASE_IMAGE)
        return BASE_IMAGE


def _take_lock(wait_s: float) -> IO[bytes]:
    """The engine lock, waiting up to `wait_s` for its holder (a `warm` build) to finish."""
    CACHE.mkdir(parents=True, exist_ok=True)
    handle = LOCK.open("wb")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise EngineUnavailable(f"{LOCK} still held after {wait_s:.0f} s") from None
            time.sleep(2)


def start_engine(wait_s: float = LOCK_WAIT_S) -> Engine:
    """dockerd on a private socket and the kept data root, with no bridge and no iptables
    rules; containers and volumes a killed session left behind are removed first."""
    reason = unavailable_reason()
    if reason:
        raise EngineUnavailable(reason)
    lock = _take_lock(wait_s)
    root = Path(tempfile.mkdtemp(prefix="pneumo-dockerd-"))  # short: socket paths are limited
    host = f"unix://{root / 'docker.sock'}"
    with (root / "dockerd.log").open("wb") as log:
        process = subprocess.Popen(
            [
                *("dockerd", "--data-root", str(DATA_ROOT), "--exec-root", str(root / "x")),
                *("-H", host, "--pidfile", str(root / "dockerd.pid")),
                *("--bridge=none", "--iptables=false", "--ip-masq=false"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    engine = Engine(root, process, host, lock)
    deadline = time.monotonic() + 60
    while not engine.docker("version", "--format", "{{.Server.Version}}", check=False, timeout=10):
        if process.poll() is not None or time.monotonic() > deadline:
            log_text = (root / "dockerd.log").read_text(errors="replace")[-3000:]
            stop_engine(engine)
            raise EngineUnavailable(f"dockerd did not start:\n{log_text}")
        time.sleep(0.5)
    _remove_containers_and_volumes(engine)
    return engine


def _remove_containers_and_volumes(engine: Engine) -> None:
    engine.remove_containers()
    engine.docker("volume", "prune", "-f", timeout=120)


def stop_engine(engine: Engine) -> None:
    """Remove every container and volume and the images no tag holds, stop dockerd (its
    containerd goes with it), drop its socket and exec root; the data root's images stay."""
    if engine.process.poll() is None:
        with contextlib.suppress(Exception):
            _remove_containers_and_volumes(engine)
            engine.docker("image", "prune", "-f", timeout=300)
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
    engine.lock.close()


@dataclass
class Registry:
    """A running docker-registry; `address` (host:port) prefixes image names pushed to it."""

    address: str
    process: subprocess.Popen


def start_registry() -> Registry:
    """Debian's docker-registry on 127.0.0.1 with the kept storage; start it under the
    engine lock (start_engine), which keeps a second session off the same storage."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise EngineUnavailable("docker-registry not installed (apt-get install docker-registry)")
    REGISTRY_ROOT.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{free_ports(1)[0]}"
    config, log_path = REGISTRY_ROOT / "config.yml", REGISTRY_ROOT / "registry.log"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {REGISTRY_ROOT / 'data'}}}}}\n"
        f"http: {{addr: {address}}}\n"
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    registry = Registry(address, process)
    deadline = time.monotonic() + 30
    while True:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as answer,
        ):
            if answer.status == 200:
                return registry
        if process.poll() is not None or time.monotonic() > deadline:
            stop_registry(registry)
            raise EngineUnavailable(log_path.read_text(errors="replace")[-2000:])
        time.sleep(0.3)


def stop_registry(registry: Registry) -> None:
    registry.process.terminate()
    try:
        registry.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        registry.process.kill()
        registry.process.wait(timeout=30)


def warm() -> None:
    """The worker image built and pushed as `prefect deploy`'s steps do it in the tests
    (deployments/prefect.yaml with test_worker_containers.documented_env: this Dockerfile
    and context, BASE_IMAGE, host network, intermediate containers removed, no pull, the
    same repository), so that its layers stay in the engine's cache and the registry."""
    engine = start_engine()
    registry = start_registry()
    try:
        base = engine.import_base()
        image = f"{registry.address}/{WORKER_REPOSITORY}:warm"
        dockerfile = REPO / "docker" / "Dockerfile"
        engine.docker(
            *("build", "-f", str(dockerfile), "--build-arg", f"BASE_IMAGE={base}"),
            *("--network", "host", "--rm", "-t", image, str(REPO)),
            timeout=3600,
        )
        engine.docker("push", image, timeout=3600)
        # the registry's port changes per session: older warm tags would keep old layers
        tags = engine.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}")
        stale = [tag for tag in tags.split() if tag.endswith(f"/{WORKER_REPOSITORY}:warm")]
        for tag in (tag for tag in stale if tag != image):
            engine.docker("rmi", tag)
    finally:
        stop_registry(registry)
        stop_engine(engine)


def main(argv: list[str]) -> int:
    if argv not in (["base-tarball"], ["warm"]):
        print("usage: python -m tests.docker.engine base-tarball|warm", file=sys.stderr)
        return 2
    reason = unavailable_reason()
    if reason:
        print(f"no Docker engine here: {reason}", file=sys.stderr)
        return 1
    if argv == ["warm"]:
        started = time.monotonic()
        warm()
        print(f"worker image built and pushed in {time.monotonic() - started:.0f} s")
    else:
        print(base_tarball())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
