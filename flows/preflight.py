"""What `pneumo run` checks before the Prefect engine starts.

Starting Prefect (a temporary API server, the flow engine) takes seconds and turns every
error into a page of tracebacks. So the run id, the configuration (preset, `--epochs`,
`--folds`, `--set`), the folds, the source, a resume's configuration and the store itself
(reachable, writable) are checked here first: a bad one fails in about a second with one
line and nothing written. No prefect import here, and torch only to look for a named GPU.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from pneumo_core.config.run import RunConfig, check_resume, preset
from pneumo_core.data.ingest import check_source
from pneumo_core.errors import InputError
from pneumo_core.layout import check_run_id
from pneumo_core.runs.run import Run
from pneumo_core.storage.base import TMP_SUFFIX, ObjectStore
from pneumo_core.storage.open import open_store


def check_run(
    *,
    source: str,
    storage: str,
    preset_name: str | None,
    overrides: Mapping[str, Any],
    run_id: str | None,
    folds: Sequence[int] | None,
    fold_runner: str,
) -> RunConfig:
    """The configuration the run will use, or the first problem as one exception."""
    if run_id is not None:
        check_run_id(run_id)
    config = preset(preset_name or "default", **overrides)
    store = open_store(storage)
    check_writable(store)
    check_source(source, store)
    if run_id is not None and (run := Run(store, run_id)).exists():
        config = run.config()
        check_resume(config, run_id, preset_name, overrides)
    check_folds(folds, config.n_folds)
    if fold_runner == "local" and config.device not in ("auto", "cpu"):
        # torch: only when there is a GPU to find
        from pneumo_core.train.device import resolve_device

        resolve_device(config.device)  # a GPU that is not here fails now, not in every fold
    return config


def check_folds(folds: Sequence[int] | None, n_folds: int) -> list[int]:
    """The folds to train (all when None), each within 0..n_folds-1."""
    chosen = list(range(n_folds)) if folds is None else sorted(set(folds))
    wrong = [f for f in chosen if not 0 <= f < n_folds]
    if wrong or not chosen:
        raise InputError(f"folds {list(folds or [])}: choose among 0..{n_folds - 1}")
    return chosen


def check_writable(store: ObjectStore) -> None:
    """Write and delete a small object: a store that is a file, read-only, full, missing
    or unreachable fails here with its own error, before any work."""
    probe = f"preflight-{secrets.token_hex(4)}{TMP_SUFFIX}"  # hidden from listings
    store.put_bytes(probe, b"pneumo preflight\n")
    store.delete(probe)
