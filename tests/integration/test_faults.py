"""Faults a scheduled pipeline meets, done for real: the object store going away in the middle
of an ingest (a proxy in front of the real SeaweedFS that stops forwarding, as a network
partition would), the answer to a champion promotion lost on the way back, a PUT cut off
between its "100 Continue" and its body, a Kaggle download cut off at the API boundary, and a
prepared cache object truncated in the store."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pneumo_core import DEFAULT_DATASET
from pneumo_core.data import kaggle
from pneumo_core.data.ingest import ingest
from pneumo_core.data.prepare import cache_problems, prepare_dataset
from pneumo_core.data.synthetic import generate
from pneumo_core.errors import TransientStorageError
from pneumo_core.layout import manifest_key, prepared_prefix
from pneumo_core.runs import champion
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.s3 import S3Store
from tests.seaweedfs import S3Server

PREFIX = prepared_prefix(DEFAULT_DATASET, 32)


class OutageProxy:
    """A TCP proxy to the S3 server that can go down (live connections cut, new ones reset)
    and come back, lose the answer to one request (done by the server, the connection then
    cut before the client hears back), or cut one request after the server's "100 Continue",
    before its body is forwarded."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.up = threading.Event()
        self.up.set()
        self.live: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.lose_answer_to: bytes | None = None  # the next request holding these bytes
        self.cut_body_of: bytes | None = None  # the next request holding these bytes
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # a reset, like a host that is gone
                continue
            remote = socket.create_connection(self.upstream)
            with self.lock:
                self.live |= {client, remote}
            lost = threading.Event()  # this connection's answer is to be lost
            cut = threading.Event()  # this connection's request body is never forwarded
            for a, b in ((client, remote), (remote, client)):
                args = (a, b, lost, cut, a is client)
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, lost: threading.Event,
        cut: threading.Event, request: bool,
    ) -> None:  # fmt: skip
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if request:
                    if cut.is_set():
                        break  # the body, sent after "100 Continue": the server never gets it
                    with self.lock:
                        if self.lose_answer_to is not None and self.lose_answer_to in data:
                            self.lose_answer_to = None
                            lost.set()
                        if self.cut_body_of is not None and self.cut_body_of in data:
                            self.cut_body_of = None
                            cut.set()
                elif lost.is_set() and not data.startswith(b"HTTP/1.1 100 "):
                    break  # the answer (after any "100 Continue"): the client never hears it
                sink.sendall(data)
                if cut.is_set() and not request and data.startswith(b"HTTP/1.1 100 "):
                    break  # the client heard "100 Continue"; the connection is cut now
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        self.up.clear()
        with self.lock:
            for sock in self.live:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self.live.clear()

    def close(self) -> None:
        self.down()
        self.listener.close()


@pytest.fixture
def proxy(seaweedfs: S3Server) -> Iterator[OutageProxy]:
    proxy = OutageProxy(seaweedfs.endpoint)
    yield proxy
    proxy.close()


def _store(
    server: S3Server, endpoint: str, prefix: str, tmp_path: Path, max_attempts: int | None = None
) -> S3Store:
    return S3Store(
        server.bucket, prefix, endpoint_url=endpoint, access_key=server.access_key,
        secret_key=server.secret_key, cache_dir=tmp_path / "cache", max_attempts=max_attempts,
    )  # fmt: skip


def _check_against_manifest(store: ObjectStore) -> dict:
    manifest = store.get_json(manifest_key(DEFAULT_DATASET))
    wrong = [m["key"] for m in manifest["members"] if store.sha256(m["key"]) != m["sha256"]]
    assert not wrong, f"objects differ from the manifest: {wrong[:3]}"
    sizes = [(m["key"], store.size(m["key"]), m["size"]) for m in manifest["members"]]
    wrong = [s for s in sizes if s[1] != s[2]]
    assert not wrong, f"stored sizes differ from the manifest: {wrong[:3]}"
    return manifest


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    return generate(out, n_train=60, n_test=20, image_size=128, seed=4)


def _stored(direct: S3Store) -> int:
    return len(direct.list(f"raw/{DEFAULT_DATASET}/"))


def test_store_outage_within_the_retry_window_is_survived(
    seaweedfs: S3Server, proxy: OutageProxy, source: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("PNEUMO_S3_MAX_ATTEMPTS", "10")
    monkeypatch.setenv("PNEUMO_S3_BACKOFF_S", "0.2")
    prefix = f"tests/outage-{time.time_ns()}"
    store = _store(seaweedfs, proxy.endpoint, prefix, tmp_path)
    direct = _store(seaweedfs, seaweedfs.endpoint, prefix, tmp_path)
    went_down = threading.Event()
    outage = threading.Thread(target=_outage_after, args=(proxy, direct, 20, 2.0, went_down))
    outage.start()
    result = ingest(str(source), store, progress=False)
    outage.join()
    assert went_down.is_set()
    assert result.uploaded == result.members == 83
    _check_against_manifest(direct)
    direct.delete_prefix("")


def _outage_after(
    proxy: OutageProxy, direct: S3Store, objects: int, seconds: float, went_down: threading.Event
) -> None:
    """Take the store away once `objects` are stored, for `seconds`."""
    deadline = time.monotonic() + 120
    while _stored(direct) < objects and time.monotonic() < deadline:
        time.sleep(0.02)
    proxy.down()
    went_down.set()
    time.sleep(seconds)
    proxy.up.set()


def test_a_longer_outage_fails_clearly_and_a_rerun_uploads_only_what_is_missing(
    seaweedfs: S3Server, proxy: OutageProxy, source: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("PNEUMO_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("PNEUMO_S3_BACKOFF_S", "0.05")
    # the failed ingest cannot release its lock while the store is away: the re-run waits
    # for its lease to run out (default 120 s)
    monkeypatch.setenv("PNEUMO_LOCK_TTL_S", "5")
    prefix = f"tests/outage-{time.time_ns()}"
    store = _store(seaweedfs, proxy.endpoint, prefix, tmp_path)
    direct = _store(seaweedfs, seaweedfs.endpoint, prefix, tmp_path)
    went_down = threading.Event()
    outage = threading.Thread(
        target=_outage_after, args=(proxy, direct, 20, 3600, went_down), daemon=True
    )
    outage.start()
    with pytest.raises(TransientStorageError, match=r"S3 .* failed after 2 attempts") as raised:
        ingest(str(source), store, progress=False)
    assert seaweedfs.secret_key not in str(raised.value)
    assert not direct.exists(manifest_key(DEFAULT_DATASET))  # no manifest over half
    stored = direct.list(f"raw/{DEFAULT_DATASET}/")
    assert 20 <= len(stored) < 83
    # every object stored is whole: a PUT the outage cut off was refused by its Content-MD5
    # (without it SeaweedFS stored such a PUT empty)
    prefix_len = len(f"raw/{DEFAULT_DATASET}/")
    broken = [k for k in stored if direct.get_bytes(k) != (source / k[prefix_len:]).read_bytes()]
    assert not broken, f"objects stored damaged by the outage: {broken[:3]}"

    proxy.up.set()  # the store is back: the re-run uploads what is missing, nothing more
    assert went_down.is_set()
    result = ingest(str(source), store, progress=False)
    assert result.uploaded == 83 - len(stored) and result.skipped == len(stored)
    _check_against_manifest(direct)
    direct.delete_prefix("")


def test_a_promotion_whose_answer_was_lost_is_reported_as_promoted(
    seaweedfs: S3Server, proxy: OutageProxy, tmp_path: Path
) -> None:
    """The champion's conditional PUT is stored but its answer lost: botocore sends it again,
    the server refuses the retry (412: the first attempt changed the version it was
    conditional on), and the run, now the champion, must still be reported promoted."""
    prefix = f"tests/lost-answer-{time.time_ns()}"
    store = _store(seaweedfs, proxy.endpoint, prefix, tmp_path)
    direct = _store(seaweedfs, seaweedfs.endpoint, prefix, tmp_path)
    champion.promote_if_better(direct, champion.candidate("old", 0.5, "h", "m", "l", "p"))
    proxy.lose_answer_to = b"If-Match:"
    decision = champion.promote_if_better(store, champion.candidate("new", 0.9, "h", "m", "l", "p"))
    assert proxy.lose_answer_to is None, "no conditional PUT went through the proxy"
    assert decision.promoted, decision.reason
    assert decision.previous is not None and decision.previous.run_id == "old"
    assert "beats champion old" in decision.reason
    assert champion.read_champion(direct).run_id == "new"
    direct.delete_prefix("")


def test_a_put_cut_off_after_100_continue_never_stores_an_empty_object(
    seaweedfs: S3Server, proxy: OutageProxy, tmp_path: Path
) -> None:
    """Cut between the server's "100 Continue" and the body, SeaweedFS stored a PUT as an empty
    object (an If-Match one too, leaving a champion record that no longer parsed) unless it
    carries a Content-MD5. With one attempt the object stays absent or unchanged; with
    botocore's retries the whole new body is stored."""
    prefix = f"tests/cut-body-{time.time_ns()}"
    store = _store(seaweedfs, proxy.endpoint, prefix, tmp_path)
    once = _store(seaweedfs, proxy.endpoint, prefix, tmp_path, max_attempts=1)  # no retry hides it
    direct = _store(seaweedfs, seaweedfs.endpoint, prefix, tmp_path)
    new = b"new body\n" * 1000
    direct.put_bytes("kept.bin", b"old body\n")
    for key, before in (("kept.bin", b"old body\n"), ("absent.bin", None)):
        proxy.cut_body_of = f"/{key} ".encode()
        with pytest.raises(TransientStorageError):
            once.put_bytes(key, new)
        assert proxy.cut_body_of is None, "the PUT did not go through the proxy"
        assert (direct.get_bytes(key) if direct.exists(key) else None) == before, key

    champion.promote_if_better(direct, champion.candidate("old", 0.5, "h", "m", "l", "p"))
    candidate = champion.candidate("new", 0.9, "h", "m", "l", "p")
    proxy.cut_body_of = b"If-Match:"
    with pytest.raises(TransientStorageError):
        champion.promote_if_better(once, candidate)
    assert proxy.cut_body_of is None, "no conditional PUT went through the proxy"
    assert champion.read_champion(direct).run_id == "old"  # unchanged, and it still parses

    proxy.cut_body_of = b"If-Match:"
    decision = champion.promote_if_better(store, candidate)
    assert proxy.cut_body_of is None
    assert decision.promoted, decision.reason
    assert champion.read_champion(direct).run_id == "new"
    proxy.cut_body_of = b"/kept.bin "
    store.put_bytes("kept.bin", new)
    assert proxy.cut_body_of is None
    assert direct.get_bytes("kept.bin") == new
    direct.delete_prefix("")


class CutDownload:
    """The Kaggle API object with its one network call replaced: the first download stops
    half way (the partial zip is on disk, then the connection breaks), later ones succeed."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.calls = 0

    def competition_download_files(self, competition: str, path: str, quiet: bool) -> None:
        import requests

        self.calls += 1
        data = self.archive.read_bytes()
        target = Path(path) / f"{competition}.zip"
        if self.calls == 1:
            target.write_bytes(data[: len(data) // 2])
            raise requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead")
        target.write_bytes(data)


def test_an_interrupted_kaggle_download_is_never_ingested_and_a_retry_ingests_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    from prefect import flow

    from tasks.data import ingest

    archive = generate(tmp_path / "zip", n_train=6, n_test=2, image_size=64, zip=True)
    api = CutDownload(archive)
    monkeypatch.setattr(kaggle, "kaggle_api", lambda: api)
    store_dir = tmp_path / "store"

    @flow
    def just_ingest() -> dict:
        return ingest.with_options(retry_delay_seconds=0)(
            source="kaggle://rsna-pneumonia-detection-challenge", storage=str(store_dir),
            dataset=DEFAULT_DATASET, fingerprint=None,
        )  # fmt: skip

    result = just_ingest()
    assert api.calls == 2
    with zipfile.ZipFile(archive) as zf:
        members = len([i for i in zf.infolist() if not i.is_dir()])
    assert result["members"] == result["uploaded"] == members  # each member written once
    from pneumo_core.storage.local import LocalStore

    store = LocalStore(store_dir)
    _check_against_manifest(store)
    assert not list(store_dir.rglob("*.zip"))


def test_a_damaged_prepared_object_is_detected_named_and_rebuilt(
    store: ObjectStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = generate(tmp_path / "data", n_train=8, n_test=2, image_size=64, seed=2)
    ingest(str(src), store, progress=False)
    prepare_dataset(store, image_size=32, n_folds=2, workers=1, progress=False)
    assert cache_problems(store, DEFAULT_DATASET, 32) == []
    key = PREFIX + "images-train.npy"
    whole = store.get_bytes(key)
    store.put_bytes(key, whole[: len(whole) // 2])  # truncated in the store

    [problem] = cache_problems(store, DEFAULT_DATASET, 32)
    assert store.url(key) in problem and "does not match the sha256" in problem
    caplog.set_level(logging.WARNING, logger="pneumo_core.data.prepare")
    result = prepare_dataset(store, image_size=32, n_folds=2, workers=1, progress=False)
    assert not result.reused and store.url(key) in caplog.text
    assert store.get_bytes(key) == whole
    assert cache_problems(store, DEFAULT_DATASET, 32) == []
