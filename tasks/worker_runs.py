"""Flow runs handed to workers through a deployment (a fold, the test-set prediction): start
one with its own job variables and wait for its final state.

A run that no worker starts in time is cancelled and fails with NotPickedUp, never retried
(another try would wait on the same pool); once started, it may run as long as it needs.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.states import Cancelled

from tasks.policy import NotRetried

PICKUP_TIMEOUT_S = 600.0  # how long a run may wait (Scheduled/Pending) for a worker
POLL_S = 2.0


class NotPickedUp(NotRetried):
    """No worker started a deployment run in time: another try would wait on the same pool."""


def run_on_worker(
    deployment: str,
    parameters: dict[str, Any],
    job_variables: dict[str, Any] | None,
    pickup_timeout_s: float = PICKUP_TIMEOUT_S,
) -> FlowRun:
    """A `deployment` run (a child of the calling task) once final; `job_variables` apply to
    this run only."""
    flow_run = run_deployment(
        deployment, parameters=parameters, job_variables=job_variables, timeout=0
    )
    return _watch(flow_run.id, deployment, pickup_timeout_s)


def _watch(flow_run_id: UUID, deployment: str, pickup_timeout_s: float) -> FlowRun:
    """The run once final; NotPickedUp (the run cancelled) when it stays Scheduled or
    Pending for longer than `pickup_timeout_s` at a time."""
    with get_client(sync_client=True) as client:
        waiting_since = time.monotonic()
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            state = flow_run.state
            if state is not None and state.is_final():
                return flow_run
            if state is not None and not (state.is_scheduled() or state.is_pending()):
                waiting_since = time.monotonic()  # running: no bound on its time
            elif time.monotonic() - waiting_since > pickup_timeout_s:
                pool = client.read_deployment_by_name(deployment).work_pool_name
                reason = f"no worker of work pool {pool!r} started it in {pickup_timeout_s:g} s"
                client.set_flow_run_state(flow_run_id, Cancelled(message=reason), force=True)
                raise NotPickedUp(
                    f"{deployment} run {flow_run.name!r} ({flow_run_id}) cancelled: {reason}; "
                    f"start a worker (prefect worker start --pool {pool}) and resume the run"
                )
            time.sleep(POLL_S)


def ended(flow_run: FlowRun) -> str | None:
    """None when the run completed, else how it ended: its state type and message."""
    state = flow_run.state
    if state is not None and state.is_completed():
        return None
    if state is None:
        return "UNKNOWN"
    return f"{state.type.value}: {state.message}"
