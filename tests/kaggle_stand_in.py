"""A local HTTP server that answers the Kaggle API's submission calls as Kaggle does.

Only the network is replaced: the real `kaggle` client builds and sends its requests, and
is pointed here through its own endpoint table (kagglesdk.kaggle_env). The server checks the
HTTP basic credentials, hands out an upload URL on itself, keeps the uploaded bytes, and can
be told to fail the next calls of a route with a status code.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

SERVICE = "/v1/competitions.CompetitionApiService/"


@dataclass
class KaggleStandIn:
    url: str
    username: str
    key: str
    uploads: dict[str, bytes] = field(default_factory=dict)
    submissions: list[dict] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    fail: dict[str, list[int]] = field(default_factory=dict)  # route -> next statuses


def _handler(state: KaggleStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet test output
            pass

        def _answer(self, status: int, body: dict | None = None) -> None:
            data = json.dumps(body or {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _route(self) -> str | None:
            """The route name; None once an injected failure or bad credentials answered."""
            path = self.path.split("?")[0]
            route = "upload" if path.startswith("/upload/") else path.removeprefix(SERVICE)
            state.calls.append(route)
            planned = state.fail.get(route) or []
            if planned:
                status = planned.pop(0)
                self._body()
                self._answer(status, {"code": status, "message": f"stand-in failure {status}"})
                return None
            return route

        def do_POST(self) -> None:
            route = self._route()
            if route is None:
                return
            expected = base64.b64encode(f"{state.username}:{state.key}".encode()).decode()
            if self.headers.get("Authorization") != f"Basic {expected}":
                self._body()
                self._answer(401, {"code": 401, "message": "Unauthenticated"})
                return
            request = json.loads(self._body() or b"{}")
            if route == "StartSubmissionUpload":
                token = f"blob-{len(state.calls)}"
                url = f"{state.url}/upload/{token}"
                self._answer(200, {"token": token, "createUrl": url})
            elif route == "CreateSubmission":
                token = request.get("blobFileTokens")
                if token not in state.uploads:
                    self._answer(400, {"code": 400, "message": f"unknown blob {token}"})
                    return
                state.submissions.append(request)
                self._answer(
                    200,
                    {
                        "message": "Successfully submitted to RSNA Pneumonia Detection Challenge",
                        "ref": 40000 + len(state.submissions),
                    },
                )
            else:
                self._answer(404, {"code": 404, "message": f"no route {route}"})

        def do_PUT(self) -> None:
            route = self._route()
            if route is None:
                return
            state.uploads[self.path.split("?")[0].removeprefix("/upload/")] = self._body()
            self._answer(200)

    return Handler


@pytest.fixture(name="kaggle_stand_in")
def kaggle_stand_in_fixture(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KaggleStandIn]:
    """The stand-in on a free loopback port, credentials in the environment, and the
    kaggle client's production endpoint pointed at it."""
    from kagglesdk import kaggle_env

    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = KaggleStandIn(
        url=f"http://127.0.0.1:{server.server_address[1]}",
        username="stand-in-user",
        key="stand-in-secret-" + "7" * 16,
    )
    server.RequestHandlerClass = _handler(state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_API_V1_TOKEN", "KAGGLE_API_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_USERNAME", state.username)
    monkeypatch.setenv("KAGGLE_KEY", state.key)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path_factory.mktemp("kaggle-config")))
    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.PROD, state.url)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
