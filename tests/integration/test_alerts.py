"""The retrain alert, end to end: flows.server_setup's automation on a real Prefect server
notifies a local HTTP server when a run of the pipeline flow fails, crashes or is late.

The flow runs here are tiny stand-ins registered under the pipeline's flow name; the real
pipeline is not run. Each really reaches its state on the server (an exception, a SIGTERM
in its own process, a schedule in the past that the server marks late), and the server's
own event, trigger and action services deliver the notification.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flows.server_setup import (
    ALERT_AUTOMATION,
    ALERT_BLOCK,
    ALERT_WEBHOOK_ENV,
    main,
    setup_server,
)
from pneumo_core.errors import InputError
from tasks.deployment_names import PIPELINE_FLOW
from tests.integration.conftest import REPO, PrefectServer, log_tail

POOL = "pneumo-alerts-process"
WAIT_S = 120  # "does not hang": the notifications usually arrive within seconds

FLOW_SCRIPT = f"""\
import os, signal, sys, time
from datetime import UTC, datetime, timedelta

from prefect import flow, get_client
from prefect.states import Scheduled


@flow(name={PIPELINE_FLOW!r}, flow_run_name=sys.argv[1])
def stand_in() -> None:
    if sys.argv[2] == "crash":
        os.kill(os.getpid(), signal.SIGTERM)  # as when a container is stopped mid-run
        time.sleep(60)
    raise RuntimeError("stand-in failure " + sys.argv[1])


@flow(name="not-the-pipeline", flow_run_name=sys.argv[1])
def other() -> None:
    raise RuntimeError("other failure")


if sys.argv[2] == "late":  # a deployment's run due an hour ago, no worker: the server marks it Late
    with get_client(sync_client=True) as client:
        deployment = client.create_deployment(client.create_flow(stand_in), "stand-in")
        past = datetime.now(UTC) - timedelta(hours=1)
        state = Scheduled(scheduled_time=past)
        client.create_flow_run_from_deployment(deployment, name=sys.argv[1], state=state)
else:
    (other if sys.argv[2] == "other" else stand_in)()
"""


class Receiver(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that keeps the body of every POST it gets."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posts: list[dict[str, object]] = []
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def texts(self) -> list[str]:
        with self.lock:
            return [str(post.get("text", "")) for post in self.posts]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.posts.append({"path": self.path, **json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: pytest shows the posts when a test fails."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def api(prefect_server: PrefectServer) -> Iterator[PrefectServer]:
    """This process's Prefect client pointed at the test server; the alerts removed after."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server
        asyncio.run(setup_server(POOL, "process", None, 1, {}))


def run_stand_in(server: PrefectServer, script: Path, name: str, how: str) -> str:
    """Run the stand-in flow in a process of its own against the server (`late`: only
    schedule a run of it); its output."""
    result = subprocess.run(
        [sys.executable, str(script), name, how],
        cwd=REPO,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert (result.returncode == 0) == (how == "late"), f"stand-in {how}:\n{output[-4000:]}"
    return output


def test_setup_keeps_one_alert_that_reports_failed_crashed_and_late_pipeline_runs(
    api: PrefectServer, receiver: Receiver, tmp_path: Path
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    token = uuid.uuid4().hex  # stands for the secret part of a chat webhook URL
    environ = {ALERT_WEBHOOK_ENV: receiver.url(f"/hooks/{token}")}
    for _ in range(2):  # as two starts of the compose worker
        asyncio.run(setup_server(POOL, "process", None, 1, environ))
    with get_client(sync_client=True) as client:
        automations = client.read_automations_by_name(ALERT_AUTOMATION)
        blocks = [
            b for b in client.read_block_documents(include_secrets=False) if b.name == ALERT_BLOCK
        ]
    assert len(automations) == 1 and automations[0].enabled
    assert len(blocks) == 1
    stored = json.dumps([automations[0].model_dump(mode="json"), blocks[0].model_dump(mode="json")])
    assert token not in stored  # the URL is kept as a secret, shown masked

    script = tmp_path / "stand_in.py"
    script.write_text(FLOW_SCRIPT)
    suffix = uuid.uuid4().hex[:8]
    names = {how: f"{how}-{suffix}" for how in ("other", "fail", "crash", "late")}
    for how, name in names.items():
        run_stand_in(api, script, name, how)
    other, failed, crashed, late = names.values()
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[failed, crashed, late]))
        )
    ids = {run.name: str(run.id) for run in runs}
    assert set(ids) == {failed, crashed, late}

    expected = {failed: "Failed", crashed: "Crashed", late: "Late"}
    deadline = time.monotonic() + WAIT_S
    while not all(any(name in text for text in receiver.texts()) for name in expected):
        if time.monotonic() > deadline:
            pytest.fail(
                f"notifications after {WAIT_S} s: {receiver.texts()}\n"
                f"server log:\n{log_tail(api.logs / 'server.log')}"
            )
        time.sleep(1)

    for name, state in expected.items():
        (text,) = [t for t in receiver.texts() if name in t]
        assert f"entered state {state}" in text, text
        assert ids[name] in text and f"/runs/flow-run/{ids[name]}" in text, text  # the UI link
    (failed_text,) = [t for t in receiver.texts() if failed in t]
    assert f"stand-in failure {failed}" in failed_text  # the state's message
    (late_text,) = [t for t in receiver.texts() if late in t]
    assert f"of flow {PIPELINE_FLOW} (deployment stand-in) entered state Late" in late_text
    assert "It was due at" in late_text
    assert {post["path"] for post in receiver.posts} == {f"/hooks/{token}"}
    assert not [t for t in receiver.texts() if other in t]  # another flow's failure is not news


def test_setup_leaves_one_alert_and_without_a_url_removes_it(api: PrefectServer) -> None:
    from prefect import get_client
    from prefect.events.schemas.automations import AutomationCore

    environ = {ALERT_WEBHOOK_ENV: "http://127.0.0.1:9/hook"}
    asyncio.run(setup_server(POOL, "process", None, 1, environ))
    with get_client(sync_client=True) as client:
        (made,) = client.read_automations_by_name(ALERT_AUTOMATION)
        # a second one of that name, as when two workers start at the same moment
        client.create_automation(AutomationCore(**made.model_dump(exclude={"id"})))
        assert len(client.read_automations_by_name(ALERT_AUTOMATION)) == 2
        for automation in client.read_automations_by_name(ALERT_AUTOMATION):
            client.pause_automation(automation.id)  # an operator silences the alerts
    asyncio.run(setup_server(POOL, "process", None, 1, environ))
    with get_client(sync_client=True) as client:
        (kept,) = client.read_automations_by_name(ALERT_AUTOMATION)
    assert not kept.enabled  # a restart of the worker does not undo the pause

    with pytest.raises(InputError, match=f"{ALERT_WEBHOOK_ENV} must be an http") as error:
        asyncio.run(setup_server(POOL, "process", None, 1, {ALERT_WEBHOOK_ENV: "hooks.invalid/x"}))
    assert "hooks.invalid" not in str(error.value)  # the value may hold a token: never shown
    with get_client(sync_client=True) as client:
        assert len(client.read_automations_by_name(ALERT_AUTOMATION)) == 1  # left as it was

    asyncio.run(setup_server(POOL, "process", None, 1, {}))
    with get_client(sync_client=True) as client:
        assert client.read_automations_by_name(ALERT_AUTOMATION) == []
        assert not [b for b in client.read_block_documents() if b.name == ALERT_BLOCK]


def test_a_bad_url_is_one_line_and_exit_2_before_the_server_is_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ALERT_WEBHOOK_ENV, "ftp://hooks.invalid/secret-token")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens there
    assert main(["--pool", POOL, "--type", "process"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: environment variable {ALERT_WEBHOOK_ENV} must be an http(s) URL\n"
