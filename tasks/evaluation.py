"""Evaluation, promotion and the run's report as Prefect tasks, with the UI artifacts.

The report and plots are written to the store by pneumo_core.report; these tasks add what
only Prefect can show: the fold table, the report and links to every output in the UI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from pydantic import BaseModel

from pneumo_core.evaluation import evaluate
from pneumo_core.layout import CHECKPOINT_BEST, manifest_key
from pneumo_core.reports import model_card, report
from pneumo_core.runs import champion, links
from pneumo_core.runs.records import Evaluation, TestPrediction
from pneumo_core.runs.run import Run
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.open import open_store
from tasks.policy import RETRY_OPTIONS


class ReportFiles(BaseModel):
    """Where the run's report and its plots are (store URLs)."""

    report: str
    plots: list[str]


@task(name="evaluate", task_run_name="evaluate", **RETRY_OPTIONS)
def evaluate_run(storage: str, run_id: str) -> Evaluation:
    """Out-of-fold mAP with post-processing tuned for the metric (evaluation.json)."""
    result = evaluate.evaluate_run(open_store(storage), run_id)
    get_run_logger().info(
        "run %s: OOF mAP %s at score threshold %s", run_id, result.oof_map, result.threshold
    )
    return result


@task(name="promote", task_run_name="promote", **RETRY_OPTIONS)
def promote(storage: str, run_id: str, oof_map: float | None, margin: float) -> champion.Decision:
    """Make the run the champion when it beats the current one by more than `margin`;
    a run without a score (no image scored: None) is never promoted."""
    oof_map = math.nan if oof_map is None else oof_map
    store = open_store(storage)
    run = Run(store, run_id)
    run_config = run.config()
    # compared like with like: same data, same labels, same evaluation protocol
    digests = champion.data_digests(store, manifest_key(run_config.dataset))
    evaluation = run.evaluation()
    protocol = evaluation.protocol if evaluation else None
    new = champion.candidate(run_id, oof_map, run_config.config_hash(), *digests, protocol)
    decision = champion.promote_if_better(store, new, margin)
    get_run_logger().info("promotion: %s", decision.reason)
    return decision


@task(name="report", task_run_name="report", **RETRY_OPTIONS)
def write_report(
    storage: str,
    run_id: str,
    evaluation: Evaluation,
    folds: Sequence[int],
    decision: champion.Decision | None,
    prediction: TestPrediction | None = None,
) -> ReportFiles:
    """report.md, model-card.md and plots in the store; fold table, report, model card and
    links as Prefect artifacts, the report's plots embedded so that they show in the UI."""
    store = open_store(storage)
    card_key = model_card.write_model_card(store, run_id)
    built = report.write_report(
        store, run_id, evaluation, folds, decision,
        plot_link=lambda key: ui_link(store, key), prediction=prediction,
    )  # fmt: skip
    columns = dict.fromkeys(built.fold_rows[0] if built.fold_rows else ("fold", "oof_map"))
    overall = columns | {
        "fold": f"all (out of fold, {evaluation.tuning or 'tuned on all folds'})",
        "oof_map": evaluation.oof_map,
    }
    create_table_artifact(
        [*built.fold_rows, overall],
        key="fold-metrics",
        description=f"run {run_id}: per-fold metrics and the out-of-fold mAP",
    )
    create_markdown_artifact(built.linked_markdown, key="run-report", description=f"run {run_id}")
    create_markdown_artifact(
        store.get_text(card_key), key="model-card", description=f"run {run_id}: model card"
    )
    for key in built.plot_keys:
        image = links.link(store, key)
        if image.expires is not None:  # only an http(s) image renders in the UI
            create_image_artifact(image.url, description=f"{key} ({image.note()})")
    outputs = {"report": built.key, "model-card-file": card_key, **_outputs(store, run_id, folds)}
    for name, key in outputs.items():
        found = links.link(store, key)
        create_link_artifact(
            found.url, link_text=store.url(key), key=name,
            description=f"run {run_id}: {found.note()}",
        )  # fmt: skip
    return ReportFiles(report=store.url(built.key), plots=[store.url(k) for k in built.plot_keys])


def _outputs(store: ObjectStore, run_id: str, folds: Sequence[int]) -> dict[str, str]:
    """Artifact key -> store key of the run's submission and best checkpoints that exist."""
    run = Run(store, run_id)
    candidates = {"submission": run.submission_key}
    for fold in folds:
        candidates[f"checkpoint-fold-{fold}"] = run.fold_key(fold, CHECKPOINT_BEST)
    return {name: key for name, key in candidates.items() if store.exists(key)}


def store_link(store: ObjectStore, key: str) -> str:
    """A link a person opens: presigned for PNEUMO_S3_PUBLIC_ENDPOINT on S3, file:// otherwise."""
    return links.link(store, key).url


def ui_link(store: ObjectStore, key: str) -> str:
    """Plots embedded (the UI cannot open file:// nor private endpoints), the rest linked."""
    if key.endswith(".png"):
        return links.data_uri(store.get_bytes(key))
    return store_link(store, key)
