"""What a person sees in the Prefect UI opens: the report's plots are embedded images that
decode, image and link artifacts are signed for the public endpoint and download, each says
when it expires, and the stored report.md links relative to itself. The same run submits to
(a local stand-in for) Kaggle as it becomes champion: the pipeline's `submit` parameter."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from flows.pipeline import pipeline
from pneumo_core.data.synthetic import generate
from pneumo_core.runs.links import PUBLIC_ENDPOINT_ENV
from pneumo_core.storage.open import open_store
from tests.conftest import S3Server
from tests.e2e.test_flows import N_TEST, N_TRAIN, OVERRIDES, artifacts
from tests.kaggle_stand_in import KaggleStandIn, kaggle_stand_in_fixture  # noqa: F401

pytestmark = pytest.mark.usefixtures("prefect_harness")

MAX_ARTIFACT_BYTES = 300_000
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")
LINK = re.compile(r"\]\(([^)]+)\)")


def opened_image(url: str) -> Image.Image:
    """The image behind a markdown image URL: a data URI decoded, or an http(s) download."""
    if url.startswith("data:image/png;base64,"):
        data = base64.b64decode(url.removeprefix("data:image/png;base64,"), validate=True)
    else:
        assert url.startswith("http"), f"an image a browser cannot open: {url[:80]}"
        response = httpx.get(url)
        assert response.status_code == 200, (url, response.status_code)
        data = response.content
    image = Image.open(io.BytesIO(data))
    image.load()  # decodes the whole image: a truncated one fails here
    return image


@pytest.fixture
def s3_storage(s3_env: str) -> Iterator[str]:
    yield s3_env
    open_store(s3_env).delete_prefix("")


def test_ui_artifacts_open_from_a_browser(
    s3_storage: str,
    seaweedfs: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    kaggle_stand_in: KaggleStandIn,
) -> None:
    public = seaweedfs.endpoint.replace("127.0.0.1", "localhost")  # another name, as a browser's
    monkeypatch.setenv(PUBLIC_ENDPOINT_ENV, public)
    data = generate(tmp_path / "data", N_TRAIN, N_TEST, image_size=96, seed=5)
    state = pipeline(
        source=str(data), storage=s3_storage, preset="ci", overrides=OVERRIDES, submit=True,
        return_state=True,
    )  # fmt: skip
    assert state.is_completed(), state.message
    summary = state.result()
    run_id = summary.run_id
    assert summary.promoted and summary.kaggle["submitted"]
    found = artifacts([state.state_details.flow_run_id])
    by_key = {a.key: a for a in found if a.key}

    report = by_key["run-report"].data
    assert len(report.encode()) < MAX_ARTIFACT_BYTES, len(report.encode())
    images = IMAGE.findall(report)
    assert len(images) == 3
    for url in images:
        assert opened_image(url).width >= 300
        assert url.startswith("data:") or urlsplit(url).netloc == urlsplit(public).netloc
    card_link = re.search(r"model card: \[model-card.md\]\(([^)]+)\)", report).group(1)
    assert urlsplit(card_link).netloc == urlsplit(public).netloc
    assert "not a medical device" in httpx.get(card_link).text
    assert "not a medical device" in by_key["model-card"].data

    image_artifacts = [a for a in found if a.type == "image"]
    assert len(image_artifacts) == 3
    for artifact in image_artifacts:
        assert urlsplit(artifact.data).netloc == urlsplit(public).netloc
        opened_image(artifact.data)
        assert "expires" in artifact.description

    store = open_store(s3_storage)
    for key in ("report", "model-card-file", "submission", "checkpoint-fold-0"):
        artifact = by_key[key]
        url = LINK.search(artifact.data).group(1)
        assert urlsplit(url).netloc == urlsplit(public).netloc
        assert "expires" in artifact.description and "pneumo runs --links" in artifact.description
        response = httpx.get(url)
        assert response.status_code == 200, (key, response.status_code)
        name = {"report": "report.md", "model-card-file": "model-card.md"}.get(key)
        if name:
            assert response.content == store.get_bytes(f"runs/{run_id}/{name}")

    (sent,) = kaggle_stand_in.uploads.values()
    assert sent == store.get_bytes(f"runs/{run_id}/submission.csv")
    (row,) = json.loads(by_key["kaggle-submissions"].data)
    assert row["ref"] == summary.kaggle["ref"] and run_id in row["message"]

    stored = store.get_text(f"runs/{run_id}/report.md")
    relative = [*IMAGE.findall(stored), "model-card.md"]
    plots = ["plots/curves.png", "plots/map-vs-threshold.png", "plots/validation-grid.png"]
    assert sorted(relative) == sorted([*plots, "model-card.md"])
    assert "[model-card.md](model-card.md)" in stored
    for path in relative:
        assert store.exists(f"runs/{run_id}/{path}")
