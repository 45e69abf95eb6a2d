"""The GPU host's path on CPU: `prefect deploy` builds and pushes the worker image, a real
Docker worker starts one container per fold, and a killed fold container is retried.

Everything is real: a private dockerd (host networking only), a local registry, a Prefect
server, SeaweedFS, the pool made by `python -m flows.server_setup`, the deployments from
deployments/prefect.yaml registered by `prefect deploy` (build and push steps included),
and `prefect worker start --type docker`. The commands are the ones docs/servers.md gives
for a GPU host; only the environment differs (PNEUMO_BASE_IMAGE, the build's and the
containers' network, the pull policy, no GPUs).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from tasks import deployment_names as names
from tests.docker import commands
from tests.docker.engine import BASE_IMAGE, WORKER_REPOSITORY, Engine
from tests.integration.conftest import REPO, PrefectServer, log_tail
from tests.seaweedfs import S3Server

pytestmark = [pytest.mark.slow, pytest.mark.docker]

KAGGLE_KEY = f"docker-probe-kaggle-{uuid.uuid4().hex}"
"""A fake credential that must appear in no container command, log or artifact."""
EPOCHS = 4
IMAGE_USER = "10001:10001"


@dataclass
class Deployed:
    """What the deploy left: the pushed image, the store, the worker's log, the secrets."""

    server: PrefectServer
    engine: Engine
    image: str
    registry: str
    storage: str
    store_env: dict[str, str]
    worker_log: Path
    deploy_output: str
    secrets: tuple[str, ...]


def documented_env(
    server: PrefectServer, engine: Engine, seaweedfs: S3Server, registry: str, prefix: str
) -> dict[str, str]:
    """The GPU host's environment for server_setup, deploy and worker, with this machine's
    differences: the Debian base, host networking, no pulls, CPU only."""
    return {
        **server.env,
        "DOCKER_HOST": engine.host,
        "PNEUMO_IMAGE": f"{registry}/{WORKER_REPOSITORY}",
        "PNEUMO_STORAGE": f"s3://{seaweedfs.bucket}/{prefix}",
        "PNEUMO_BASE_IMAGE": BASE_IMAGE,
        "PNEUMO_BUILD_NETWORK": "host",
        "AWS_ACCESS_KEY_ID": seaweedfs.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweedfs.secret_key,
        "AWS_ENDPOINT_URL": seaweedfs.endpoint,
        "AWS_DEFAULT_REGION": seaweedfs.region,
        "KAGGLE_USERNAME": "docker-probe",
        "KAGGLE_KEY": KAGGLE_KEY,
        "GPU_TRAIN_LIMIT": "2",
    }


def venv_command(command: str) -> list[str]:
    """A documented command with its program taken from this virtualenv."""
    program, *args = shlex.split(command)
    return [str(Path(sys.executable).parent / program), *args]


def run(cmd: list[str], env: dict[str, str], timeout: float) -> str:
    """A command from the repository root; its output, or a failure showing it."""
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd[:4])} failed:\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def deployed(
    docker_engine: Engine,
    image_registry: Any,
    prefect_server: PrefectServer,
    seaweedfs: S3Server,
) -> Iterator[Deployed]:
    """server_setup, `prefect deploy --all` (build + push) and a Docker worker, as documented."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    prefix = f"docker-tests/{uuid.uuid4().hex[:8]}"
    env = documented_env(prefect_server, docker_engine, seaweedfs, image_registry.address, prefix)
    run(venv_command(commands.SERVER_SETUP), env, timeout=120)
    started = time.monotonic()
    output = run(venv_command(commands.DEPLOY), env, timeout=1500)
    cached = output.count("Using cache")  # steps found in the kept layer cache (engine.py)
    print(f"prefect deploy (build + push) took {time.monotonic() - started:.0f} s, {cached=}")
    # The worker gets nothing of the store: its runs get credentials from the pool's env.
    worker_env = {k: v for k, v in env.items() if not k.startswith(("AWS_", "KAGGLE_"))}
    worker = shlex.split(commands.WORKER)
    assert worker[0] == "prefect"
    worker_log = prefect_server.spawn(
        "docker-worker", *worker[1:], extra_env={**worker_env, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    )
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        from prefect import get_client

        with get_client(sync_client=True) as client:
            image = client.read_deployment_by_name(names.TRAIN_FOLD_DEPLOYMENT).job_variables[
                "image"
            ]
        yield Deployed(
            prefect_server,
            docker_engine,
            image,
            image_registry.address,
            env["PNEUMO_STORAGE"],
            {k: v for k, v in env.items() if k.startswith("AWS_")},
            worker_log,
            output,
            (seaweedfs.secret_key, KAGGLE_KEY),
        )
    # Containers and the image go with the test: nothing of ours may stay in the engine.
    docker_engine.remove_containers("label=io.prefect.flow-run-id")
    docker_engine.docker("rmi", "-f", image)
    assert docker_engine.docker("ps", "-aq").split() == []
    assert image not in docker_engine.docker("images", "--format", "{{.Repository}}:{{.Tag}}")


def in_image(deployed: Deployed, *command: str, volumes: tuple[str, ...] = ()) -> str:
    """A command in a throwaway container of the deployed image (host network, removed)."""
    mounts = [arg for v in volumes for arg in ("-v", v)]
    return deployed.engine.docker(
        "run", "--rm", "--network", "host", *mounts, deployed.image, *command, timeout=300
    )


@pytest.mark.timeout(1800)  # its setup builds and pushes the image (about 10 minutes here)
def test_the_image_was_built_by_the_deploy_and_pushed(deployed: Deployed) -> None:
    engine = deployed.engine
    assert deployed.image.startswith(f"{deployed.registry}/{WORKER_REPOSITORY}:")
    assert "Running deployment build steps" in deployed.deploy_output
    assert "Running deployment push steps" in deployed.deploy_output
    repository = deployed.image.rsplit(":", 1)[0]
    address, name = repository.split("/", 1)
    tags = httpx.get(f"http://{address}/v2/{name}/tags/list", timeout=30).json()["tags"]
    assert deployed.image.rsplit(":", 1)[1] in tags
    size = int(engine.docker("image", "inspect", "--format", "{{.Size}}", deployed.image))
    print(f"worker image {deployed.image}: {size / 1e9:.2f} GB")


def test_image_runs_as_non_root_with_pneumo_and_one_headless_opencv(deployed: Deployed) -> None:
    user = deployed.engine.docker(
        "image", "inspect", "--format", "{{.Config.User}}", deployed.image
    )
    assert user.strip() == IMAGE_USER
    assert in_image(deployed, "id", "-u").strip() == "10001"
    assert "usage: pneumo" in in_image(deployed, "pneumo", "--help")
    script = (
        "import cv2, importlib.metadata as m, pathlib, subprocess\n"
        "names = sorted(d.metadata['Name'] for d in m.distributions())\n"
        "print([n for n in names if n.lower().startswith('opencv')])\n"
        "so = next(pathlib.Path(cv2.__file__).parent.rglob('cv2*.so'))\n"
        "print(subprocess.run(['ldd', str(so)], capture_output=True, text=True).stdout)\n"
    )
    output = in_image(deployed, "python", "-c", script)
    first, ldd = output.split("\n", 1)
    assert first == "['opencv-python-headless']", first
    assert "not found" not in ldd, ldd
    for library in ("libGL", "libX11", "libxcb", "libgthread"):
        assert library not in ldd, ldd


def test_augmentation_in_the_image_matches_the_reference(deployed: Deployed) -> None:
    here = Path(__file__).parent
    output = in_image(
        deployed,
        *("python", "/checks/augment_reference.py", "/checks/augment_reference.npz"),
        volumes=(f"{here}:/checks:ro",),
    )
    assert output.strip() == "augmentation unchanged"


@dataclass
class Watcher:
    """Polls the engine while the pipeline runs: every container seen, inspected once."""

    engine: Engine
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def poll(self) -> None:
        while not self.stop.is_set():
            for cid in self.engine.docker("ps", "-q", check=False, timeout=30).split():
                if cid not in self.seen:
                    text = self.engine.docker("inspect", cid, check=False, timeout=30)
                    if text.strip():
                        self.seen[cid] = json.loads(text)[0]
            time.sleep(0.3)

    def of_fold(self, client: Any, fold: int) -> list[dict[str, Any]]:
        """Containers of `fold`'s train-fold runs, in the order they were seen (a container
        is named after its flow run's first name, so its labels lead to the run's fold)."""
        found = []
        for container in list(self.seen.values()):
            labels = container["Config"]["Labels"] or {}
            if labels.get("io.prefect.deployment-name") != names.TRAIN_FOLD_DEPLOYMENT_NAME:
                continue
            run = client.read_flow_run(UUID(labels["io.prefect.flow-run-id"]))
            if run.parameters.get("fold") == fold:
                found.append(container)
        return found


def fold_checkpoint_run(store: Any) -> str | None:
    """The run id once fold 0 has a checkpoint but no done.json (mid-training)."""
    for key in store.list("runs/"):
        if key.endswith("/fold-0/checkpoint-last.pt"):
            run_id = key.split("/")[1]
            if not store.exists(f"runs/{run_id}/fold-0/done.json"):
                return run_id
    return None


@pytest.mark.timeout(1500)
def test_folds_train_in_containers_and_a_killed_fold_resumes(
    deployed: Deployed, seaweedfs: S3Server, tmp_path: Path
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pneumo_core.data.synthetic import generate
    from pneumo_core.evaluation import submission
    from pneumo_core.storage.s3 import S3Store

    bucket, prefix = deployed.storage.removeprefix("s3://").split("/", 1)
    store = S3Store(
        bucket, prefix, endpoint_url=seaweedfs.endpoint, region=seaweedfs.region,
        access_key=seaweedfs.access_key, secret_key=seaweedfs.secret_key,
        cache_dir=tmp_path / "cache",
    )  # fmt: skip
    archive = generate(tmp_path / "synth", n_train=24, n_test=4, image_size=96, seed=5, zip=True)
    store.put_file("incoming/rsna.zip", archive)
    parameters = {
        "source": store.url("incoming/rsna.zip"),
        "preset": "ci",
        # lr 1e-4: at the ci preset's 1e-3 fold 1 of this set diverges (NaN) from scratch
        "overrides": {"image_size": 64, "epochs": EPOCHS, "lr": 1e-4},
        "gpus_per_worker": 0,  # no GPU here; the job variables of N > 0: test_deploy_files
    }
    watcher = Watcher(deployed.engine)
    polling = threading.Thread(target=watcher.poll, daemon=True)
    polling.start()
    started = time.monotonic()
    killed: dict[str, Any] = {}
    with temporary_settings({PREFECT_API_URL: deployed.server.api_url}):
        flow_run = run_deployment(names.PIPELINE_DEPLOYMENT, parameters=parameters, timeout=0)
        with get_client(sync_client=True) as client:
            while True:
                state = client.read_flow_run(flow_run.id).state
                if state is not None and state.is_final():
                    break
                assert time.monotonic() - started < 1300, log_tail(deployed.worker_log)
                run_id = None if killed else fold_checkpoint_run(store)
                running = watcher.of_fold(client, 0) if run_id else []
                if running:  # fold 0 mid-training: kill its container
                    deployed.engine.docker("kill", running[0]["Id"])
                    killed = {"run_id": run_id, "container": running[0]}
                time.sleep(1)
            watcher.stop.set()
            polling.join(timeout=30)
            print(f"pipeline in containers: {time.monotonic() - started:.0f} s")
            assert state.is_completed(), f"{state.message}\n{log_tail(deployed.worker_log, 120)}"
            assert killed, "fold 0 finished before it could be killed"
            run_id = killed["run_id"]
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=f"{run_id}-fold-"))
            )
            predict_deployment = client.read_deployment_by_name(names.PREDICT_DEPLOYMENT)
            (predict_run,) = client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[predict_deployment.id])
                )
            )
            logs = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[c.id for c in children]))
            )
            artifacts = client.read_artifacts()
            by_fold = {f: watcher.of_fold(client, f) for f in (0, 1)}
            deployment_records = [
                client.read_deployment_by_name(n).model_dump(mode="json")
                for n in (names.PIPELINE_DEPLOYMENT, names.TRAIN_FOLD_DEPLOYMENT)
            ]

    # Each fold in its own container of the deployed image, as the image's non-root user,
    # with the deployment's kwargs surviving the run-time job variables.
    assert len(by_fold[0]) == 2 and len(by_fold[1]) == 1, {
        f: [c["Name"] for c in cs] for f, cs in by_fold.items()
    }
    pipeline_containers = [
        c for c in watcher.seen.values() if c["Config"]["Image"] == deployed.image
    ]
    assert len(pipeline_containers) == 5  # the pipeline, fold 0 twice, fold 1, predict
    for container in pipeline_containers:
        config, host = container["Config"], container["HostConfig"]
        assert config["User"] == IMAGE_USER
        assert host["NetworkMode"] == "host"
        command = " ".join(config["Cmd"] or []) + " ".join(config["Entrypoint"] or [])
        assert not [s for s in deployed.secrets if s in command]
    # The test images were predicted in a container of their own (a GPU job), not in the
    # pipeline's.
    (predict_container,) = [
        c for c in pipeline_containers
        if c["Config"]["Labels"].get("io.prefect.flow-run-id") == str(predict_run.id)
    ]  # fmt: skip
    assert predict_run.state_type.value == "COMPLETED"
    assert predict_run.parameters == {"storage": deployed.storage, "run_id": run_id, "images": None}
    for container in [*by_fold[0], *by_fold[1], predict_container]:
        assert container["HostConfig"]["ShmSize"] == 8 * 1024**3  # merged, not replaced
        assert not container["HostConfig"].get("DeviceRequests")  # gpus_per_worker = 0
    for child in [*children, predict_run]:  # what each child run was given at run time
        assert child.job_variables == {"container_create_kwargs": {"shm_size": "8g"}}, child

    # The killed child crashed, a fresh one resumed from the last checkpoint and finished.
    fold0_runs = sorted(
        (c for c in children if c.name == f"{run_id}-fold-0"), key=lambda c: c.created
    )
    assert [c.state_type.value for c in fold0_runs] == ["CRASHED", "COMPLETED"], fold0_runs
    resumed = [
        log.message
        for log in logs
        if log.flow_run_id == fold0_runs[1].id and "resuming after epoch" in log.message
    ]
    assert resumed, "the retried fold 0 did not resume from its checkpoint"
    epochs = [
        json.loads(line)["epoch"]
        for line in store.get_text(f"runs/{run_id}/fold-0/metrics.jsonl").splitlines()
    ]
    assert sorted(set(epochs)) == list(range(EPOCHS))

    # Outputs in the store and a valid submission.
    for key in ("fold-0/done.json", "fold-1/done.json", "evaluation.json", "submission.csv"):
        assert store.exists(f"runs/{run_id}/{key}"), key
    store.get_file(f"runs/{run_id}/submission.csv", tmp_path / "submission.csv")
    assert submission.check_submission(tmp_path / "submission.csv") == []

    # No credential in a container command (above), a log, an artifact or a deployment.
    texts = [
        deployed.worker_log.read_text(errors="replace"),
        json.dumps([log.message for log in logs]),
        json.dumps([a.model_dump(mode="json") for a in artifacts]),
        json.dumps(deployment_records),
        deployed.deploy_output,
    ]
    assert not [s for s in deployed.secrets for text in texts if s in text]
