"""The `pipeline` flow: ingest → prepare → train every fold → evaluate → predict the test
images → submission → promotion decision → report.

Folds train either here, as concurrent `train-fold` subflow runs (the local runner), or on
GPU workers, one `train-fold` deployment run per fold (the deployment runner). Either way a
re-run of the same run id skips what is done: cached ingest and prepare, finished folds.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger, task, unmapped
from prefect.futures import wait
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from flows.core_logs import core_info_to_run_logs
from flows.preflight import check_folds
from flows.train_fold import train_fold_flow
from pneumo_core.config.form import RunOverrides
from pneumo_core.config.run import PresetName, RunConfig
from pneumo_core.data.prepare import cache_problems
from pneumo_core.errors import PneumoError
from pneumo_core.layout import SUMMARY, check_run_id, manifest_key, prepared_key
from pneumo_core.runs import champion
from pneumo_core.runs.records import Evaluation, TestPrediction
from pneumo_core.runs.run import Run, resolve_config
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.open import open_store
from pneumo_core.train.device import cpu_shared_by
from tasks.data import ingest, prepare_dataset, source_fingerprint
from tasks.deployment_names import PIPELINE_FLOW, PREDICT_DEPLOYMENT, TRAIN_FOLD_DEPLOYMENT
from tasks.evaluation import evaluate_run, promote, write_report
from tasks.gpu_jobs import deployment_gpu_jobs
from tasks.kaggle_submit import submit_to_kaggle
from tasks.policy import result_storage
from tasks.prediction import predict_test_images, predict_test_images_on_worker
from tasks.training import create_run, train_fold_on_worker
from tasks.weights import ensure_pretrained_weights
from tasks.worker_runs import PICKUP_TIMEOUT_S

FoldRunner = Literal["local", "deployment"]
# Every parameter typed and ranged: a run from the command line, the UI or a deployment with
# a bad one is refused before it starts, never after hours of training.
Margin = Annotated[float, Field(ge=0, allow_inf_nan=False)]
FoldsAtOnce = Annotated[int, Field(ge=1, le=256)]
GpusPerWorker = Annotated[int, Field(ge=0, le=64)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
FoldIndex = Annotated[int, Field(ge=0, lt=50)]


_POOL_THREAD = threading.local()
_GPU_ORDER = itertools.count()


@task(name="train-fold-here", task_run_name="train-fold-{fold}-here")
def train_fold_here(storage: str, run_id: str, fold: int, gpus: int) -> dict:
    """One fold as a `train-fold` subflow run in this process (retries live in its task).

    With several GPUs each thread of the fold pool keeps one GPU for its life (the pool has
    one thread per GPU), made current for the fold: "cuda" then means that GPU.
    """
    if gpus < 2:
        return train_fold_flow(run_id=run_id, fold=fold, storage=storage)
    import torch

    if not hasattr(_POOL_THREAD, "gpu"):
        _POOL_THREAD.gpu = next(_GPU_ORDER) % gpus
    get_run_logger().info("fold %d on cuda:%d", fold, _POOL_THREAD.gpu)
    with torch.cuda.device(_POOL_THREAD.gpu):
        return train_fold_flow(run_id=run_id, fold=fold, storage=storage)


class PipelineResult(BaseModel):
    """Where a finished run's outputs are: what `pneumo run` prints and the flow returns."""

    run_id: str
    oof_map: float | None
    threshold: float | None
    submission: str | None
    promoted: bool
    promotion: str
    report: str
    plots: list[str]
    kaggle: dict[str, Any] | None = None  # the Kaggle submission's record, when submitted


@flow(name=PIPELINE_FLOW, log_prints=True)
def pipeline(
    source: str,
    storage: str,
    preset: PresetName | None = None,
    overrides: RunOverrides | None = None,
    folds: list[FoldIndex] | None = None,
    fold_runner: FoldRunner = "local",
    run_id: str | None = None,
    max_parallel_folds: FoldsAtOnce | None = None,
    promotion_margin: Margin = champion.DEFAULT_MARGIN,
    fold_deployment: str = TRAIN_FOLD_DEPLOYMENT,
    predict_deployment: str = PREDICT_DEPLOYMENT,
    gpus_per_worker: GpusPerWorker = 1,
    fold_pickup_timeout_s: Seconds = PICKUP_TIMEOUT_S,
    submit: bool = False,
) -> PipelineResult:
    """Train and evaluate one run end to end; returns where its outputs are.

    `overrides` are typed and ranged (a form in the UI); an empty field keeps the preset's
    value. `run_id` names an existing run to resume (its stored configuration wins) or a new
    one; `folds` limits training to some folds (None: all); `max_parallel_folds` caps the
    local runner (None: one per GPU, else the configuration's value, 1 on CPU);
    `gpus_per_worker` is N of the deployment runner: fold k gets GPU k mod N of its Docker
    worker's host (0: no GPU), and the test images are predicted by a `predict_deployment`
    run on GPU 0; a deployment run that no worker starts within `fold_pickup_timeout_s` is
    cancelled and fails the run naming the work pool;
    `submit` sends the submission to Kaggle when the run becomes the champion.
    """
    core_info_to_run_logs()
    if run_id is not None:
        check_run_id(run_id)  # before any work: a bad id must not leave a half-made run behind
    store = open_store(storage)
    asked = overrides.to_overrides() if overrides else {}
    run_config = resolve_config(store, preset, asked, run_id)
    chosen = check_folds(folds, run_config.n_folds)  # bad input fails before any work
    digest = _ingest_and_prepare(store, source, run_config)
    run_id = create_run(store.uri, run_config, run_id, source, digest)
    if fold_runner == "deployment":
        _train_on_workers(
            fold_deployment, store.uri, run_id, chosen, gpus_per_worker, fold_pickup_timeout_s
        )
        predict = partial(
            predict_test_images_on_worker, predict_deployment, store.uri, run_id,
            gpus_per_worker, fold_pickup_timeout_s, return_state=True,
        )  # fmt: skip
    else:
        gpus = _gpu_count(run_config)
        configured = run_config.execution.max_parallel_folds
        parallel = max_parallel_folds or (gpus if gpus > 1 else configured)
        _train_here(store.uri, run_id, chosen, parallel, gpus if parallel > 1 else 0)
        predict = partial(predict_test_images, store.uri, run_id, return_state=True)
    return _evaluate_and_report(Run(store, run_id), run_config, predict, promotion_margin, submit)


def _ingest_and_prepare(store: ObjectStore, source: str, run_config: RunConfig) -> str:
    """The pretrained weights (first: no work lost offline), the dataset and its prepared
    cache in the store; returns the ingested manifest's digest."""
    dataset, uri = run_config.dataset, store.uri
    storage_block = result_storage(uri)
    cached = {"result_storage": storage_block} if storage_block is not None else {}
    if run_config.pretrained and not run_config.weights_path:
        ensure_pretrained_weights(uri, run_config.backbone)
    ingested = _run_cached(
        ingest.with_options(**cached),
        store,
        manifest_key(dataset),
        source=source,
        storage=uri,
        dataset=dataset,
        fingerprint=source_fingerprint(source),
    )
    _run_cached(
        prepare_dataset.with_options(**cached),
        store,
        prepared_key(dataset, run_config.image_size, SUMMARY),
        check=lambda: cache_problems(store, dataset, run_config.image_size),
        storage=uri,
        dataset=dataset,
        digest=ingested["digest"],
        image_size=run_config.image_size,
        n_folds=run_config.n_folds,
        seed=run_config.seed,
    )
    return ingested["digest"]


def _evaluate_and_report(
    run: Run, run_config: RunConfig, predict: Callable[[], State], margin: float, submit: bool
) -> PipelineResult:
    """Evaluation, the test-set submission (`predict`: the prediction task, here or on a
    worker; it applies the tuned post-processing), the promotion decision and the report,
    then the Kaggle submission of a new champion."""
    logger, uri, run_id = get_run_logger(), run.store.uri, run.run_id
    trained = [f for f in range(run_config.n_folds) if run.fold_done(f)]
    evaluation = _stored_evaluation(run, trained) or evaluate_run(uri, run_id)
    # A failed prediction must not cost the trained run its evaluation, decision and report:
    # it is recorded, and raised once everything else is stored (a resume redoes only it).
    prediction = _prediction_outcome(predict())
    decision = None
    if len(trained) == run_config.n_folds:
        decision = promote(uri, run_id, evaluation.oof_map, margin)
    else:
        logger.info("no promotion decision: folds %s of %d trained", trained, run_config.n_folds)
    files = write_report(uri, run_id, evaluation, trained, decision, prediction)
    if prediction.error:
        raise PneumoError(
            f"run {run_id}: the last step, predict-test-images, failed: {prediction.error} "
            "(evaluation, promotion decision and report are stored; resuming with this run id "
            "redoes only this step)"
        )
    result = PipelineResult(
        run_id=run_id,
        oof_map=evaluation.oof_map,
        threshold=evaluation.threshold,
        submission=prediction.submission,
        promoted=bool(decision and decision.promoted),
        promotion=decision.reason if decision else "not decided: not every fold trained",
        report=files.report,
        plots=files.plots,
    )
    if submit and decision is not None and decision.promoted:
        result = result.model_copy(update={"kaggle": submit_to_kaggle(uri, run_id)})
    logger.info("run %s finished: %s", run_id, result)
    return result


def _stored_evaluation(run: Run, trained: list[int]) -> Evaluation | None:
    """evaluation.json of a resumed run when it already covers exactly the trained folds."""
    stored = run.evaluation()
    if stored is None or sorted(f.fold for f in stored.per_fold) != trained:
        return None
    get_run_logger().info(
        "evaluation of run %s covers folds %s already: reused", run.run_id, trained
    )
    return stored


def _prediction_outcome(state: State) -> TestPrediction:
    """The predict task's result, or why it failed."""
    if state.is_completed():
        return state.result()
    error = state.result(raise_on_failure=False)
    message = str(error) if isinstance(error, BaseException) else state.message
    get_run_logger().error("predict-test-images failed: %s", message)
    return TestPrediction(error=message)


def _run_cached(
    step: Any,
    store: ObjectStore,
    marker: str,
    check: Callable[[], list[str]] | None = None,
    **parameters: Any,
) -> dict:
    """Run a cached step; when a cache hit's output is gone from the store, or `check` finds
    it damaged (each problem naming its object), run it again before anything uses it."""
    result = step(**parameters)
    problems = [] if store.exists(marker) else [f"{marker} is missing"]
    if not problems and check is not None:
        problems = check()
    if problems:
        get_run_logger().warning(
            "redoing %s despite a cached result: %s", step.name, "; ".join(problems)
        )
        result = step.with_options(refresh_cache=True)(**parameters)
    return result


def _gpu_count(run_config: RunConfig) -> int:
    """GPUs the local runner spreads folds over: all visible ones when the device is open."""
    import torch

    return torch.cuda.device_count() if run_config.execution.device in ("auto", "cuda") else 0


def _train_here(storage: str, run_id: str, folds: list[int], parallel: int, gpus: int) -> None:
    """Folds as subflow runs, at most `parallel` at once; the first failure fails the run.
    Without GPUs, folds at once share the cores (one intra-op thread each on two cores)."""
    parallel = min(parallel, len(folds))
    shared = cpu_shared_by(parallel) if parallel > 1 and not gpus else nullcontext()
    with shared, ThreadPoolTaskRunner(max_workers=parallel) as runner:
        futures = [
            runner.submit(
                train_fold_here, {"storage": storage, "run_id": run_id, "fold": f, "gpus": gpus}
            )
            for f in folds
        ]
        wait(futures)
        for future in futures:
            future.result()


def _train_on_workers(
    deployment: str,
    storage: str,
    run_id: str,
    folds: list[int],
    gpus_per_worker: int,
    pickup_timeout_s: float,
) -> None:
    """One `train-fold` deployment run per fold, all at once, each on its own GPU (fold k:
    GPU k mod gpus_per_worker); waits for every one."""
    job_variables = deployment_gpu_jobs(deployment, folds, gpus_per_worker)
    futures = train_fold_on_worker.map(
        unmapped(deployment), storage, run_id, folds, job_variables, unmapped(pickup_timeout_s)
    )
    wait(futures)  # let every fold finish before the first failure ends the pipeline
    for future in futures:
        future.result()
