"""A real Prefect server, and workers polling it, as subprocesses that are always cleaned up.

The server keeps its own PREFECT_HOME and SQLite database in a temporary folder. Every
process started here is stopped at teardown together with all its descendants: a process
worker starts each flow run in a session of its own, so a process-group kill would miss them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.seaweedfs import free_ports

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (Linux /proc), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name may hold spaces and parentheses: the ppid follows the last ")".
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def stop_tree(process: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM the process and all its descendants, then SIGKILL whatever is left."""
    pids = [*descendants(process.pid), process.pid]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            process.poll()  # reap our direct child so it does not linger as a zombie
            time.sleep(0.2)
            pids += [p for p in descendants(process.pid) if p not in pids]
    process.wait(timeout=grace_s)


@dataclass
class PrefectServer:
    """A running `prefect server start`; `env` points `prefect` subprocesses at it."""

    api_url: str
    env: dict[str, str]
    logs: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def cli(self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 300) -> str:
        """Run `prefect ARGS` from the repository root against this server; its output."""
        result = subprocess.run(
            [PREFECT, "--no-prompt", *args],
            cwd=REPO,
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} failed:\n{output[-4000:]}")
        return output

    def spawn(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> Path:
        """Start `prefect ARGS` in the background (stopped at teardown); its log file."""
        log_path = self.logs / f"{name}.log"
        with log_path.open("ab") as log:
            self.processes.append(
                subprocess.Popen(
                    [PREFECT, *args],
                    cwd=REPO,
                    env={**self.env, **(extra_env or {})},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return log_path

    def start_worker(self, pool: str, extra_env: dict[str, str] | None = None) -> Path:
        """A process worker on `pool` that polls every second; its log file."""
        fast = {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
        return self.spawn(
            f"worker-{pool}",
            *("worker", "start", "--pool", pool, "--type", "process"),
            extra_env={**fast, **(extra_env or {})},
        )

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            stop_tree(process)
        self.processes.clear()


def log_tail(path: Path, lines: int = 60) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """`prefect server start` on a free loopback port, with its own home and database."""
    server, port = server_settings(tmp_path_factory.mktemp("prefect-server"))
    try:
        start_server(server, port)
        yield server
    finally:
        server.stop_all()


def server_settings(root: Path) -> tuple[PrefectServer, int]:
    """A server's settings (home and SQLite database under `root`, a free port); not started."""
    root.mkdir(parents=True, exist_ok=True)
    (port,) = free_ports(1)
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(root / "home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "OMP_NUM_THREADS": "1",
    }
    return PrefectServer(api_url, env, root), port


def start_server(server: PrefectServer, port: int) -> subprocess.Popen:
    """`prefect server start` for `server` on `port`, once its API answers (also a restart:
    same database, same port)."""
    log = server.spawn(
        "server", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"
    )
    process = server.processes[-1]
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited early:\n{log_tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                return process
        if time.monotonic() > deadline:
            raise RuntimeError(f"prefect server not healthy within 120 s:\n{log_tail(log)}")
        time.sleep(0.5)
