"""Fixtures shared by every test layer."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.local import LocalStore
from pneumo_core.storage.s3 import S3Store
from tests import seaweedfs as seaweedfs_server
from tests.seaweedfs import S3Server

REPO = Path(__file__).resolve().parent.parent
RSNA_SAMPLE = Path(os.environ.get("PNEUMO_RSNA_SAMPLE", REPO.parent / "shared" / "rsna-sample"))


@pytest.fixture(scope="session")
def rsna_sample() -> Path:
    """The real competition sample beside the repository; tests skip where it is absent."""
    if not (RSNA_SAMPLE / "stage_2_train_labels.csv").is_file():
        pytest.skip(f"real RSNA sample not found at {RSNA_SAMPLE} (set PNEUMO_RSNA_SAMPLE)")
    return RSNA_SAMPLE


# -- S3 (SeaweedFS) ---------------------------------------------------------------------------

S3_BUCKET = "pneumo-test"


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real SeaweedFS S3 server on free loopback ports; signatures are enforced."""
    data_dir = tmp_path_factory.mktemp("seaweedfs")
    process, server = seaweedfs_server.start(
        data_dir, S3_BUCKET, access_key="pneumo-test-key", secret_key=uuid.uuid4().hex
    )
    try:
        yield server
    finally:
        seaweedfs_server.stop(process)


@pytest.fixture
def s3_store(seaweedfs: S3Server, tmp_path: Path) -> Iterator[S3Store]:
    """An S3Store on a prefix of its own, with explicit settings (no AWS_* env needed)."""
    store = S3Store(
        seaweedfs.bucket,
        f"tests/{uuid.uuid4().hex}",
        endpoint_url=seaweedfs.endpoint,
        region=seaweedfs.region,
        access_key=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key,
        cache_dir=tmp_path / "s3-cache",
    )
    yield store
    store.delete_prefix("")


@pytest.fixture
def s3_env(seaweedfs: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """AWS_* env pointing at the test server, for code that calls open_store("s3://...").

    Returns a fresh `s3://bucket/prefix` URI for this test.
    """
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweedfs.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    monkeypatch.setenv("AWS_REGION", seaweedfs.region)
    monkeypatch.setenv("PNEUMO_CACHE_DIR", str(tmp_path / "s3-cache"))
    return f"s3://{seaweedfs.bucket}/tests/{uuid.uuid4().hex}"


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same behavioural test on both backends; SeaweedFS starts only when needed."""
    if request.param == "file":
        return LocalStore(tmp_path / "store")
    return request.getfixturevalue("s3_store")


@pytest.fixture(params=["file", "s3"])
def cli_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """Like `store`, opened from its URI the way the `pneumo` command opens it (on S3 the
    AWS_* environment of `s3_env`), for tests that pass `store.uri` to a command."""
    from pneumo_core.storage.open import open_store

    if request.param == "file":
        (tmp_path / "store").mkdir()  # an empty store (a missing folder is refused by name)
        return open_store((tmp_path / "store").as_uri())
    return open_store(request.getfixturevalue("s3_env"))


# -- A tiny prepared cache (CONTRACT.md format) without running synth + prepare ----------------


@dataclass(frozen=True)
class TinyPrepared:
    store: LocalStore
    dataset: str
    image_size: int
    boxes: dict[str, np.ndarray]  # train patientId -> float [N, 4] x1y1x2y2 cache px (N may be 0)


@pytest.fixture
def tiny_prepared(tmp_path: Path) -> TinyPrepared:
    """`prepared/tiny/64/` in a file:// store: 8 train patients (odd ones have 1-2 bright
    boxes on a dark noisy image, even ones none), 2 test patients, 2 folds."""
    size, scale, dataset = 64, 64 / 1024, "tiny"
    rng = np.random.default_rng(0)
    prefix = f"prepared/{dataset}/{size}/"
    store = LocalStore(tmp_path / "store")
    meta, labels, box_rows, folds, boxes = [], [], [], [], {}
    train = rng.integers(10, 60, (8, size, size), dtype=np.uint8)
    for i in range(8):
        pid = f"train-{i}"
        n_boxes = (i % 2) * (1 + i // 4)
        originals = [(160 + 400 * k, 128 + 32 * i, 256, 320 + 64 * k) for k in range(n_boxes)]
        cls = "Lung Opacity" if originals else "Normal"
        meta.append((pid, "train", i, "F", 40, "PA", 1024, 1024, 0.14, 0.14, f"raw/{pid}.dcm"))
        labels.append((pid, cls, int(bool(originals)), len(originals)))
        folds.append((pid, cls, i % 2))
        boxes[pid] = np.array(
            [(x * scale, y * scale, (x + w) * scale, (y + h) * scale) for x, y, w, h in originals],
            dtype=np.float32,
        ).reshape(-1, 4)
        for (x, y, w, h), (x1, y1, x2, y2) in zip(originals, boxes[pid].astype(int), strict=True):
            box_rows.append((pid, x, y, w, h, x * scale, y * scale, w * scale, h * scale))
            train[i, y1:y2, x1:x2] = 220
    for i in range(2):
        meta.append(
            (f"test-{i}", "test", i, "M", 50, "AP", 1024, 1024, 0.14, 0.14, f"raw/t{i}.dcm")
        )
    tables = {
        "metadata.csv": pd.DataFrame(
            meta,
            columns=[
                *("patientId", "split", "index", "sex", "age", "view_position", "rows", "cols"),
                *("pixel_spacing_row", "pixel_spacing_col", "source_key"),
            ],
        ),
        "labels.csv": pd.DataFrame(labels, columns=["patientId", "class", "target", "n_boxes"]),
        "boxes.csv": pd.DataFrame(
            box_rows,
            columns=["patientId", "x", "y", "width", "height", "sx", "sy", "swidth", "sheight"],
        ),
        "folds.csv": pd.DataFrame(folds, columns=["patientId", "class", "fold"]),
        "quarantine.csv": pd.DataFrame(columns=["patientId", "split", "key", "reason"]),
    }
    for name, frame in tables.items():
        store.put_text(prefix + name, frame.to_csv(index=False))
    test = rng.integers(0, 255, (2, size, size), dtype=np.uint8)
    for split, array in (("train", train), ("test", test)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        store.put_bytes(f"{prefix}images-{split}.npy", buffer.getvalue())
    store.put_json(prefix + "summary.json", {"dataset": dataset, "image_size": size, "folds": 2})
    return TinyPrepared(store, dataset, size, boxes)


# -- Prefect ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One temporary Prefect API (SQLite) for the whole session; results in a temp folder."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no "database is locked"
        patch.setenv("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
        results = tmp_path_factory.mktemp("prefect-results")
        with (
            temporary_settings({PREFECT_LOCAL_STORAGE_PATH: results}),
            prefect_test_harness(server_startup_timeout=120),
        ):
            yield


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one intra-op thread for the test, restored after: small models run faster so
    and the results do not depend on the machine's core count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
