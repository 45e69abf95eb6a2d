"""Temporary files (`*.pneumo-tmp`) that a killed process left behind, removed by the next run.

`storage.atomic_path` names each temporary `.<name>.<pid>.<random>.pneumo-tmp`; one whose
process no longer runs on this host will never be renamed into place.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pneumo_core.storage.base import TMP_SUFFIX

log = logging.getLogger(__name__)


def sweep(root: Path) -> int:
    """Delete the orphaned temporaries under `root`; returns how many."""
    removed = 0
    if not root.is_dir():
        return 0
    for path in root.rglob(f"*{TMP_SUFFIX}"):
        pid = _writer_pid(path.name)
        if pid is not None and not _running(pid):
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d temporary file(s) left under %s by killed processes", removed, root)
    return removed


def _writer_pid(name: str) -> int | None:
    parts = name.removesuffix(TMP_SUFFIX).split(".")
    return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
