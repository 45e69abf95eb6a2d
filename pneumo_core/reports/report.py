"""A run's report: per-fold table, plots (PNG) and report.md, all stored under runs/<id>/.

Everything a person needs to judge a run lives in the object store, so the report is built
from stored objects only (fold metrics, out-of-fold predictions, the prepared cache) and can
be rebuilt for any finished run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import median

import matplotlib

matplotlib.use("Agg")  # headless workers: never open a display

from pneumo_core.data.dataset import PreparedCache
from pneumo_core.errors import InputError
from pneumo_core.evaluation.evaluate import read_oof, read_truth
from pneumo_core.evaluation.postprocess import PostprocessConfig
from pneumo_core.layout import MODEL_CARD
from pneumo_core.reports import plots
from pneumo_core.reports.markdown import cell, markdown_table
from pneumo_core.runs.catalog import Comparison, compare_runs
from pneumo_core.runs.champion import Decision
from pneumo_core.runs.records import Evaluation, FoldResult, TestPrediction
from pneumo_core.runs.run import Run
from pneumo_core.storage.base import ObjectStore


@dataclass
class Report:
    markdown: str  # as stored: plots linked relative to runs/<id>/
    linked_markdown: str  # plots linked through `plot_link` (for a UI that is not the store)
    key: str
    plot_keys: list[str] = field(default_factory=list)
    fold_rows: list[dict] = field(default_factory=list)


def fold_row(
    fold: int, done: FoldResult | None, history: Sequence[dict], fold_map: float | None
) -> dict:
    """One row of the fold table: epochs, best epoch, its validation losses, and mAP."""
    best_epoch = done.best_epoch if done else None
    at_best = next((r for r in history if r.get("epoch") == best_epoch), {})
    last = history[-1] if history else {}
    return {
        "fold": fold,
        "epochs": done.epochs if done else len(history),
        "best_epoch": best_epoch,
        "best_val_map": done.best_val_map if done else None,
        "last_val_map": last.get("val_map"),
        "val_box_loss": at_best.get("val_box_loss"),
        "val_cls_loss": at_best.get("val_cls_loss"),
        "last_train_loss": _total(last, "train_"),
        "last_val_loss": _total(last, "val_"),
        "oof_map": fold_map,
        "weights": _weightscell(done.model_info if done else None),
    }


def _total(record: dict, prefix: str) -> float | None:
    parts = [record.get(f"{prefix}cls_loss"), record.get(f"{prefix}box_loss")]
    return None if None in parts else float(sum(parts))


def render_markdown(
    run_id: str,
    config: dict,
    evaluation: Evaluation | None,
    fold_rows: Sequence[dict],
    decision: Decision | None,
    plots: Sequence[str],
    plot_link: Callable[[str], str] = lambda name: f"plots/{name}",
    prediction: TestPrediction | None = None,
    card_link: str | None = None,
    comparison: Comparison | None = None,
) -> str:
    """report.md; by default plots are linked relative to runs/<id>/, as stored.
    `prediction`: the test-set submission, or why predicting the test images failed;
    `comparison`: this run
    against the champion before it, shown in the champion section."""
    oof_map = evaluation.oof_map if evaluation else None
    parts = [
        f"# Run {run_id}\n",
        *_headline(evaluation),
        f"- preset: `{config.get('preset')}`, folds: {len(fold_rows)}"
        + (f"; model card: [{MODEL_CARD}]({card_link})" if card_link else "")
        + "\n",
        "## Folds\n",
        markdown_table(fold_rows),
        *_scoring_notes(evaluation, fold_rows),
        "## Champion\n",
    ]
    if decision is None:
        parts.append("No promotion decision was made for this run.\n")
    else:
        previous = decision.previous
        verdict = "**promoted**" if decision.promoted else "**not promoted**"
        parts.append(f"This run is {verdict}: {decision.reason}.\n")
        rows = [{"": "this run", "run_id": run_id, "oof_map": oof_map}]
        if previous is not None:
            rows.append(
                {"": "champion before", "run_id": previous.run_id, "oof_map": previous.oof_map}
            )
        parts.append(markdown_table(rows))
    if comparison is not None:
        parts.append(f"Configuration fields that differ from run {comparison.run_b}:\n")
        parts.append(markdown_table(comparison.config_rows))
        parts.append("Figures side by side:\n")
        parts.append(markdown_table(comparison.figure_rows))
    if prediction is not None:
        parts.extend(_submission_section(prediction))
    parts.append("## Plots\n")
    parts.extend(f"![{name}]({plot_link(name)})\n" for name in plots)
    parts.append("## Configuration\n")
    parts.append("```json\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```\n")
    return "\n".join(parts)


def write_report(
    store: ObjectStore,
    run_id: str,
    evaluation: Evaluation,
    folds: Sequence[int],
    decision: Decision | None,
    plot_link: Callable[[str], str] | None = None,
    prediction: TestPrediction | None = None,
) -> Report:
    """Plots and report.md for a run; `plot_link(store key)` makes the linked variant (plots,
    and the model card when the run has one)."""
    run = Run(store, run_id)
    config = run.config_dict()
    histories = {fold: run.fold_history(fold) for fold in folds}
    per_fold = {f.fold: f.map for f in evaluation.per_fold if f.map is not None}
    rows = flag_weak_folds(
        [fold_row(f, run.fold_result(f), histories[f], per_fold.get(f)) for f in folds]
    )

    pngs: dict[str, bytes] = {"curves.png": plots.plot_curves(histories)}
    curve = [(p.threshold, p.map) for p in evaluation.curve]
    threshold = evaluation.threshold
    pngs["map-vs-threshold.png"] = plots.plot_threshold_curve(curve, threshold)
    oof = read_oof(store, run_id)
    cache = PreparedCache(store, config["dataset"], int(config["image_size"]))
    gt, _ = read_truth(store, cache.dataset, cache.image_size, oof)
    tuned = evaluation.postprocess
    post = (
        PostprocessConfig.from_dict(tuned)
        if tuned
        else PostprocessConfig(score_threshold=float(threshold or 0.0))
    )
    panels = plots.validation_panels(cache, oof, gt, post)
    pngs["validation-grid.png"] = plots.plot_validation_grid(panels)
    plot_keys = []
    for name, png in pngs.items():
        key = run.plot_key(name)
        store.put_bytes(key, png)
        plot_keys.append(key)

    card = run.card_key if store.exists(run.card_key) else None
    extras = {"prediction": prediction, "comparison": _comparison(store, run_id, decision)}
    markdown = render_markdown(
        run_id, config, evaluation, rows, decision, list(pngs),
        card_link=card and MODEL_CARD, **extras,
    )  # fmt: skip
    linked = markdown
    if plot_link is not None:
        linked = render_markdown(
            run_id, config, evaluation, rows, decision, list(pngs),
            plot_link=lambda name: plot_link(run.plot_key(name)),
            card_link=card and plot_link(card), **extras,
        )  # fmt: skip
    store.put_text(run.report_key, markdown)
    return Report(markdown, linked, run.report_key, plot_keys, rows)


def _comparison(store: ObjectStore, run_id: str, decision: Decision | None) -> Comparison | None:
    """This run against the champion it was measured against (None: no champion before, or
    its run is gone from the store)."""
    if decision is None or decision.previous is None:
        return None
    try:
        return compare_runs(store, run_id, decision.previous.run_id)
    except InputError:
        return None


def _submission_section(prediction: TestPrediction) -> list[str]:
    """The test-set submission: where it is and which images got no prediction, or why not."""
    parts = ["## Submission\n"]
    if prediction.error:
        parts.append(f"**Predicting the test images failed**: {prediction.error}\n")
        return parts
    parts.append(f"Submission: {prediction.submission}\n")
    quarantined = prediction.quarantined
    if quarantined:
        parts.append(
            f"{len(quarantined)} test image(s) could not be read and have an empty "
            "PredictionString:\n"
        )
        parts.append(markdown_table(quarantined))
    return parts


WEAK_FOLD_SHARE = 0.5  # a fold below this share of its siblings' median is flagged


def flag_weak_folds(rows: list[dict]) -> list[dict]:
    """Each row gets `flag`: "weak" when its best validation mAP is below WEAK_FOLD_SHARE of
    the median of the other folds' (a fold that quietly failed weakens the ensemble)."""
    for row in rows:
        others = [r.get("best_val_map") for r in rows if r is not row]
        others = [v for v in others if v is not None]
        mine = row.get("best_val_map")
        weak = bool(others) and mine is not None and mine < WEAK_FOLD_SHARE * median(others)
        row["flag"] = "weak" if weak else ""
    return rows


def _headline(evaluation: Evaluation | None) -> list[str]:
    """The honest score first, the optimistic one named as such."""
    if evaluation is None:
        return ["- not evaluated\n"]
    se = evaluation.oof_map_se
    lines = [
        f"- OOF mAP: **{cell(evaluation.oof_map)}**"
        + (f" (standard error {se:.4f})" if se is not None else "")
        + f", post-processing {evaluation.tuning or 'tuned on all folds'}",
        f"- in-sample OOF mAP (post-processing tuned on the very predictions it scores, "
        f"optimistic): {cell(evaluation.oof_map_in_sample)}",
        f"- submission: score threshold **{cell(evaluation.threshold)}**, max boxes "
        f"{cell(evaluation.max_boxes)}, shrink {cell(evaluation.shrink)}, "
        f"image gate {cell(evaluation.postprocess.get('gate'))} "
        "(tuned on all folds)",
    ]
    return lines


def _scoring_notes(evaluation: Evaluation | None, rows: Sequence[dict]) -> list[str]:
    notes = [
        "Each fold's model is its best epoch by validation mAP (score threshold chosen per "
        "epoch on that fold's validation images, so `best_val_map` is optimistic); "
        "`last_val_map` is the last epoch's. `oof_map` per fold uses the post-processing "
        "tuned on the other folds only.\n"
    ]
    weak = [str(r["fold"]) for r in rows if r.get("flag")]
    if weak:
        notes.append(
            f"**Weak fold(s) {', '.join(weak)}**: best validation mAP below "
            f"{WEAK_FOLD_SHARE:.0%} of the median of the other folds'.\n"
        )
    return notes


def _weightscell(info: dict | None) -> str | None:
    """Which pretrained file the fold started from, by name and sha256, and what loaded."""
    if not info:
        return None
    if not info.get("weights"):
        return "random"
    name = str(info["weights"]).rsplit("/", 1)[-1]
    sha = (info.get("weights_sha256") or "")[:12]
    return (
        f"{name} sha256 {sha}: {info.get('tensors_loaded')} loaded, "
        f"{info.get('tensors_skipped')} skipped"
    )
