"""The flows end to end under a temporary Prefect API, on a tiny generated dataset, with
both storage backends: states, artifacts (read back through the Prefect client) and the
objects written to the store."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from flows.cli.main import main
from flows.pipeline import pipeline
from flows.predict import predict_flow
from pneumo_core.data.synthetic import generate
from pneumo_core.evaluation.submission import check_submission
from pneumo_core.runs import champion
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.open import open_store
from tasks.training import progress_key

pytestmark = pytest.mark.usefixtures("prefect_harness")

# The ci preset, shrunk further: 2 folds, 1 epoch, 64 px images.
OVERRIDES = {"image_size": 64, "epochs": 1}
CLI_OVERRIDES = ["--epochs", "1", "--set", "image_size=64"]
N_TRAIN, N_TEST = 24, 4
# Uppercase, "_" and "." are not allowed in Prefect artifact keys: the run id must still work.
RUN_ID = "Exp_1.v2"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    return generate(out, n_train=N_TRAIN, n_test=N_TEST, image_size=96, seed=5)


@pytest.fixture(scope="module")
def file_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One pipeline run on a file:// store, shared by the tests that inspect it."""
    storage = (tmp_path_factory.mktemp("file-store") / "store").as_uri()
    state = pipeline(
        source=str(dataset),
        storage=storage,
        preset="ci",
        overrides=OVERRIDES,
        run_id=RUN_ID,
        return_state=True,
    )
    return {"storage": storage, "state": state, "flow_run_id": state.state_details.flow_run_id}


# -- reading Prefect back -----------------------------------------------------------------------


def client() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def eventually(read: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 30.0) -> Any:
    """Task-run states reach the API through events, a moment after the flow returns."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def child_flow_runs(parent: UUID) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with client() as c:
        return c.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])
            )
        )


def task_runs(flow_run_ids: list[UUID]) -> dict[str, Any]:
    """Task runs of these flow runs by name (the latest of each name)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with client() as c:
        runs = c.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids))
        )
    return {run.name: run for run in sorted(runs, key=lambda r: r.expected_start_time)}


def artifacts(flow_run_ids: list[UUID]) -> list[Any]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with client() as c:
        return c.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=flow_run_ids))
        )


def latest_pipeline_run() -> Any:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with client() as c:
        runs = c.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["pipeline"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    return runs[0]


def all_completed(runs: dict[str, Any]) -> bool:
    return all(run.state_type.value == "COMPLETED" for run in runs.values())


# -- checks shared by both backends -------------------------------------------------------------


def check_outputs(store: ObjectStore, run_id: str, dataset: Path) -> None:
    for fold in (0, 1):
        prefix = f"runs/{run_id}/fold-{fold}"
        for name in ("done.json", "metrics.jsonl", "oof_predictions.csv", "checkpoint-best.pt"):
            assert store.exists(f"{prefix}/{name}"), f"{prefix}/{name} missing"
    assert store.get_json(f"runs/{run_id}/config.json")["image_size"] == 64
    assert store.exists(f"runs/{run_id}/evaluation.json")
    plots = store.list(f"runs/{run_id}/plots/")
    assert [p.rsplit("/", 1)[1] for p in plots] == [
        "curves.png", "map-vs-threshold.png", "validation-grid.png"
    ]  # fmt: skip
    assert all(store.get_bytes(p).startswith(PNG) for p in plots)
    report_md = store.get_text(f"runs/{run_id}/report.md")
    assert "## Folds" in report_md and "](plots/validation-grid.png)" in report_md
    local = Path(store.local_path(f"runs/{run_id}/submission.csv"))
    assert check_submission(local, sample=dataset / "stage_2_sample_submission.csv") == []
    assert len(local.read_text().splitlines()) == N_TEST + 1


def check_pipeline_in_prefect(flow_run_id: UUID, run_id: str) -> dict[str, Any]:
    """States of the pipeline, its two fold subflows and every task; returns the artifacts."""
    children = child_flow_runs(flow_run_id)
    assert sorted(r.name for r in children) == [f"{run_id}-fold-0", f"{run_id}-fold-1"]
    assert all(r.state_type.value == "COMPLETED" for r in children)
    ids = [flow_run_id, *(r.id for r in children)]
    expected = {
        "ingest-rsna-pneumonia-detection-challenge", "prepare-64px-2-folds",
        "train-fold-0-here", "train-fold-1-here", "train-fold-0", "train-fold-1",
        "create-run", "evaluate", "predict-test-images", "promote", "report",
    }  # fmt: skip
    runs = eventually(lambda: task_runs(ids), lambda r: expected <= set(r) and all_completed(r))
    assert expected <= set(runs), expected - set(runs)
    assert all_completed(runs), {n: r.state_type for n, r in runs.items()}
    assert "gpu-train" in runs["train-fold-0"].tags and "gpu-train" in runs["train-fold-1"].tags

    found = artifacts(ids)
    by_key = {a.key: a for a in found if a.key}
    rows = json.loads(by_key["fold-metrics"].data)
    assert [r["fold"] for r in rows[:2]] == [0, 1]
    assert rows[2]["fold"] == "all (out of fold, cross-fitted)"
    assert all(set(r) == set(rows[0]) for r in rows)  # one set of columns for the UI
    assert all(r["epochs"] == 1 and r["best_epoch"] == 0 for r in rows[:2])
    assert "Run " + run_id in by_key["run-report"].data
    progress = [a for a in found if a.type == "progress"]
    assert sorted(a.key for a in progress) == [progress_key(run_id, 0), progress_key(run_id, 1)]
    assert all(float(a.data) == 100.0 for a in progress)
    return by_key


# -- tests --------------------------------------------------------------------------------------


def test_pipeline_on_file_store(file_run: dict[str, Any], dataset: Path) -> None:
    state = file_run["state"]
    assert state.is_completed(), state.message
    summary = state.result()
    run_id = summary.run_id
    assert run_id == RUN_ID
    store = open_store(file_run["storage"])
    check_outputs(store, run_id, dataset)
    assert summary.promoted and "no champion yet" in summary.promotion
    assert champion.read_champion(store).run_id == run_id
    assert summary.submission == store.url(f"runs/{run_id}/submission.csv")

    links = check_pipeline_in_prefect(file_run["flow_run_id"], run_id)
    for key, name in [
        ("submission", "submission.csv"), ("report", "report.md"),
        ("checkpoint-fold-1", "fold-1/checkpoint-best.pt"),
    ]:  # fmt: skip
        url = store.url(f"runs/{run_id}/{name}")
        assert links[key].data == f"[{url}]({url})"


def test_run_command_resumes_without_repeating_work(
    file_run: dict[str, Any], dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pneumo run --run-id` of a finished run: ingest and prepare come from Prefect's cache,
    the folds are not trained again, and the run stays champion without a second promotion."""
    store = open_store(file_run["storage"])
    run_id = file_run["state"].result().run_id
    checkpoints = {f: store.get_bytes(f"runs/{run_id}/fold-{f}/checkpoint-last.pt") for f in (0, 1)}

    code = main(
        ["run", "--source", str(dataset), "--storage", file_run["storage"], "--preset", "ci",
         "--run-id", run_id, *CLI_OVERRIDES]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert f"run {run_id}: OOF mAP" in out
    assert "already the champion" in out
    assert f"report:     {store.url(f'runs/{run_id}/report.md')}" in out
    for fold, before in checkpoints.items():
        assert store.get_bytes(f"runs/{run_id}/fold-{fold}/checkpoint-last.pt") == before

    resumed = latest_pipeline_run()
    assert resumed.id != file_run["flow_run_id"] and resumed.state_type.value == "COMPLETED"
    runs = eventually(
        lambda: task_runs([resumed.id]),
        lambda r: {"ingest-rsna-pneumonia-detection-challenge", "prepare-64px-2-folds"} <= set(r),
    )
    assert runs["ingest-rsna-pneumonia-detection-challenge"].state.name == "Cached"
    assert runs["prepare-64px-2-folds"].state.name == "Cached"


def test_predict_flow_uses_the_champion(
    file_run: dict[str, Any], dataset: Path, tmp_path: Path
) -> None:
    store = open_store(file_run["storage"])
    out = tmp_path / "predictions.csv"
    written = predict_flow(
        storage=file_run["storage"], images=str(dataset / "stage_2_test_images"), out=str(out)
    )
    run_id = champion.champion_run_id(store)
    # kept in the store too, since a worker's local disk goes away with its container
    [key] = store.list(f"runs/{run_id}/predictions/")
    assert written == store.url(key)
    assert key.endswith("-predictions.csv")
    assert check_submission(out, sample=dataset / "stage_2_sample_submission.csv") == []
    # the same models and post-processing as the pipeline's own submission
    assert out.read_text() == store.get_text(f"runs/{run_id}/submission.csv")
    assert store.get_text(key) == out.read_text()


@pytest.fixture
def s3_storage(s3_env: str) -> Iterator[str]:
    yield s3_env
    open_store(s3_env).delete_prefix("")


def test_pipeline_on_s3(s3_storage: str, dataset: Path) -> None:
    """Also trains the folds through the parallel local runner (max_parallel_folds=2)."""
    state = pipeline(
        source=str(dataset), storage=s3_storage, preset="ci", overrides=OVERRIDES,
        max_parallel_folds=2, return_state=True,
    )  # fmt: skip
    assert state.is_completed(), state.message
    run_id = state.result().run_id
    store = open_store(s3_storage)
    check_outputs(store, run_id, dataset)
    assert champion.champion_run_id(store) == run_id
    # Prefect's persisted results (the cache of ingest and prepare) live beside the data.
    assert store.list("prefect-results/"), "no Prefect results in the bucket"

    links = check_pipeline_in_prefect(state.state_details.flow_run_id, run_id)
    for key, name in [("submission", "submission.csv"), ("report", "report.md")]:
        text = links[key].data  # [s3://bucket/prefix/key](presigned http link)
        assert text.startswith(f"[{store.url(f'runs/{run_id}/{name}')}](http"), text
    images = [a for a in artifacts([state.state_details.flow_run_id]) if a.type == "image"]
    assert len(images) == 3
    # both folds ran as child runs of the two-worker pool; whether they overlap in time
    # depends on scheduling when a fold trains for under a second, so that is not asserted
    folds = child_flow_runs(state.state_details.flow_run_id)
    assert len(folds) == 2 and all(r.state.is_completed() for r in folds)
