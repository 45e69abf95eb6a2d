"""Bounded retries, one layer each: the store's requests are retried by botocore a set number
of times and tasks do not retry them again; a body broken off mid-read is fetched again; a
plain web server is not taken for a store with a missing bucket; running out of GPU memory in
the training step is not retried and says to lower the batch size."""

from __future__ import annotations

import contextlib
import http.server
import socket
import socketserver
import struct
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from flows.train_fold import train_fold_flow
from pneumo_core.config.run import preset
from pneumo_core.errors import StorageError, TransientStorageError
from pneumo_core.runs.run import create_run
from pneumo_core.storage.open import open_store
from pneumo_core.storage.s3 import S3Store
from tests.integration.test_flow_retries import FlakyProxy, _pump, state_names, task_runs_of
from tests.seaweedfs import S3Server


def s3_store_at(endpoint: str, tmp_path: Path, attempts: int, server: S3Server | None = None):
    return S3Store(
        server.bucket if server else "bucket", f"tests/{uuid.uuid4().hex}",
        endpoint_url=endpoint, region=server.region if server else "us-east-1",
        access_key=server.access_key if server else "key",
        secret_key=server.secret_key if server else "secret",
        max_attempts=attempts, backoff_s=0.01, cache_dir=tmp_path / "cache",
    )  # fmt: skip


def test_an_unreachable_store_is_tried_exactly_max_attempts_times(tmp_path: Path) -> None:
    with FlakyProxy("http://127.0.0.1:9", drop=10**9) as endpoint:
        store = s3_store_at(endpoint.endpoint, tmp_path, attempts=4)
        with pytest.raises(TransientStorageError, match="after 4 attempts"):
            store.exists("runs/x/config.json")
        assert endpoint.dropped == 4


def test_a_task_does_not_retry_what_the_store_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    """Before, 4 task tries x 6 store attempts; now the store's 3 attempts and one task try."""
    with FlakyProxy("http://127.0.0.1:9", drop=10**9) as endpoint:
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint.endpoint, "AWS_ACCESS_KEY_ID": "key",
            "AWS_SECRET_ACCESS_KEY": "secret", "AWS_REGION": "us-east-1",
            "PNEUMO_S3_MAX_ATTEMPTS": "3", "PNEUMO_CACHE_DIR": str(tmp_path / "cache"),
        }.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        state = train_fold_flow(run_id="exp-1", fold=0, storage="s3://bucket", return_state=True)
        assert state.is_failed()
        assert endpoint.dropped == 3
    training = task_runs_of(state.state_details.flow_run_id, "train-fold-0")["train-fold-0"]
    assert training.run_count == 1
    assert "AwaitingRetry" not in state_names(training.id)
    assert "TransientStorageError" in training.state.message


@contextlib.contextmanager
def plain_web_server(root: Path) -> Iterator[str]:
    """Python's file server: answers HTTP, but is no S3 server."""
    quiet = {"log_message": lambda *args: None}
    handler = type("Quiet", (http.server.SimpleHTTPRequestHandler,), quiet)
    with socketserver.ThreadingTCPServer(
        ("127.0.0.1", 0), partial(handler, directory=root)
    ) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}"
        finally:
            httpd.shutdown()


def test_a_plain_web_server_is_not_an_s3_endpoint(tmp_path: Path) -> None:
    with plain_web_server(tmp_path) as endpoint:
        store = s3_store_at(endpoint, tmp_path, attempts=2)
        for operation in (
            lambda: store.exists("raw/x"),
            lambda: store.get_bytes("raw/x"),
            lambda: store.list("raw/"),
        ):
            with pytest.raises(StorageError, match="not an S3 endpoint") as caught:
                operation()
            assert "does not exist" not in str(caught.value)


class CuttingProxy:
    """Forwards to `upstream`; on its first `cut` connections the answer stops after
    `keep` bytes with a reset, as a connection lost in the middle of a download does."""

    def __init__(self, upstream: str, cut: int, keep: int) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream, self.cut, self.keep, self.cuts = (host, int(port)), cut, keep, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            cutting = self.cuts < self.cut
            self.cuts += cutting
            threading.Thread(target=self._forward, args=(client, cutting), daemon=True).start()

    def _forward(self, client: socket.socket, cutting: bool) -> None:
        with client, socket.create_connection(self.upstream) as remote:
            threading.Thread(target=_pump, args=(client, remote), daemon=True).start()
            if not cutting:
                _pump(remote, client)
                return
            sent = 0
            with contextlib.suppress(OSError):
                while sent < self.keep and (data := remote.recv(min(65536, self.keep - sent))):
                    client.sendall(data)
                    sent += len(data)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_a_body_broken_off_mid_read_is_fetched_again(seaweedfs: S3Server, tmp_path: Path) -> None:
    data = bytes(range(256)) * 8192  # 2 MiB
    writer = s3_store_at(seaweedfs.endpoint, tmp_path, attempts=3, server=seaweedfs)
    writer.put_bytes("blob.bin", data)
    proxy = CuttingProxy(seaweedfs.endpoint, cut=1, keep=256 * 1024)
    try:
        reader = s3_store_at(proxy.endpoint, tmp_path, attempts=3, server=seaweedfs)
        reader.prefix, reader.uri = writer.prefix, writer.uri
        assert reader.get_bytes("blob.bin") == data
        assert proxy.cuts == 1
    finally:
        proxy.close()
        writer.delete_prefix("")


def test_out_of_memory_in_the_training_step_is_not_retried(
    tiny_prepared, prefect_harness: None
) -> None:
    """The real torch.OutOfMemoryError, raised where CUDA raises it: in the model's forward
    pass of a training step (a forward pre-hook; no GPU needed)."""
    import torch

    store = tiny_prepared.store
    config = preset(
        "ci", dataset=tiny_prepared.dataset, image_size=tiny_prepared.image_size, batch_size=4
    )
    run_id = create_run(store, config.with_overrides({"epochs": 1}), "oom-1")

    def out_of_memory(module: torch.nn.Module, _inputs: object) -> None:
        if module.training and type(module).__name__ == "RetinaNet":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    hook = torch.nn.modules.module.register_module_forward_pre_hook(out_of_memory)
    try:
        state = train_fold_flow(run_id=run_id, fold=0, storage=store.uri, return_state=True)
    finally:
        hook.remove()
    assert state.is_failed()
    training = task_runs_of(state.state_details.flow_run_id, "train-fold-0")["train-fold-0"]
    assert training.run_count == 1
    assert "AwaitingRetry" not in state_names(training.id)
    assert "lower the batch size" in training.state.message
    assert "batch_size=2" in training.state.message
    assert not open_store(store.uri).exists(f"runs/{run_id}/fold-0/done.json")
