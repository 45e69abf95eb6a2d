"""No process that `pneumo run` starts outlives it: not the temporary Prefect server, not a
data-loader or decoding worker, even when `pneumo run` is killed with SIGKILL.

`pneumo run` leads its own process group (its children inherit it) and starts this module as
a small guard in a session of its own: the guard waits on a pidfd for `pneumo run` to end,
however it ends, then stops the whole group (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time

GRACE_S = 2.0


def guard_children() -> None:
    """Make this process a group leader and start the guard that ends the group with it."""
    if os.getpgrp() != os.getpid():
        os.setpgrp()
    subprocess.Popen(
        [sys.executable, "-m", "flows.child_guard", str(os.getpid())],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )


def _watch(leader: int) -> None:
    try:
        fd = os.pidfd_open(leader)
    except ProcessLookupError:
        fd = None
    if fd is not None:
        select.select([fd], [], [])  # readable once the leader has exited
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 0.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader, sig)
        time.sleep(wait)


if __name__ == "__main__":
    _watch(int(sys.argv[1]))
