"""The deployments on a real Prefect server with a process worker.

The server, the pool (made by flows.server_setup, as on a GPU host) and the worker are
real; the deployments are registered by `prefect deploy` from deployments/prefect.yaml with
only the work pool swapped for a process pool and the Docker build steps left out.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from flows.server_setup import setup_server
from tasks import deployment_names as names
from tests.integration.conftest import REPO, PrefectServer, log_tail

POOL = "pneumo-process"
PROBE_ENV = {
    "AWS_ACCESS_KEY_ID": "probe-access-key-id",
    "AWS_SECRET_ACCESS_KEY": "probe-secret-access-key",
    "AWS_ENDPOINT_URL": "http://probe.invalid:8333",
    "AWS_DEFAULT_REGION": "eu-probe-1",
    "KAGGLE_USERNAME": "probe-user",
    "KAGGLE_KEY": "probe-kaggle-key",
}
SECRETS = ("probe-secret-access-key", "probe-kaggle-key")


@pytest.fixture(scope="module")
def api(prefect_server: PrefectServer) -> Iterator[PrefectServer]:
    """This process's Prefect client settings pointed at the test server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server


@pytest.fixture(scope="module")
def worker(api: PrefectServer) -> Path:
    """The pool set up as on a GPU host, with a process worker polling it; the worker's log."""
    asyncio.run(setup_server(POOL, "process", None, gpu_limit=1, environ=PROBE_ENV))
    return api.start_worker(POOL)


def wait_for(flow_run_id: UUID, worker_log: Path, timeout_s: float) -> Any:
    """The flow run once it reaches a final state; fails with the worker's log otherwise."""
    from prefect import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            if time.monotonic() > deadline:
                pytest.fail(
                    f"flow run {flow_run.name} still {flow_run.state_name} after {timeout_s} s; "
                    f"worker log:\n{log_tail(worker_log)}"
                )
            time.sleep(1)


def test_gpu_pools_take_the_deployments_as_documented(api: PrefectServer, tmp_path: Path) -> None:
    """The Docker and Kubernetes pools as docs/servers.md makes them, and prefect.yaml on both."""
    from prefect import get_client

    k8s = REPO / "deployments" / "k8s" / "base-job-template.json"
    only_s3_keys = {k: PROBE_ENV[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    asyncio.run(setup_server(names.GPU_WORK_POOL, "docker", None, 1, only_s3_keys))
    asyncio.run(setup_server("gpu-k8s", "kubernetes", k8s, 2, only_s3_keys))
    definitions = deploy_definitions(tmp_path, pool=None)
    storage = {"PNEUMO_STORAGE": "s3://pneumo/rsna"}
    api.cli("deploy", "--all", "--prefect-file", str(definitions), extra_env=storage)
    api.cli(
        *(
            "deploy",
            "--prefect-file",
            str(definitions),
            "--name",
            "train-fold",
            "--pool",
            "gpu-k8s",
        ),
        extra_env=storage,
    )
    with get_client(sync_client=True) as client:
        pools = {p: client.read_work_pool(p) for p in (names.GPU_WORK_POOL, "gpu-k8s")}
        limit = client.read_concurrency_limit_by_tag(names.GPU_TRAIN_TAG)
        pipeline = client.read_deployment_by_name(names.PIPELINE_DEPLOYMENT)
        train_fold = client.read_deployment_by_name(names.TRAIN_FOLD_DEPLOYMENT)
    assert [p.type for p in pools.values()] == ["docker", "kubernetes"]
    assert limit.concurrency_limit == 2  # setup is idempotent: the last call's limit holds
    assert not [
        s for s in SECRETS if s in json.dumps([p.base_job_template for p in pools.values()])
    ]
    assert pipeline.work_pool_name == names.GPU_WORK_POOL
    assert pipeline.parameters["storage"] == storage["PNEUMO_STORAGE"]
    assert "device_requests" not in pipeline.job_variables.get("container_create_kwargs", {})
    assert train_fold.job_variables["container_create_kwargs"]["device_requests"] == [
        {"driver": "nvidia", "count": 1, "capabilities": [["gpu"]]}
    ]
    assert train_fold.work_pool_name == "gpu-k8s"

    # What each fold's child run gets from the pipeline: its own GPU on the Docker pool, the
    # deployment's other kwargs kept; nothing on the Kubernetes pool (the scheduler's job).
    from tasks.gpu_jobs import deployment_gpu_jobs

    api.cli("deploy", "--prefect-file", str(definitions), "--name", "train-fold", extra_env=storage)
    per_fold = deployment_gpu_jobs(names.TRAIN_FOLD_DEPLOYMENT, [0, 1, 2], gpus_per_worker=2)
    assert [j["container_create_kwargs"]["device_requests"][0]["device_ids"] for j in per_fold] == [
        ["0"],
        ["1"],
        ["0"],
    ]
    assert {j["container_create_kwargs"]["shm_size"] for j in per_fold} == {"8g"}
    api.cli(
        *("deploy", "--prefect-file", str(definitions), "--name", "train-fold"),
        *("--pool", "gpu-k8s"),
        extra_env=storage,
    )
    assert deployment_gpu_jobs(names.TRAIN_FOLD_DEPLOYMENT, [0, 1], gpus_per_worker=2) == [{}, {}]


def test_flow_runs_get_credentials_that_no_deployment_holds(
    api: PrefectServer, worker: Path, tmp_path: Path
) -> None:
    from prefect import flow, get_client
    from prefect.deployments import run_deployment

    (tmp_path / "probe.py").write_text(
        "import json, os, sys\n"
        "from prefect import flow\n\n\n"
        "@flow\n"
        "def probe(out: str) -> None:\n"
        f"    names = {sorted(PROBE_ENV)!r}\n"
        "    open(out, 'w').write(json.dumps({n: os.environ.get(n) for n in names}))\n"
        "    pids = [os.getpid(), os.getppid()]  # the flow run and the process that started it\n"
        "    lines = [open(f'/proc/{p}/cmdline', 'rb').read().decode() for p in pids]\n"
        "    open(out + '.cmdlines', 'w').write(json.dumps(lines))\n"
    )
    probe = flow.from_source(source=str(tmp_path), entrypoint="probe.py:probe")
    probe.deploy(name="probe", work_pool_name=POOL, print_next_steps=False)
    out = tmp_path / "env.json"
    flow_run = run_deployment("probe/probe", parameters={"out": str(out)}, timeout=0)
    finished = wait_for(flow_run.id, worker, timeout_s=180)
    assert finished.state.is_completed(), finished.state.message
    assert json.loads(out.read_text()) == PROBE_ENV
    command_lines = json.loads(Path(f"{out}.cmdlines").read_text())
    assert len(command_lines) == 2 and all(command_lines)  # the flow run and its parent
    assert not [s for s in SECRETS if s in json.dumps(command_lines)]  # nothing on the process list
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("probe/probe")
    stored = json.dumps([deployment.model_dump(mode="json"), finished.model_dump(mode="json")])
    assert not [s for s in SECRETS if s in stored]


def deploy_definitions(tmp_path: Path, pool: str | None) -> Path:
    """deployments/prefect.yaml without the Docker build (no Docker here) and schedules off.

    With `pool`, every deployment goes to that pool with no job variables (the process pool
    instead of Docker); without, the Docker job variables stay, with a fixed image name.
    """
    config = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    for step in ("build", "push"):
        config.pop(step)
    config["pull"] = [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    for deployment in config["deployments"]:
        if pool is None:
            deployment["work_pool"]["job_variables"]["image"] = "pneumo-worker:test"
        else:
            deployment["work_pool"] = {"name": pool, "job_variables": {}}
        for schedule in deployment.get("schedules", []):
            schedule["active"] = False  # a retrain must not start during the test
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_pipeline_fans_out_to_train_fold_deployment_runs(
    api: PrefectServer, worker: Path, tmp_path: Path
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        DeploymentFilter,
        DeploymentFilterId,
    )
    from prefect.deployments import run_deployment

    from pneumo_core.data.synthetic import generate
    from pneumo_core.storage.open import open_store

    storage = f"file://{tmp_path / 'store'}"
    source = generate(tmp_path / "source", n_train=24, n_test=4, image_size=64, seed=3)
    api.cli(
        *("deploy", "--all", "--prefect-file", str(deploy_definitions(tmp_path, POOL))),
        extra_env={"PNEUMO_STORAGE": storage},
    )
    parameters = {"source": str(source), "preset": "ci", "overrides": {"epochs": 1}}
    flow_run = run_deployment(names.PIPELINE_DEPLOYMENT, parameters=parameters, timeout=0)
    finished = wait_for(flow_run.id, worker, timeout_s=1000)
    assert finished.state.is_completed(), f"{finished.state.message}\n{log_tail(worker)}"
    assert finished.parameters["storage"] == storage  # from PNEUMO_STORAGE at deploy time
    assert finished.parameters["fold_runner"] == "deployment"

    with get_client(sync_client=True) as client:
        pipeline = client.read_deployment_by_name(names.PIPELINE_DEPLOYMENT)
        (schedule,) = pipeline.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * 1", "UTC")
        train_fold = client.read_deployment_by_name(names.TRAIN_FOLD_DEPLOYMENT)
        children = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[train_fold.id]))
        )
        parents = {client.read_task_run(c.parent_task_run_id).flow_run_id for c in children}

        def artifacts(run_id: UUID) -> list[Any]:
            return client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )

        pipeline_artifacts = artifacts(finished.id)
        child_artifacts = [{a.type for a in artifacts(c.id)} for c in children]

    assert sorted(c.parameters["fold"] for c in children) == [0, 1]
    assert all(c.state.is_completed() for c in children)
    assert parents == {finished.id}
    assert {"table", "markdown"} <= {a.type for a in pipeline_artifacts}  # links are markdown
    assert all("progress" in kinds for kinds in child_artifacts)

    store = open_store(storage)
    (run_id,) = {key.split("/")[1] for key in store.list("runs/")}
    assert {c.parameters["run_id"] for c in children} == {run_id}
    for key in ("config.json", "report.md", "submission.csv", "evaluation.json"):
        assert store.exists(f"runs/{run_id}/{key}"), key
    linked = " ".join(str(a.data) for a in pipeline_artifacts)
    assert f"runs/{run_id}/submission.csv" in linked and f"runs/{run_id}/report.md" in linked
    for fold in (0, 1):
        assert store.exists(f"runs/{run_id}/fold-{fold}/done.json")
        assert store.exists(f"runs/{run_id}/fold-{fold}/checkpoint-last.pt")
