"""One JSON line per benchmark figure, with its baseline, ratio, limit and the machine.

Every benchmark calls `emit` for each figure it measures; the line is printed and appended
to `bench/results/<date>-<host>.jsonl` (or to `$BENCH_RESULTS`: `make bench` names one file
per run), which `bench.table` turns into the table of docs/benchmarks.md. Ours and the
baseline are always measured side by side in the same run (the machine may be shared, so
absolute figures drift; the ratio is the figure to trust). The load average at the time is
recorded with each line for the same reason.
"""

from __future__ import annotations

import json
import os
import platform
import socket
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@cache
def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Where a figure was measured: CPU model and usable cores, torch threads, device."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "cpu": cpu_model(),
        "cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "load_1min": round(os.getloadavg()[0], 2),
    }


def results_file(now: datetime | None = None) -> Path:
    """`BENCH_RESULTS` when set (`make bench` names one file for all its benchmarks, so that a
    run past midnight stays in one file), else today's file for this host."""
    if named := os.environ.get("BENCH_RESULTS"):
        return Path(named)
    now = now or datetime.now(UTC)
    return RESULTS / f"{now:%Y-%m-%d}-{socket.gethostname()}.jsonl"


def emit(
    name: str,
    value: float,
    unit: str,
    *,
    baseline: float | None = None,
    limit: float | None = None,
    higher_is_better: bool = True,
    note: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """Print and append one figure. `ratio` is how many times better ours is than the
    baseline (>1: ours wins), whichever direction the unit counts."""
    ratio = None
    if baseline:
        ratio = value / baseline if higher_is_better else baseline / value
    now = datetime.now(UTC)
    line = {
        "name": name,
        "value": round(value, 4),
        "unit": unit,
        "baseline": None if baseline is None else round(baseline, 4),
        "ratio": None if ratio is None else round(ratio, 2),
        "limit": None if limit is None else round(limit, 4),
        "higher_is_better": higher_is_better,
        "note": note,
        "machine": machine(),
        "time": now.isoformat(timespec="seconds"),
        **extra,
    }
    text = json.dumps(line)
    print(text, flush=True)
    path = results_file(now)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(text + "\n")
    return line
