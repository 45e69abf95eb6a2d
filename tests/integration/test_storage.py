"""The object store's behaviour, the same on a local folder and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import socket
import socketserver
import struct
import threading
import time
import traceback
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
from botocore.config import Config

from pneumo_core.errors import InputError, ObjectNotFound, StorageError, TransientStorageError
from pneumo_core.storage.base import TMP_SUFFIX, ObjectStore
from pneumo_core.storage.local import LocalStore
from pneumo_core.storage.open import open_store
from pneumo_core.storage.s3 import S3Store
from tests.seaweedfs import S3Server, free_ports

MiB = 1024 * 1024


# -- every operation, both backends ------------------------------------------------------------


def test_bytes_roundtrip_and_overwrite(store: ObjectStore) -> None:
    store.put_bytes("a/b/c.bin", b"\x00\x01first")
    assert store.get_bytes("a/b/c.bin") == b"\x00\x01first"
    store.put_bytes("a/b/c.bin", b"second")
    assert store.get_bytes("a/b/c.bin") == b"second"
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b""
    with pytest.raises(ObjectNotFound, match="a/b/missing"):
        store.get_bytes("a/b/missing")


def test_text_and_json(store: ObjectStore) -> None:
    store.put_text("notes/ü.txt", "grüße, 肺炎\n")
    assert store.get_text("notes/ü.txt") == "grüße, 肺炎\n"
    config = {"seed": 42, "lr": 1e-5, "folds": [0, 1], "nested": {"z": None, "a": True}}
    store.put_json("runs/r1/config.json", config)
    assert store.get_json("runs/r1/config.json") == config
    text = store.get_text("runs/r1/config.json")
    assert text == json.dumps(config, indent=2, sort_keys=True) + "\n"
    store.put_text("broken.json", "{not json")
    with pytest.raises(InputError, match=r"broken\.json is not valid JSON"):
        store.get_json("broken.json")


def test_files_roundtrip(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    payload = os.urandom(300_000)
    source.write_bytes(payload)
    store.put_file("raw/ds/source.bin", source)
    target = tmp_path / "out" / "deeper" / "copy.bin"
    store.get_file("raw/ds/source.bin", target)
    assert target.read_bytes() == payload
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy.bin"]  # no temp files left
    with pytest.raises(ObjectNotFound):
        store.get_file("raw/ds/missing.bin", tmp_path / "never.bin")
    assert not (tmp_path / "never.bin").exists()
    with pytest.raises(InputError, match="not a file"):
        store.put_file("raw/ds/x.bin", tmp_path / "no-such-file")
    assert not store.exists("raw/ds/x.bin")


def test_exists_size_sha256(store: ObjectStore, tmp_path: Path) -> None:
    payload = b"pneumonia" * 1000
    store.put_bytes("k/one", payload)
    source = tmp_path / "two"
    source.write_bytes(payload[::-1])
    store.put_file("k/two", source)
    assert store.exists("k/one") and store.exists("k/two")
    assert not store.exists("k/three")
    assert not store.exists("k")  # a "folder" is not an object
    assert store.size("k/one") == len(payload)
    assert store.sha256("k/one") == hashlib.sha256(payload).hexdigest()
    assert store.sha256("k/two") == hashlib.sha256(payload[::-1]).hexdigest()
    for operation in (store.size, store.sha256, store.local_path):
        with pytest.raises(ObjectNotFound, match="k/three"):
            operation("k/three")


def test_list_by_prefix(store: ObjectStore) -> None:
    keys = [
        "raw/ds/manifest.json",
        "raw/ds/stage_2_train_images/p1.dcm",
        "raw/ds/stage_2_train_images/p2.dcm",
        "raw/ds/stage_2_test_images/t1.dcm",
        "raw/ds2/x",
        "runs/r1/config.json",
        "top",
    ]
    for key in reversed(keys):
        store.put_bytes(key, key.encode())
    assert store.list() == sorted(keys)
    assert store.list("raw/ds/") == sorted(k for k in keys if k.startswith("raw/ds/"))
    assert store.list("raw/ds/stage_2_t") == [
        "raw/ds/stage_2_test_images/t1.dcm",
        "raw/ds/stage_2_train_images/p1.dcm",
        "raw/ds/stage_2_train_images/p2.dcm",
    ]
    assert store.list("raw/ds") == sorted(k for k in keys if k.startswith("raw/ds"))
    assert store.list("runs/r1/config.json") == ["runs/r1/config.json"]
    assert store.list("nothing/") == []
    assert store.list("nothing") == []


def test_delete_and_delete_prefix(store: ObjectStore) -> None:
    for key in ("runs/r1/a", "runs/r1/fold-0/b", "runs/r10/c", "runs/r2/d"):
        store.put_bytes(key, b"x")
    store.delete("runs/r2/d")
    store.delete("runs/r2/d")  # missing is fine
    store.delete("runs/r1")  # a "folder" is no object: nothing to delete
    assert store.exists("runs/r1/a")
    assert not store.exists("runs/r2/d")
    assert store.delete_prefix("runs/r1/") == 2
    assert store.list() == ["runs/r10/c"]
    assert store.delete_prefix("runs/r1/") == 0
    assert store.delete_prefix("") == 1
    assert store.list() == []


def test_local_path_is_memory_mappable(store: ObjectStore) -> None:
    array = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8)
    buffer = io.BytesIO()
    np.save(buffer, array)
    store.put_bytes("prepared/ds/8/images-train.npy", buffer.getvalue())
    path = store.local_path("prepared/ds/8/images-train.npy")
    loaded = np.load(path, mmap_mode="r")
    assert isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, array)


def test_url(store: ObjectStore) -> None:
    store.put_bytes("runs/r1/report.md", b"# report")
    url = store.url("runs/r1/report.md")
    assert url == f"{store.uri}/runs/r1/report.md"
    if isinstance(store, LocalStore):
        assert url.startswith("file:///")
        assert store.presigned_url("runs/r1/report.md") is None
        with urllib.request.urlopen(url) as response:
            assert response.read() == b"# report"
    else:
        assert url.startswith("s3://pneumo-test/tests/")


def test_concurrent_readers_never_see_a_partial_object(store: ObjectStore) -> None:
    versions = [bytes([65 + i]) * (512 * 1024) for i in range(3)]
    store.put_bytes("shared/blob", versions[0])
    stop = threading.Event()
    errors: list[str] = []

    def read_forever() -> None:
        while not stop.is_set():
            data = store.get_bytes("shared/blob")
            if data not in versions:
                errors.append(f"partial read of {len(data)} bytes")
            if store.list("shared/") != ["shared/blob"]:
                errors.append(f"listing shows {store.list('shared/')}")

    reader = threading.Thread(target=read_forever)
    reader.start()
    try:
        for i in range(30):
            store.put_bytes("shared/blob", versions[i % 3])
    finally:
        stop.set()
        reader.join()
    assert errors == []


def test_failed_write_keeps_the_previous_object(store: ObjectStore, tmp_path: Path) -> None:
    store.put_bytes("models/champion.json", b'{"run": "old"}')
    # Reading the source fails (EIO): an OSError, which the local store names as a StorageError.
    with pytest.raises((OSError, StorageError)):
        store.put_file("models/champion.json", "/proc/self/mem")
    assert store.get_bytes("models/champion.json") == b'{"run": "old"}'
    assert store.list() == ["models/champion.json"]
    if isinstance(store, LocalStore):
        assert [p.name for p in (store.root / "models").iterdir()] == ["champion.json"]


def test_writing_file_appears_whole_or_not_at_all(store: ObjectStore) -> None:
    key = "prepared/d/8/images-train.npy"
    store.put_bytes(key, b"old")
    with store.writing_file(key) as path:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(3, 8, 8))
        array[:] = 7
        array.flush()
        del array
        assert store.get_bytes(key) == b"old"  # nobody sees it while it is being filled
    np.testing.assert_array_equal(np.load(store.local_path(key)), np.full((3, 8, 8), 7))
    if isinstance(store, LocalStore):  # renamed into place, not copied
        assert path.parent == store.local_path(key).parent

    with pytest.raises(RuntimeError, match="halfway"), store.writing_file(key) as path:
        path.write_bytes(b"partial")
        raise RuntimeError("halfway")
    assert not path.exists()
    assert store.list("prepared/") == [key] and np.load(store.local_path(key)).shape == (3, 8, 8)
    with pytest.raises(InputError), store.writing_file("../outside"):
        pass


def test_failed_download_keeps_the_destination(store: ObjectStore, tmp_path: Path) -> None:
    store.put_bytes("k", b"payload")
    blocked = tmp_path / "dest"
    blocked.mkdir()
    (blocked / "keep.txt").write_text("mine")  # a non-empty folder cannot be replaced
    with pytest.raises(OSError):
        store.get_file("k", blocked)
    assert (blocked / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir() if TMP_SUFFIX in p.name) == []


BAD_KEYS = ["", "/abs", "a/../b", "..", "a//b", "a/", "a\\b", "./a", "a/./b"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused(store: ObjectStore, key: str, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x")
    for operation in (
        lambda: store.put_bytes(key, b"x"),
        lambda: store.put_file(key, source),
        lambda: store.get_bytes(key),
        lambda: store.get_file(key, tmp_path / "out"),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.size(key),
        lambda: store.url(key),
        lambda: store.presigned_url(key),
    ):
        with pytest.raises(InputError, match="invalid storage key"):
            operation()
    assert store.list() == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("prefix", ["/x", "../", "a/../", "a\\b/"])
def test_bad_prefixes_are_refused(store: ObjectStore, prefix: str) -> None:
    store.put_bytes("a/b", b"x")
    with pytest.raises(InputError):
        store.list(prefix)
    with pytest.raises(InputError):
        store.delete_prefix(prefix)
    assert store.list() == ["a/b"]


# -- local backend specifics ----------------------------------------------------------------------


def test_open_store_local_forms(tmp_path: Path) -> None:
    for uri in (str(tmp_path / "plain"), f"file://{tmp_path / 'uri'}", (tmp_path / "as").as_uri()):
        store = open_store(uri)
        assert isinstance(store, LocalStore)
        store.put_bytes("k", b"v")
    assert (tmp_path / "plain" / "k").read_bytes() == b"v"
    assert (tmp_path / "uri" / "k").read_bytes() == b"v"
    assert open_store(str(tmp_path / "plain")).uri == (tmp_path / "plain").as_uri()
    for bad in ("gs://bucket/x", "s3://", "s3:///prefix", ""):
        with pytest.raises(InputError):
            open_store(bad)


def test_local_write_over_a_file_parent_is_a_storage_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("a", b"file")
    with pytest.raises(StorageError, match="cannot write"):
        store.put_bytes("a/b", b"x")
    assert store.get_bytes("a") == b"file"


# -- S3 specifics ---------------------------------------------------------------------------------


def _client(server: S3Server) -> object:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
        config=Config(s3={"addressing_style": "path"}),
    )


def test_presigned_url_is_fetchable_over_http(s3_store: S3Store) -> None:
    s3_store.put_bytes("runs/r1/plots/roc.png", b"\x89PNG fake but bytes")
    url = s3_store.presigned_url("runs/r1/plots/roc.png", expires_s=600)
    assert url is not None and url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"\x89PNG fake but bytes"
    plain = url.split("?")[0]
    with pytest.raises(urllib.error.HTTPError) as refused:  # unsigned: signatures are enforced
        urllib.request.urlopen(plain, timeout=10)
    assert refused.value.code == 403


def test_multipart_upload_of_a_large_file(seaweedfs: S3Server, tmp_path: Path) -> None:
    store = S3Store(
        seaweedfs.bucket,
        "tests/multipart",
        endpoint_url=seaweedfs.endpoint,
        access_key=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key,
        multipart_threshold=5 * MiB,
        cache_dir=tmp_path / "cache",
    )
    source = tmp_path / "big.bin"
    payload = os.urandom(11 * MiB)
    source.write_bytes(payload)
    store.put_file("big.bin", source)
    head = _client(seaweedfs).head_object(Bucket=seaweedfs.bucket, Key="tests/multipart/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 1 MiB parts
    assert store.size("big.bin") == len(payload)
    assert store.sha256("big.bin") == hashlib.sha256(payload).hexdigest()
    store.get_file("big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == payload
    store.delete_prefix("")


def test_sha256_of_an_object_written_by_someone_else(
    s3_store: S3Store, seaweedfs: S3Server
) -> None:
    payload = os.urandom(20_000)
    key = f"{s3_store.prefix}/foreign.bin"
    _client(seaweedfs).put_object(Bucket=seaweedfs.bucket, Key=key, Body=payload)
    assert s3_store.sha256("foreign.bin") == hashlib.sha256(payload).hexdigest()


def test_local_path_cache_follows_the_object(s3_store: S3Store) -> None:
    s3_store.put_bytes("m/arr.npy", b"version one")
    first = s3_store.local_path("m/arr.npy")
    assert first.is_relative_to(s3_store.cache_dir) and first.suffix == ".npy"
    mtime = first.stat().st_mtime_ns
    assert s3_store.local_path("m/arr.npy") == first
    assert first.stat().st_mtime_ns == mtime  # reused, not downloaded again
    s3_store.put_bytes("m/arr.npy", b"version two!")
    second = s3_store.local_path("m/arr.npy")
    assert second != first and second.read_bytes() == b"version two!"
    assert not first.exists()  # the stale copy is gone


def test_open_store_reads_the_aws_environment(s3_env: str) -> None:
    store = open_store(s3_env)
    assert isinstance(store, S3Store)
    assert store.uri == s3_env
    store.put_json("runs/r1/config.json", {"a": 1})
    assert open_store(s3_env).get_json("runs/r1/config.json") == {"a": 1}
    assert store.local_path("runs/r1/config.json").is_relative_to(os.environ["PNEUMO_CACHE_DIR"])
    store.delete_prefix("")


def test_missing_bucket_fails_at_once(seaweedfs: S3Server) -> None:
    store = S3Store(
        "no-such-bucket",
        endpoint_url=seaweedfs.endpoint,
        access_key=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key,
        max_attempts=5,
        backoff_s=2.0,
    )
    started = time.monotonic()
    for operation in (
        lambda: store.put_bytes("k", b"x"),
        lambda: store.get_bytes("k"),
        lambda: store.exists("k"),
        lambda: store.size("k"),
        lambda: store.list(),
    ):
        with pytest.raises(StorageError, match="no-such-bucket") as raised:
            operation()
        assert not isinstance(raised.value, ObjectNotFound)
        assert seaweedfs.endpoint in str(raised.value)
    assert time.monotonic() - started < 2.0  # no retries with a 2 s backoff happened


def test_wrong_secret_fails_at_once_without_leaking_it(seaweedfs: S3Server) -> None:
    secret = "wrong-secret-" + os.urandom(8).hex()
    store = S3Store(
        seaweedfs.bucket,
        "tests/denied",
        endpoint_url=seaweedfs.endpoint,
        access_key=seaweedfs.access_key,
        secret_key=secret,
        max_attempts=5,
        backoff_s=2.0,
    )
    started = time.monotonic()
    for operation in (
        lambda: store.put_bytes("k", b"x"),
        lambda: store.get_bytes("k"),
        lambda: store.exists("k"),
        lambda: store.list(),
    ):
        with pytest.raises(StorageError, match="refused") as raised:
            operation()
        text = "".join(traceback.format_exception(raised.value))
        assert secret not in text
        assert seaweedfs.bucket in str(raised.value) and seaweedfs.endpoint in str(raised.value)
    assert time.monotonic() - started < 2.0


# -- transient faults ---------------------------------------------------------------------------


class DelayedProxy:
    """A TCP proxy to the S3 server that only starts listening after `delay_s`."""

    def __init__(self, upstream: str, delay_s: float) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        (self.port,) = free_ports(1)
        self.delay_s = delay_s
        self.server: socketserver.ThreadingTCPServer | None = None
        self.timer = threading.Timer(delay_s, self._listen)

    def _listen(self) -> None:
        upstream = self.upstream

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with socket.create_connection(upstream) as remote:
                    back = threading.Thread(target=_pump, args=(remote, self.request))
                    back.start()
                    _pump(self.request, remote)
                    back.join()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Pipe)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> DelayedProxy:
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # botocore's standard mode waits rand() x 0.05 s x 2^n between tries: 14 tries make a
    # window of seconds, not the fraction of a second that a few of them may give
    monkeypatch.setenv("PNEUMO_S3_MAX_ATTEMPTS", "14")
    monkeypatch.setenv("PNEUMO_S3_BACKOFF_S", "0.2")


def _store_at(server: S3Server, endpoint: str, tmp_path: Path) -> S3Store:
    return S3Store(
        server.bucket,
        "tests/transient",
        endpoint_url=endpoint,
        access_key=server.access_key,
        secret_key=server.secret_key,
        cache_dir=tmp_path / "cache",
    )


def _quickly_retrying_store(
    server: S3Server, port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, attempts: int
) -> S3Store:
    """A store on a local fake endpoint, configured through the environment like a real one."""
    monkeypatch.setenv("PNEUMO_S3_MAX_ATTEMPTS", str(attempts))
    monkeypatch.setenv("PNEUMO_S3_BACKOFF_S", "0.01")
    return _store_at(server, f"http://127.0.0.1:{port}", tmp_path)


def test_server_that_comes_up_late_is_retried(
    seaweedfs: S3Server, tmp_path: Path, fast_retries: None
) -> None:
    proxy = DelayedProxy(seaweedfs.endpoint, delay_s=1.0)
    # the client is built before the proxy's clock starts, so the first attempt is refused
    store = _store_at(seaweedfs, f"http://127.0.0.1:{proxy.port}", tmp_path)
    assert store.max_attempts == 14
    with proxy:
        started = time.monotonic()
        store.put_bytes("late.txt", b"made it")  # connection refused until the proxy listens
        assert time.monotonic() - started >= 0.9
        assert store.get_bytes("late.txt") == b"made it"
        store.delete("late.txt")


def test_endpoint_that_never_listens_gives_a_transient_error(
    tmp_path: Path, seaweedfs: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    (port,) = free_ports(1)
    store = _quickly_retrying_store(seaweedfs, port, tmp_path, monkeypatch, attempts=3)
    with pytest.raises(TransientStorageError, match="after 3 attempts") as raised:
        store.get_bytes("k")
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert seaweedfs.secret_key not in "".join(traceback.format_exception(raised.value))


@pytest.fixture
def resetting_server() -> Iterator[tuple[int, list[int]]]:
    """Accepts each connection and resets it at once; counts the attempts it saw."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    accepted: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(1)  # counted before the reset, which is what ends the attempt
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    yield listener.getsockname()[1], accepted
    stop.set()
    thread.join()
    listener.close()


def test_connection_resets_are_retried_the_configured_number_of_times(
    tmp_path: Path, seaweedfs: S3Server, monkeypatch: pytest.MonkeyPatch, resetting_server
) -> None:
    port, accepted = resetting_server
    store = _quickly_retrying_store(seaweedfs, port, tmp_path, monkeypatch, attempts=4)
    with pytest.raises(TransientStorageError, match="after 4 attempts"):
        store.put_bytes("k", b"x")
    assert len(accepted) == 4


@pytest.fixture
def slow_down_server() -> Iterator[tuple[int, list[str]]]:
    """An HTTP endpoint that answers every request like a throttled S3 (503 SlowDown)."""
    seen: list[str] = []

    class SlowDown(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(self.command)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your rate</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_HEAD = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowDown)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    thread.join()
    server.server_close()


def test_throttling_is_retried_then_reported_as_transient(
    tmp_path: Path, seaweedfs: S3Server, monkeypatch: pytest.MonkeyPatch, slow_down_server
) -> None:
    port, seen = slow_down_server
    store = _quickly_retrying_store(seaweedfs, port, tmp_path, monkeypatch, attempts=3)
    with pytest.raises(TransientStorageError, match="SlowDown"):
        store.get_bytes("k")
    assert seen == ["GET"] * 3
