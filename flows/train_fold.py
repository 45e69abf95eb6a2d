"""The `train-fold` flow: one fold of one run, from the store alone.

It takes only the run id, the fold and the store, so a GPU worker anywhere the store is
reachable can run it; the configuration is read from runs/<run_id>/config.json.
"""

from __future__ import annotations

from prefect import flow

from flows.core_logs import core_info_to_run_logs
from pneumo_core.runs.records import FoldResult
from tasks.deployment_names import TRAIN_FOLD_FLOW
from tasks.training import train_fold


@flow(name=TRAIN_FOLD_FLOW, flow_run_name="{run_id}-fold-{fold}", log_prints=True)
def train_fold_flow(run_id: str, fold: int, storage: str) -> FoldResult:
    """Train (resume, or skip when finished) fold `fold` of run `run_id`."""
    core_info_to_run_logs()
    return train_fold(storage, run_id, fold)
