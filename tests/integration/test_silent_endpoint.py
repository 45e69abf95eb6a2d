"""An S3 endpoint that accepts connections and sends nothing costs a command a bounded wait,
however many requests wait on it at once, and ends in one line naming the endpoint; a
download that keeps receiving bytes is never cut, however long it takes; the pre-run probe
is one try. Real sockets on loopback: a server that accepts and never answers, and a small
HTTP server that answers HEAD and GET as S3 does, trickling or stalling the body."""

from __future__ import annotations

import contextlib
import http.server
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pneumo_core.errors import StorageError, TransientStorageError
from pneumo_core.runs.catalog import READERS
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.s3 import S3Store
from tests.seaweedfs import S3Server, free_ports

GENEROUS_S = 150  # proves "does not hang", nothing more


class SilentServer:
    """Accepts every connection on loopback and never sends a byte; counts the connections.
    With `reset`, each connection is reset at once instead (a vanished endpoint)."""

    def __init__(self, reset: bool = False) -> None:
        self.reset = reset
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> SilentServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not)
        self.listener.close()
        self.thread.join(timeout=5)
        for connection in self.held:
            connection.close()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed by __exit__
            self.connections += 1
            if self.reset:
                linger = struct.pack("ii", 1, 0)  # close sends a reset
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                connection.close()
            else:
                self.held.append(connection)


class FakeS3Object(http.server.BaseHTTPRequestHandler):
    """One object, whatever the path: HEAD answers its size; GET sends the body in `pieces`
    pieces `interval_s` apart, or, with `stall`, its first piece and then nothing."""

    body = b""
    pieces = 1
    interval_s = 0.0
    stall: threading.Event | None = None
    gets: list[str]

    def log_message(self, *args: object) -> None:
        pass

    def _headers(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
        self.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
        self.send_header("x-amz-request-id", uuid.uuid4().hex)
        self.end_headers()

    def do_HEAD(self) -> None:
        self._headers()

    def do_GET(self) -> None:
        self.gets.append(self.path)
        self._headers()
        size = -(-len(self.body) // self.pieces)
        with contextlib.suppress(OSError):
            for start in range(0, len(self.body), size):
                self.wfile.write(self.body[start : start + size])
                self.wfile.flush()
                if self.stall is not None:
                    self.stall.wait()
                    return
                time.sleep(self.interval_s)


@contextlib.contextmanager
def fake_s3(body: bytes, pieces: int, interval_s: float = 0.0, stall: bool = False):
    """A FakeS3Object server on loopback; yields (endpoint, the paths it was sent GETs for)."""
    gets: list[str] = []
    release = threading.Event()
    handler = type(
        "Object",
        (FakeS3Object,),
        {"body": body, "pieces": pieces, "interval_s": interval_s, "gets": gets}
        | ({"stall": release} if stall else {}),
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", gets
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def store_at(endpoint: str, tmp_path: Path, **options: object) -> S3Store:
    return S3Store(
        "bucket", f"tests/{uuid.uuid4().hex}", endpoint_url=endpoint, region="us-east-1",
        access_key="key", secret_key="secret", backoff_s=0.01, cache_dir=tmp_path / "cache",
        **options,  # type: ignore[arg-type]
    )  # fmt: skip


def failure(operation: Callable[[], object]) -> tuple[BaseException, float]:
    """The error `operation` raised (it must raise), and how long it took."""
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        operation()
    return caught.value, time.monotonic() - started


def fan_out(store: S3Store, keys: list[str]) -> list[BaseException]:
    """GET every key with as many readers as `pneumo runs` uses; each reader's error."""

    def read(key: str) -> BaseException:
        return failure(lambda: store.get_bytes(key))[0]

    with ThreadPoolExecutor(READERS) as pool:
        return list(pool.map(read, keys))


def assert_one_line_naming(error: BaseException, endpoint: str) -> None:
    assert isinstance(error, TransientStorageError), repr(error)
    message = str(error)
    assert endpoint in message and "\n" not in message
    assert "secret" not in message  # the store's secret key


# -- a silent endpoint -------------------------------------------------------------------------


def test_a_silent_endpoint_is_given_up_on_within_the_budget_not_after_every_attempt(
    tmp_path: Path,
) -> None:
    """10 attempts of a 0.5 s read timeout would be 10 connections per request; the 2 s
    budget allows 3 (the first try and the retries that can still end within it)."""
    with SilentServer() as server:
        store = store_at(server.endpoint, tmp_path, max_attempts=10, silence_s=2)
        error, took = failure(lambda: store.get_bytes("runs/r1/config.json"))
        assert_one_line_naming(error, server.endpoint)
        assert "has sent nothing" in str(error) and "PNEUMO_S3_SILENCE_S" in str(error)
        assert 1 <= server.connections <= 4
        assert took < GENEROUS_S

        before = server.connections
        error, _ = failure(lambda: store.list("runs/"))  # at once: the endpoint is silent
        assert_one_line_naming(error, server.endpoint)
        assert server.connections == before

        fresh = store_at(server.endpoint, tmp_path, max_attempts=10, silence_s=2)
        error, _ = failure(lambda: fresh.list("runs/"))
        assert_one_line_naming(error, server.endpoint)
        assert server.connections - before <= 4


def test_a_fan_out_of_readers_shares_one_budget(tmp_path: Path) -> None:
    """40 runs read by 16 readers: the first 16 give up together, the rest at once (before,
    each of the 40 spent all 10 attempts)."""
    with SilentServer() as server:
        store = store_at(server.endpoint, tmp_path, max_attempts=10, silence_s=2)
        started = time.monotonic()
        errors = fan_out(store, [f"runs/r{i}/config.json" for i in range(40)])
        assert time.monotonic() - started < GENEROUS_S
        for error in errors:
            assert_one_line_naming(error, server.endpoint)
        assert server.connections <= READERS * 4


def test_a_silent_endpoint_under_downloads_and_writes(tmp_path: Path) -> None:
    """The same bound through s3transfer (a download, an upload) and a conditional PUT."""
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 1000)
    with SilentServer() as server:
        for operation in (
            lambda s: s.get_file("raw/x.bin", tmp_path / "copy.bin"),
            lambda s: s.put_file("raw/x.bin", source),
            lambda s: s.put_bytes_if("models/champion.json", b"{}", None),
            lambda s: s.local_path("prepared/images.npy"),
        ):
            store = store_at(server.endpoint, tmp_path, max_attempts=10, silence_s=2)
            before = server.connections
            error, _ = failure(lambda s=store, op=operation: op(s))
            assert_one_line_naming(error, server.endpoint)
            assert server.connections - before <= 4
    assert not (tmp_path / "copy.bin").exists()


@pytest.mark.slow
def test_with_the_default_budget_every_command_shape_ends_within_two_minutes(
    tmp_path: Path,
) -> None:
    """The real settings (10 attempts, 120 s): a GET, a listing and 16 readers over 40 runs,
    each on a store of its own, at the same time; the times are printed (-s)."""
    with SilentServer() as server:
        shapes: dict[str, Callable[[S3Store], object]] = {
            "get": lambda s: s.get_bytes("runs/r1/config.json"),
            "list": lambda s: s.list("runs/"),
            "16 readers": lambda s: fan_out(s, [f"runs/r{i}/config.json" for i in range(40)]),
        }

        def timed(shape: Callable[[S3Store], object]) -> tuple[list[BaseException], float]:
            store = store_at(server.endpoint, tmp_path)
            started = time.monotonic()
            try:
                outcome = shape(store)
            except Exception as exc:
                outcome = [exc]
            return list(outcome), time.monotonic() - started  # type: ignore[call-overload]

        with ThreadPoolExecutor(len(shapes)) as pool:
            results = dict(zip(shapes, pool.map(timed, shapes.values()), strict=True))
    for name, (errors, took) in results.items():
        print(f"silent endpoint, {name}: gave up after {took:.1f} s; {errors[0]}")
        assert errors and took < GENEROUS_S
        for error in errors:
            assert_one_line_naming(error, server.endpoint)


# -- bytes that keep coming --------------------------------------------------------------------


def test_a_slow_but_steady_download_is_never_cut(tmp_path: Path) -> None:
    """50 pieces 0.1 s apart: 5 s in all, longer than the whole 4 s budget, but never 1 s
    (the read timeout) without a byte."""
    data = bytes(range(256)) * 200
    with fake_s3(data, pieces=50, interval_s=0.1) as (endpoint, gets):
        store = store_at(endpoint, tmp_path, max_attempts=10, silence_s=4)
        assert store.get_bytes("prepared/images.npy") == data
        store.get_file("prepared/images.npy", tmp_path / "copy.npy")
        assert (tmp_path / "copy.npy").read_bytes() == data
        assert len(gets) == 2  # each read whole in its first try


def test_a_body_that_stalls_is_fetched_again_only_within_the_budget(tmp_path: Path) -> None:
    """The headers and a first piece, then nothing: each re-GET meets the same stall; the
    stalls add up to the budget after 4 tries, not 10."""
    with fake_s3(b"y" * 10_000, pieces=10, stall=True) as (endpoint, gets):
        store = store_at(endpoint, tmp_path, max_attempts=10, silence_s=2)
        error, _ = failure(lambda: store.get_bytes("runs/r1/config.json"))
        assert isinstance(error, TransientStorageError) and endpoint in str(error)
        assert "broke off" in str(error)
        assert 2 <= len(gets) <= 5


# -- the pre-run probe -------------------------------------------------------------------------


def test_the_probe_tries_once_where_the_run_tries_max_attempts(tmp_path: Path) -> None:
    with SilentServer(reset=True) as server:
        store = store_at(server.endpoint, tmp_path, max_attempts=4)
        error, _ = failure(store.probe)
        assert_one_line_naming(error, server.endpoint)
        assert "after 1 attempt:" in str(error)
        assert server.connections == 1
        error, _ = failure(lambda: store.exists("runs/r1/config.json"))
        assert "after 4 attempts" in str(error)
        assert server.connections == 5


def test_the_probe_answers_at_once_for_a_refused_port(tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there
    endpoint = f"http://127.0.0.1:{port}"
    store = store_at(endpoint, tmp_path)  # the default 10 attempts: the run keeps them
    error, took = failure(store.probe)
    print(f"refused port, probe: {took:.2f} s; {error}")
    assert_one_line_naming(error, endpoint)
    assert "after 1 attempt:" in str(error)
    assert took < GENEROUS_S


def test_the_probe_of_a_silent_endpoint_is_one_short_wait(tmp_path: Path) -> None:
    with SilentServer() as server:
        store = store_at(server.endpoint, tmp_path, silence_s=2)
        error, _ = failure(store.probe)
        assert_one_line_naming(error, server.endpoint)
        assert server.connections == 1


def test_the_probe_writes_nothing_that_stays(store: ObjectStore) -> None:
    store.probe()
    store.probe()
    assert store.list("") == []


def test_the_probe_names_a_missing_bucket(seaweedfs: S3Server, tmp_path: Path) -> None:
    store = S3Store(
        f"missing-{uuid.uuid4().hex[:8]}", endpoint_url=seaweedfs.endpoint,
        region=seaweedfs.region, access_key=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    with pytest.raises(StorageError, match="does not exist"):
        store.probe()
