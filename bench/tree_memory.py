"""Run a function in a fresh process and measure it with its workers: wall time and the peak
anonymous memory of the whole process tree, sampled.

Anonymous memory is what a process holds that no file backs: it is what grows when code keeps
data in Python objects or arrays, and what the kernel cannot drop under pressure. A
memory-mapped cache is file-backed and does not count. The tree's figure is the sum of each
process's `Pss_Anon` (`/proc/<pid>/smaps_rollup`): pages shared copy-on-write by forked
workers are split between them rather than counted once per process, as `RssAnon` would.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")


@dataclass(frozen=True)
class Usage:
    wall_s: float
    peak_anon_bytes: int
    peak_parts: tuple[int, ...]  # each process's share at the peak, largest first


def anon_bytes(pid: int) -> int:
    """Proportional anonymous memory of one process; 0 once it has gone."""
    try:
        text = (PROC / str(pid) / "smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    for line in text.splitlines():
        if line.startswith("Pss_Anon:"):
            return int(line.split()[1]) * 1024
    return 0


def tree(root: int) -> list[int]:
    """`root` and all its descendants now (from each process's parent in /proc/<pid>/stat)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        parent = int(stat.rpartition(")")[2].split()[1])  # the name may hold spaces and ')'
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def run_measured(fn: Callable[..., Any], *args: Any, interval_s: float = 0.25) -> tuple[Any, Usage]:
    """`fn(*args)` in a spawned process (a top-level function, picklable arguments), sampling
    its tree every `interval_s`; returns its result and the usage. Re-raises its failure."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    method = multiprocessing.get_start_method()
    process = context.Process(target=_call, args=(send, method, fn, args))
    started = time.perf_counter()
    process.start()
    send.close()
    peak, parts, reply = 0, (), None
    while reply is None:
        sample = sorted((anon_bytes(pid) for pid in tree(process.pid)), reverse=True)
        if sum(sample) > peak:
            peak, parts = sum(sample), tuple(sample)
        if receive.poll(interval_s):
            try:
                reply = receive.recv()
            except EOFError:  # it ended without a word: killed, or out of memory
                process.join()
                raise RuntimeError(f"{fn.__name__} died, exit code {process.exitcode}") from None
    process.join()
    wall = time.perf_counter() - started
    ok, value = reply
    if not ok:
        raise RuntimeError(f"{fn.__name__} failed in its process:\n{value}")
    return value, Usage(wall, peak, parts)


def _call(send: Any, method: str, fn: Callable[..., Any], args: tuple) -> None:
    # A spawned process starts its own workers by spawning too; start them as the caller
    # would (a DataLoader forks on Linux), or each worker would import torch afresh.
    multiprocessing.set_start_method(method, force=True)
    try:
        reply = (True, fn(*args))
    except BaseException:
        reply = (False, traceback.format_exc())
    send.send(reply)
    send.close()
