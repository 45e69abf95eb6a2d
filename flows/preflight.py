"""What `pneumo run` checks before the Prefect engine starts.

Starting Prefect (a temporary API server, the flow engine) takes seconds and turns every
error into a page of tracebacks. So the run id, the configuration (preset, `--epochs`,
`--folds`, `--set`), the folds, the source, a resume's configuration and the store itself
(reachable, writable) are checked here first: a bad one fails in about a second with one
line and nothing written. No prefect import here, and torch only to look for a named GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pneumo_core.config.run import RunConfig
from pneumo_core.data.ingest import check_source
from pneumo_core.errors import InputError
from pneumo_core.layout import check_run_id
from pneumo_core.runs.run import resolve_config
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
    store = open_store(storage)
    store.probe()  # one try: a refused or silent store answers now, not after every retry
    config = resolve_config(store, preset_name, overrides, run_id)
    check_source(source, store)
    check_folds(folds, config.n_folds)
    if fold_runner == "local" and config.execution.device not in ("auto", "cpu"):
        # torch: only when there is a GPU to find; one that is not here fails now, not in
        # every fold
        from pneumo_core.train.device import resolve_device

        resolve_device(config.execution.device)
    return config


def check_folds(folds: Sequence[int] | None, n_folds: int) -> list[int]:
    """The folds to train (all when None), each within 0..n_folds-1."""
    chosen = list(range(n_folds)) if folds is None else sorted(set(folds))
    wrong = [f for f in chosen if not 0 <= f < n_folds]
    if wrong or not chosen:
        raise InputError(f"folds {list(folds or [])}: choose among 0..{n_folds - 1}")
    return chosen
