"""Prepare a Prefect server for pneumo's deployments: credentials, the GPU pool, the GPU limit,
and the alert on a failed, crashed or late retrain.

Credentials never enter `prefect.yaml` nor a deployment: they live in Prefect Secret blocks
(the S3 endpoint and region in Prefect Variables), and the pool's base job template names
them in the default `env` of every flow run. The worker resolves those references when it
starts a run, so a deployment only ever holds names. Run where the values are in the
environment (the compose worker does, at start-up):

    python -m flows.server_setup --pool gpu-docker --type docker --network pneumo
    python -m flows.server_setup --pool gpu-k8s --type kubernetes \
        --template deployments/k8s/base-job-template.json

What differs between hosts for the flow-run containers (their network, whether the image
is pulled) is a pool default set here, so deployments/prefect.yaml stays one file.

With PNEUMO_ALERT_WEBHOOK_URL set, the server POSTs `{"text": ...}` there whenever a run of
the pipeline flow fails, crashes or is late (an automation; the URL stays in a block's
secrets). Every object is found by name and updated, so a worker that runs this at each
start leaves one of each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pneumo_core.errors import InputError
from tasks.deployment_names import GPU_TRAIN_TAG, GPU_WORK_POOL, PIPELINE_FLOW

SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KAGGLE_USERNAME", "KAGGLE_KEY")
"""Environment variables stored as Secret blocks."""
SETTING_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "PNEUMO_S3_PUBLIC_ENDPOINT")
"""Non-secret environment variables stored as Prefect Variables (the public endpoint signs
the links people open from the UI; workers use AWS_ENDPOINT_URL)."""

ALERT_WEBHOOK_ENV = "PNEUMO_ALERT_WEBHOOK_URL"
"""Where the server POSTs the alerts; unset or empty: no alert automation."""
ALERT_AUTOMATION = "pneumo-pipeline-alerts"
ALERT_BLOCK = "pneumo-alerts"
"""The Custom Webhook notification block that holds the URL (in its secrets)."""
ALERT_STATES = ("Failed", "Crashed", "Late")
# Jinja, rendered by the server's actions service: `flow_run` carries the state of the event
# that fired, `deployment` is None for a run started without one.
ALERT_SUBJECT = "pneumo: {{ flow.name }} run {{ flow_run.name }} is {{ flow_run.state.name }}"
ALERT_BODY = """\
Flow run {{ flow_run.name }} ({{ flow_run.id }}) of flow {{ flow.name }}\
{% if deployment %} (deployment {{ deployment.name }}){% endif %} \
entered state {{ flow_run.state.name }}.
{% if flow_run.state.name == "Late" %}It was due at {{ flow_run.expected_start_time }}.
{% endif %}Message: {{ (flow_run.state.message or "none") | truncate(1000) }}
{% if flow_run|ui_url %}Open it: {{ flow_run|ui_url }}{% endif %}"""


def secret_block_name(env_name: str) -> str:
    """Block names allow lowercase letters, digits and dashes only."""
    return "pneumo-" + env_name.lower().replace("_", "-")


def variable_name(env_name: str) -> str:
    return "pneumo_" + env_name.lower()


def run_env_references() -> dict[str, str]:
    """The env of every flow run: references that the worker resolves per run."""
    env = {
        name: f"{{{{ prefect.blocks.secret.{secret_block_name(name)} }}}}" for name in SECRET_ENV
    }
    env |= {name: f"{{{{ prefect.variables.{variable_name(name)} }}}}" for name in SETTING_ENV}
    return env


def with_run_env(template: dict[str, Any]) -> dict[str, Any]:
    """A copy of a base job template whose `env` variable defaults to `run_env_references()`.

    Deployment `env` job variables are merged over this default by the worker.
    """
    variables = template["variables"]["properties"]
    if "env" not in variables:
        raise ValueError("the base job template has no `env` variable")
    result = json.loads(json.dumps(template))
    env = result["variables"]["properties"]["env"]
    env["default"] = {**(env.get("default") or {}), **run_env_references()}
    return result


def with_job_defaults(template: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A copy of a base job template with new defaults for some of its variables."""
    result = json.loads(json.dumps(template))
    variables = result["variables"]["properties"]
    unknown = sorted(set(defaults) - set(variables))
    if unknown:
        raise ValueError(f"the base job template has no variable {', '.join(unknown)}")
    for name, value in defaults.items():
        variables[name]["default"] = value
    return result


def network_defaults(network: str | None) -> dict[str, Any]:
    """Docker pool defaults: `host` is a network mode, any other name a network to join."""
    if network == "host":
        return {"network_mode": "host"}
    return {"networks": [network]} if network else {}


async def pool_template(pool_type: str, template: Path | None) -> dict[str, Any]:
    """The template file, or the installed worker type's default, with the run env added."""
    if template is not None:
        return with_run_env(json.loads(template.read_text()))
    from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

    default = await get_default_base_job_template_for_infrastructure_type(pool_type)
    if not default:
        raise ValueError(f"no default base job template for pool type {pool_type!r}")
    return with_run_env(default)


def alert_webhook_url(environ: dict[str, str]) -> str | None:
    """The webhook URL from the environment, checked; never echoed, as it often holds a token."""
    url = environ.get(ALERT_WEBHOOK_ENV, "").strip()
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"environment variable {ALERT_WEBHOOK_ENV} must be an http(s) URL")
    return url


def alert_trigger() -> Any:
    """Any Failed, Crashed or Late state of a run of the pipeline flow, each run on its own."""
    from prefect.events.schemas.automations import EventTrigger, Posture

    return EventTrigger(
        expect={f"prefect.flow-run.{state}" for state in ALERT_STATES},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": PIPELINE_FLOW},
        for_each={"prefect.resource.id"},
        posture=Posture.Reactive,
        threshold=1,
        within=timedelta(0),
    )


async def setup_alerts(webhook_url: str | None) -> str:
    """Create or update the alert automation and its webhook block; without a URL remove both.

    Found by name: the first automation of that name is updated (paused, it stays paused)
    and any others (from two starts at once) deleted, so setup at every start never piles
    them up. What it did, in words.
    """
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        # In id order: setups that run at once keep the same one.
        existing = sorted(
            await client.read_automations_by_name(ALERT_AUTOMATION), key=lambda a: str(a.id)
        )
        if webhook_url is None:
            for automation in existing:
                await client.delete_automation(automation.id)
            try:
                block = await client.read_block_document_by_name(ALERT_BLOCK, "custom-webhook")
                await client.delete_block_document(block.id)
            except ObjectNotFound:
                pass
            return f"alerts off ({ALERT_WEBHOOK_ENV} unset)"
        # The URL is a template filled from the block's secrets: the UI and API show it masked.
        block_id = await CustomWebhookNotificationBlock(
            name=ALERT_BLOCK,
            url="{{webhook_url}}",
            json_data={"text": "{{subject}}\n{{body}}"},
            secrets={"webhook_url": webhook_url},
        ).save(ALERT_BLOCK, overwrite=True)
        automation = AutomationCore(
            name=ALERT_AUTOMATION,
            description=f"Notify when a {PIPELINE_FLOW} run fails, crashes or is late. Made by"
            " flows.server_setup at each start, which replaces edits but keeps a pause.",
            enabled=existing[0].enabled if existing else True,
            trigger=alert_trigger(),
            actions=[
                SendNotification(block_document_id=block_id, subject=ALERT_SUBJECT, body=ALERT_BODY)
            ],
        )
        if existing:
            await client.update_automation(existing[0].id, automation)
            for extra in existing[1:]:
                await client.delete_automation(extra.id)
        else:
            await client.create_automation(automation)
    return (
        f"alerts: {PIPELINE_FLOW} runs {'/'.join(ALERT_STATES)} notify the webhook of block"
        f" {ALERT_BLOCK!r} (automation {ALERT_AUTOMATION!r})"
    )


async def setup_server(
    pool: str,
    pool_type: str,
    template: Path | None,
    gpu_limit: int,
    environ: dict[str, str],
    job_defaults: dict[str, Any] | None = None,
) -> None:
    """Idempotent: re-running updates blocks, variables, the pool, the limit and the alert
    automation in place."""
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.variables import Variable

    webhook_url = alert_webhook_url(environ)  # checked before anything is changed
    for name in SECRET_ENV:
        await Secret(value=environ.get(name, "")).save(secret_block_name(name), overwrite=True)
    for name in SETTING_ENV:
        await Variable.aset(variable_name(name), environ.get(name, ""), overwrite=True)
    base_job_template = with_job_defaults(
        await pool_template(pool_type, template), job_defaults or {}
    )
    async with get_client() as client:
        await client.create_work_pool(
            WorkPoolCreate(name=pool, type=pool_type, base_job_template=base_job_template),
            overwrite=True,
        )
        await client.create_concurrency_limit(tag=GPU_TRAIN_TAG, concurrency_limit=gpu_limit)
    missing = [name for name in (*SECRET_ENV, *SETTING_ENV) if not environ.get(name)]
    print(
        f"pool {pool!r} ({pool_type}) ready; tag {GPU_TRAIN_TAG!r} limited to {gpu_limit};"
        f" stored {len(SECRET_ENV)} secrets and {len(SETTING_ENV)} settings"
        + (f" (empty: {', '.join(missing)})" if missing else "")
    )
    print(await setup_alerts(webhook_url))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.server_setup", description=__doc__)
    parser.add_argument("--pool", default=GPU_WORK_POOL, help="work pool name")
    parser.add_argument(
        "--type", dest="pool_type", default="docker", help="docker, kubernetes or process"
    )
    parser.add_argument("--template", type=Path, help="base job template (JSON) to start from")
    parser.add_argument(
        "--gpu-limit",
        type=int,
        default=int(os.environ.get("GPU_TRAIN_LIMIT", "1")),
        help=f"concurrency limit for the {GPU_TRAIN_TAG!r} tag (env GPU_TRAIN_LIMIT)",
    )
    parser.add_argument(
        "--network",
        help="docker pools: the network of flow-run containers (`host`: the host's network)",
    )
    parser.add_argument(
        "--image-pull-policy",
        choices=("IfNotPresent", "Always", "Never"),
        help="docker and kubernetes pools: when the worker pulls the flow-run image",
    )
    args = parser.parse_args(argv)
    if args.network and args.pool_type != "docker":
        parser.error("--network is for docker pools")
    defaults = network_defaults(args.network)
    if args.image_pull_policy:
        defaults["image_pull_policy"] = args.image_pull_policy
    try:
        asyncio.run(
            setup_server(
                args.pool,
                args.pool_type,
                args.template,
                args.gpu_limit,
                dict(os.environ),
                defaults,
            )
        )
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
