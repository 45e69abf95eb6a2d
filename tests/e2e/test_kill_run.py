"""`pneumo run` killed with SIGKILL in the middle of training: no process it started (the
temporary Prefect server, data-loader workers) outlives it by more than a few seconds, none
of them carried a secret on its command line, and the next run removes the temporary file a
killed writer left in the store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pneumo_core.data.synthetic import generate
from tests.integration.conftest import descendants

REPO = Path(__file__).resolve().parents[2]
SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "pneumo-fake-aws-secret-5f1c0b",
    "KAGGLE_KEY": "pneumo-fake-kaggle-key-9d2e77",
    "PREFECT_API_KEY": "pnu_fake-prefect-key-41aa",
}
pytestmark = pytest.mark.slow

LEAVE_A_TEMPORARY = """
import sys, time
from pathlib import Path
from pneumo_core.storage.base import atomic_path
with atomic_path(Path(sys.argv[1])) as tmp:
    tmp.write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_sigkill_of_pneumo_run_leaves_no_process_behind(tmp_path: Path) -> None:
    data = generate(tmp_path / "data", n_train=48, n_test=4, image_size=96, seed=7)
    store = tmp_path / "store"
    env = {
        **os.environ,
        **SECRETS,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }  # a busy machine
    env.pop("PREFECT_API_URL", None)  # the run starts its own temporary server

    writer = subprocess.Popen(
        [sys.executable, "-c", LEAVE_A_TEMPORARY, str(store / "runs" / "left.bin")],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
    writer.kill()
    writer.wait()
    [leftover] = store.rglob("*.pneumo-tmp")

    log = (tmp_path / "run.log").open("w")
    run = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--source", str(data), "--storage",
         str(store), "--preset", "ci", "--epochs", "20", "--set", "image_size=64",
         "--set", "num_workers=1"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and run.poll() is None:
        for pid in descendants(run.pid):
            seen.setdefault(pid, _cmdline(pid))
        training = list(store.glob("runs/*/fold-*/checkpoint-last.pt"))
        if training and any("uvicorn" in c for c in seen.values()) and len(seen) >= 3:
            break
        time.sleep(0.2)
    assert run.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
    assert any("uvicorn" in c for c in seen.values()), seen
    assert not leftover.exists()  # swept at the start of the run

    command_lines = [_cmdline(run.pid), *seen.values()]
    for name, value in SECRETS.items():
        assert not [c for c in command_lines if value in c], f"{name} on a command line"

    run.send_signal(signal.SIGKILL)
    run.wait()
    killed = time.monotonic()
    while time.monotonic() - killed < 10 and any(_alive(p) for p in seen):
        time.sleep(0.1)
    left = {p: seen[p] for p in seen if _alive(p)}
    assert not left, f"still running {time.monotonic() - killed:.1f} s after the kill: {left}"
    print(f"{len(seen)} processes started by pneumo run, all gone "
          f"{time.monotonic() - killed:.1f} s after its SIGKILL")  # fmt: skip
