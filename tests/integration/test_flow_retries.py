"""Task retries under a temporary Prefect API: a store that drops connections for a moment
is retried until the run completes; bad input fails at once, without a retry."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.pipeline import pipeline
from flows.train_fold import train_fold_flow
from pneumo_core.config.run import preset
from pneumo_core.data.ingest import ingest
from pneumo_core.data.prepare import prepare_dataset
from pneumo_core.data.synthetic import generate
from pneumo_core.runs.run import create_run
from pneumo_core.storage.open import open_store
from pneumo_core.storage.s3 import S3Store
from tests.seaweedfs import S3Server

pytestmark = pytest.mark.usefixtures("prefect_harness")


class FlakyProxy:
    """A loopback TCP proxy that resets its first `drop` connections, then forwards."""

    def __init__(self, upstream: str, drop: int) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.drop = drop
        self.dropped = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self.thread.join(timeout=5)

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed by __exit__
            if self.dropped < self.drop:
                self.dropped += 1
                # SO_LINGER 0: close sends a reset, as a vanishing endpoint does
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream) as remote:
            back = threading.Thread(target=_pump, args=(remote, client), daemon=True)
            back.start()
            _pump(client, remote)
            back.join()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)


def task_runs_of(flow_run_id: Any, *expected: str, timeout: float = 30.0) -> dict[str, Any]:
    """Final task runs of a flow run by name, once `expected` are among them (task runs and
    their states reach the API through events, a moment after the flow returns)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        by_name = {r.name: r for r in runs}
        final = all(r.state_type.value in ("COMPLETED", "FAILED") for r in runs)
        if (runs and final and set(expected) <= set(by_name)) or time.monotonic() > deadline:
            return by_name
        time.sleep(0.5)


def state_names(task_run_id: Any) -> list[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [s.name for s in client.read_task_run_states(task_run_id)]


@pytest.fixture
def s3_run(seaweedfs: S3Server, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A tiny prepared dataset and a created 2-fold run in S3, made without Prefect."""
    prefix = f"tests/{uuid.uuid4().hex}"
    store = S3Store(
        seaweedfs.bucket, prefix, endpoint_url=seaweedfs.endpoint, region=seaweedfs.region,
        access_key=seaweedfs.access_key, secret_key=seaweedfs.secret_key,
        cache_dir=tmp_path / "setup-cache",
    )  # fmt: skip
    data = generate(tmp_path / "synth", n_train=16, n_test=2, image_size=96, seed=2)
    config = preset("ci", image_size=64, epochs=1)
    ingest(str(data), store, dataset=config.dataset, progress=False)
    prepare_dataset(store, config.dataset, 64, config.n_folds, config.seed, workers=1)
    run_id = create_run(store, config)
    yield f"s3://{seaweedfs.bucket}/{prefix}", run_id
    store.delete_prefix("")


def test_store_dropping_connections_is_retried_and_the_fold_completes(
    seaweedfs: S3Server,
    s3_run: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The worker's store resets its first two connections: the store's own layer (botocore's
    retries, 3 attempts here) absorbs them, so the training task runs once, without a task
    retry on top (one layer owns each retry), and the fold is trained."""
    import torch

    torch.set_num_threads(1)
    storage, run_id = s3_run
    with FlakyProxy(seaweedfs.endpoint, drop=2) as proxy:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_key)
        monkeypatch.setenv("AWS_REGION", seaweedfs.region)
        monkeypatch.setenv("PNEUMO_S3_MAX_ATTEMPTS", "3")
        monkeypatch.setenv("PNEUMO_CACHE_DIR", str(tmp_path / "worker-cache"))

        state = train_fold_flow(run_id=run_id, fold=0, storage=storage, return_state=True)
        assert proxy.dropped == 2

    assert state.is_completed(), state.message
    assert state.result().epochs == 1
    assert open_store(storage).exists(f"runs/{run_id}/fold-0/done.json")
    runs = task_runs_of(state.state_details.flow_run_id, "train-fold-0")
    training = runs["train-fold-0"]
    assert training.state_type.value == "COMPLETED"
    assert training.run_count == 1
    names = state_names(training.id)
    assert "AwaitingRetry" not in names and names[-1] == "Completed", names


def test_bad_source_fails_at_once_without_retry(tmp_path: Path) -> None:
    """A source without the competition's files is bad input: ingest (a retried task) fails
    on its first attempt with the reason, and the run stops there."""
    source = tmp_path / "not-an-archive"
    source.mkdir()
    (source / "readme.txt").write_text("no labels here")
    state = pipeline(
        source=str(source), storage=(tmp_path / "store").as_uri(), preset="ci", return_state=True
    )
    assert state.is_failed()
    ingest_run = "ingest-rsna-pneumonia-detection-challenge"
    runs = task_runs_of(state.state_details.flow_run_id, ingest_run)
    failed = runs[ingest_run]
    assert failed.state_type.value == "FAILED"
    assert failed.run_count == 1
    assert "AwaitingRetry" not in state_names(failed.id)
    assert "InputError" in failed.state.message
    assert "stage_2_train_labels.csv" in failed.state.message
    assert not any(name.startswith(("prepare", "train-fold")) for name in runs)


def test_fold_outside_the_run_fails_at_once_without_retry(
    s3_run: tuple[str, str], s3_env: str
) -> None:
    """A deterministic failure inside a retried task (the training task) is not retried."""
    storage, run_id = s3_run
    state = train_fold_flow(run_id=run_id, fold=7, storage=storage, return_state=True)
    assert state.is_failed()
    training = task_runs_of(state.state_details.flow_run_id, "train-fold-7")["train-fold-7"]
    assert training.run_count == 1
    assert "AwaitingRetry" not in state_names(training.id)
    assert "fold 7" in training.state.message


# The pipeline runs in a subprocess here: Prefect's events worker (which records task runs)
# stays bound to the first API a process talks to, and this process talks to the harness.
PIPELINE_AGAINST_SERVER = """
import json, sys
from pathlib import Path
from flows.pipeline import pipeline
from flows.train_fold import train_fold_flow

args = json.loads(sys.argv[1])
train_fold_flow.from_source(
    source=args["repo"], entrypoint="flows/train_fold.py:train_fold_flow"
).deploy(name="broken-store", work_pool_name=args["pool"], print_next_steps=False)
pipeline(
    source=args["source"], storage=args["storage"], preset="ci",
    overrides={"image_size": 64, "epochs": 1}, fold_runner="deployment",
    fold_deployment="train-fold/broken-store",
)
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fold_failing_on_its_worker_is_retried_then_fails_the_pipeline_naming_it(
    prefect_server: Any, seaweedfs: S3Server, s3_env: str, tmp_path: Path
) -> None:
    """Deployment fold runner against a real server and a process worker whose store
    credentials are wrong: each fold's child run fails, the wrapper task starts it again
    (2 retries), and the pipeline then fails naming the fold and its last child run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.training import FOLD_RETRIES

    pool = f"fold-failures-{uuid.uuid4().hex[:6]}"
    prefect_server.cli("work-pool", "create", pool, "--type", "process")
    store_env = {
        "AWS_ENDPOINT_URL": seaweedfs.endpoint,
        "AWS_ACCESS_KEY_ID": seaweedfs.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweedfs.secret_key,
        "AWS_REGION": seaweedfs.region,
        "PNEUMO_CACHE_DIR": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    worker_log = prefect_server.start_worker(
        pool, extra_env={**store_env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    )
    source = generate(tmp_path / "synth", n_train=16, n_test=2, image_size=96, seed=2)
    repo = Path(__file__).resolve().parents[2]
    args = {"repo": str(repo), "pool": pool, "source": str(source), "storage": s3_env}
    done = subprocess.run(
        [sys.executable, "-c", PIPELINE_AGAINST_SERVER, json.dumps(args)],
        cwd=repo, env={**prefect_server.env, **store_env}, capture_output=True, text=True,
        timeout=800,
    )  # fmt: skip
    assert done.returncode != 0, done.stdout[-3000:]
    assert "FoldRunFailed" in done.stderr, done.stderr[-3000:] + worker_log.read_text()[-3000:]

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        with get_client(sync_client=True) as client:
            (parent,) = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[_flow_run_id(done)]))
            )
            children = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["broken-store"]))
            )
        runs = task_runs_of(parent.id, "train-fold-0-on-worker", "train-fold-1-on-worker")

    assert parent.state_type.value == "FAILED"
    named = r"fold 0 of run \S+: child flow run '[\w-]+' \(.+\) ended FAILED"
    assert re.search(named, parent.state.message), parent.state.message
    assert "StorageError" in parent.state.message  # the wrong secret, not some other breakage
    assert len(children) == 2 * (1 + FOLD_RETRIES)
    assert all(child.state_type.value == "FAILED" for child in children)
    assert {child.parameters["fold"] for child in children} == {0, 1}
    for fold in (0, 1):
        wrapper = runs[f"train-fold-{fold}-on-worker"]
        assert wrapper.state_type.value == "FAILED" and wrapper.run_count == 1 + FOLD_RETRIES
    assert not any(name.startswith("evaluate") for name in runs)
    run_id = children[0].parameters["run_id"]
    assert not open_store(s3_env).list(f"runs/{run_id}/fold-0/")  # nothing trained


def _flow_run_id(done: subprocess.CompletedProcess[str]) -> str:
    """The pipeline's flow run id, from the "View at .../runs/flow-run/<id>" log line."""
    found = re.search(r"Flow run '[\w-]+' - View at \S+/runs/flow-run/([0-9a-f-]{36})", done.stderr)
    assert found, done.stderr[-3000:]
    return found.group(1)
