"""A run's report: per-fold table, plots (PNG) and report.md, all stored under runs/<id>/.

Everything a person needs to judge a run lives in the object store, so the report is built
from stored objects only (fold metrics, out-of-fold predictions, the prepared cache) and can
be rebuilt for any finished run.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import median

import matplotlib

matplotlib.use("Agg")  # headless workers: never open a display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from pneumo_core.data.dataset import PreparedCache
from pneumo_core.errors import InputError, ObjectNotFound
from pneumo_core.evaluation import postprocess
from pneumo_core.evaluation.evaluate import read_oof, read_truth
from pneumo_core.evaluation.postprocess import PostprocessConfig
from pneumo_core.reports.model_card import CARD_NAME
from pneumo_core.runs.catalog import Comparison, compare_runs
from pneumo_core.runs.champion import Decision
from pneumo_core.storage.base import ObjectStore
from pneumo_core.train.fold import run_key

Curve = Sequence[tuple[float, float | None]]  # (score threshold, mAP or None: nothing scored)


@dataclass
class Report:
    markdown: str  # as stored: plots linked relative to runs/<id>/
    linked_markdown: str  # plots linked through `plot_link` (for a UI that is not the store)
    key: str
    plot_keys: list[str] = field(default_factory=list)
    fold_rows: list[dict] = field(default_factory=list)


def fold_history(store: ObjectStore, run_id: str, fold: int) -> list[dict]:
    """Epoch records of one fold (metrics.jsonl), oldest first; empty when not trained yet."""
    try:
        text = store.get_text(run_key(run_id, f"fold-{fold}/metrics.jsonl"))
    except ObjectNotFound:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _numeric(record: dict, needle: str) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in record.items()
        if needle in k and k.startswith(("train_", "val_")) and isinstance(v, int | float)
    }


def fold_row(fold: int, done: dict | None, history: Sequence[dict], fold_map: float | None) -> dict:
    """One row of the fold table: epochs, best epoch, its validation losses, and mAP."""
    done = done or {}
    best_epoch = done.get("best_epoch")
    at_best = next((r for r in history if r.get("epoch") == best_epoch), {})
    last = history[-1] if history else {}
    return {
        "fold": fold,
        "epochs": done.get("epochs", len(history)),
        "best_epoch": best_epoch,
        "best_val_map": done.get("best_val_map"),
        "last_val_map": last.get("val_map"),
        "val_box_loss": at_best.get("val_box_loss"),
        "val_cls_loss": at_best.get("val_cls_loss"),
        "last_train_loss": _total(last, "train_"),
        "last_val_loss": _total(last, "val_"),
        "oof_map": fold_map,
        "weights": _weights_cell(done.get("model_info")),
    }


def _total(record: dict, prefix: str) -> float | None:
    parts = [record.get(f"{prefix}cls_loss"), record.get(f"{prefix}box_loss")]
    return None if None in parts else float(sum(parts))


def plot_curves(histories: dict[int, Sequence[dict]]) -> bytes:
    """Loss and mAP per epoch, one line per fold and quantity."""
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(11, 4))
    for fold, history in sorted(histories.items()):
        epochs = [r.get("epoch", i) for i, r in enumerate(history)]
        for needle, ax in (("loss", ax_loss), ("map", ax_map)):
            keys = sorted({k for r in history for k in _numeric(r, needle)})
            for key in keys:
                points = [(e, r[key]) for e, r in zip(epochs, history, strict=True) if key in r]
                xs, ys = zip(*points, strict=True) if points else ((), ())
                ax.plot(xs, ys, marker="o", label=f"fold {fold} {key}")
    for ax, title in ((ax_loss, "loss"), (ax_map, "mAP")):
        ax.set_xlabel("epoch (from 0)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _png(fig)


def predictions(oof: pd.DataFrame) -> dict[str, tuple]:
    """(boxes xywh, scores) per patient from oof_predictions.csv rows, keeping every patient."""
    result: dict[str, tuple] = {}
    for pid, group in oof.groupby("patientId"):
        kept = group.dropna(subset=["x"])
        result[pid] = (
            kept[["x", "y", "width", "height"]].to_numpy(float),
            kept["score"].to_numpy(),
        )
    return result


def plot_threshold_curve(curve: Curve, chosen: float | None) -> bytes:
    """evaluate's curve: OOF mAP at each score threshold (tuned box limit and shrink)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    if curve:
        xs = [t for t, _ in curve]
        ax.plot(xs, [math.nan if m is None else m for _, m in curve], marker=".")
    if chosen is not None:
        ax.axvline(chosen, color="tab:red", linestyle="--", label=f"chosen {chosen:.2f}")
        ax.legend()
    ax.set_xlabel("score threshold")
    ax.set_ylabel("OOF mAP")
    ax.set_title("mAP against score threshold")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_validation_grid(
    panels: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]],
) -> bytes:
    """Images with true (green) and predicted (red, with score) boxes, xywh in image px."""
    n = max(1, len(panels))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image, gt, boxes, scores, title) in zip(axes.ravel(), panels, strict=False):
        ax.imshow(image, cmap="gray")
        for x, y, w, h in gt:
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="lime", linewidth=1.5))
        for (x, y, w, h), score in zip(boxes, scores, strict=True):
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="red", linewidth=1))
            ax.text(x, y, f"{score:.2f}", color="red", fontsize=6, va="bottom")
        ax.set_title(title, fontsize=7)
    return _png(fig)


def validation_panels(
    cache: PreparedCache,
    oof: pd.DataFrame,
    gt: dict[str, np.ndarray],
    post: PostprocessConfig,
    limit: int = 8,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]]:
    """Validation images from the prepared cache, positives first, boxes scaled to cache px;
    predictions as the submission would have them (tuned threshold, box limit, shrink)."""
    meta = cache.metadata[cache.metadata["split"] == "train"].set_index("patientId")
    opacity = oof.groupby("patientId")["opacity"].first() if "opacity" in oof else {}
    preds = {
        pid: postprocess.apply(*pred, post, opacity.get(pid))
        for pid, pred in predictions(oof).items()
    }
    chosen = sorted(preds, key=lambda pid: (len(gt.get(pid, ())) == 0, pid))[:limit]
    images = cache.images("train")
    fold_of = oof.groupby("patientId")["fold"].first()
    panels = []
    for pid, row in zip(chosen, cache.rows(chosen, "train"), strict=True):
        size = cache.image_size
        scale = np.array([size / meta.at[pid, "cols"], size / meta.at[pid, "rows"]] * 2)
        boxes, scores = preds[pid]
        title = f"{pid[:12]} fold {int(fold_of[pid])}"
        panels.append((np.asarray(images[row]), gt[pid] * scale, boxes * scale, scores, title))
    return panels


def markdown_table(rows: Sequence[dict]) -> str:
    if not rows:
        return "_no folds_\n"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def render_markdown(
    run_id: str,
    config: dict,
    evaluation: dict,
    fold_rows: Sequence[dict],
    decision: Decision | None,
    plots: Sequence[str],
    plot_link: Callable[[str], str] = lambda name: f"plots/{name}",
    prediction: dict | None = None,
    card_link: str | None = None,
    comparison: Comparison | None = None,
) -> str:
    """report.md; by default plots are linked relative to runs/<id>/, as stored.
    `prediction`: {"submission": url, "quarantined": [{patientId, key, reason}]} or
    {"error": message} when predicting the test images failed; `comparison`: this run
    against the champion before it, shown in the champion section."""
    oof_map = evaluation.get("oof_map")
    parts = [
        f"# Run {run_id}\n",
        *_headline(evaluation),
        f"- preset: `{config.get('preset')}`, folds: {len(fold_rows)}"
        + (f"; model card: [{CARD_NAME}]({card_link})" if card_link else "")
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
    evaluation: dict,
    folds: Sequence[int],
    decision: Decision | None,
    plot_link: Callable[[str], str] | None = None,
    prediction: dict | None = None,
) -> Report:
    """Plots and report.md for a run; `plot_link(store key)` makes the linked variant (plots,
    and the model card when the run has one)."""
    prefix = run_key(run_id, "").rstrip("/")
    config = store.get_json(f"{prefix}/config.json")
    histories = {fold: fold_history(store, run_id, fold) for fold in folds}
    per_fold = _per_fold_maps(evaluation)
    rows = flag_weak_folds(
        [fold_row(f, _done(store, run_id, f), histories[f], per_fold.get(f)) for f in folds]
    )

    plots: dict[str, bytes] = {"curves.png": plot_curves(histories)}
    curve = [(p["threshold"], p["map"]) for p in evaluation.get("curve", [])]
    threshold = evaluation.get("threshold")
    plots["map-vs-threshold.png"] = plot_threshold_curve(curve, threshold)
    oof = read_oof(store, run_id)
    cache = PreparedCache(store, config["dataset"], int(config["image_size"]))
    gt, _ = read_truth(store, cache.dataset, cache.image_size, oof)
    tuned = evaluation.get("postprocess")
    post = (
        PostprocessConfig.from_dict(tuned)
        if tuned
        else PostprocessConfig(score_threshold=float(threshold or 0.0))
    )
    plots["validation-grid.png"] = plot_validation_grid(validation_panels(cache, oof, gt, post))
    plot_keys = []
    for name, png in plots.items():
        key = f"{prefix}/plots/{name}"
        store.put_bytes(key, png)
        plot_keys.append(key)

    card = f"{prefix}/{CARD_NAME}" if store.exists(f"{prefix}/{CARD_NAME}") else None
    extras = {"prediction": prediction, "comparison": _comparison(store, run_id, decision)}
    markdown = render_markdown(
        run_id, config, evaluation, rows, decision, list(plots),
        card_link=card and CARD_NAME, **extras,
    )  # fmt: skip
    linked = markdown
    if plot_link is not None:
        linked = render_markdown(
            run_id, config, evaluation, rows, decision, list(plots),
            plot_link=lambda name: plot_link(f"{prefix}/plots/{name}"),
            card_link=card and plot_link(card), **extras,
        )  # fmt: skip
    key = f"{prefix}/report.md"
    store.put_text(key, markdown)
    return Report(markdown, linked, key, plot_keys, rows)


def _comparison(store: ObjectStore, run_id: str, decision: Decision | None) -> Comparison | None:
    """This run against the champion it was measured against (None: no champion before, or
    its run is gone from the store)."""
    if decision is None or decision.previous is None:
        return None
    try:
        return compare_runs(store, run_id, decision.previous.run_id)
    except InputError:
        return None


def _submission_section(prediction: dict) -> list[str]:
    """The test-set submission: where it is and which images got no prediction, or why not."""
    parts = ["## Submission\n"]
    if prediction.get("error"):
        parts.append(f"**Predicting the test images failed**: {prediction['error']}\n")
        return parts
    parts.append(f"Submission: {prediction.get('submission')}\n")
    quarantined = prediction.get("quarantined") or []
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


def _headline(evaluation: dict) -> list[str]:
    """The honest score first, the optimistic one named as such."""
    se = evaluation.get("oof_map_se")
    lines = [
        f"- OOF mAP: **{_cell(evaluation.get('oof_map'))}**"
        + (f" (standard error {se:.4f})" if se is not None else "")
        + f", post-processing {evaluation.get('tuning', 'tuned on all folds')}",
        f"- in-sample OOF mAP (post-processing tuned on the very predictions it scores, "
        f"optimistic): {_cell(evaluation.get('oof_map_in_sample'))}",
        f"- submission: score threshold **{_cell(evaluation.get('threshold'))}**, max boxes "
        f"{_cell(evaluation.get('max_boxes'))}, shrink {_cell(evaluation.get('shrink'))}, "
        f"image gate {_cell((evaluation.get('postprocess') or {}).get('gate'))} "
        "(tuned on all folds)",
    ]
    return lines


def _scoring_notes(evaluation: dict, rows: Sequence[dict]) -> list[str]:
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


def _weights_cell(info: dict | None) -> str | None:
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


def _per_fold_maps(evaluation: dict) -> dict[int, float]:
    rows = evaluation.get("per_fold") or []
    return {int(r["fold"]): r["map"] for r in rows if r.get("map") is not None}


def _done(store: ObjectStore, run_id: str, fold: int) -> dict | None:
    try:
        return store.get_json(run_key(run_id, f"fold-{fold}/done.json"))
    except ObjectNotFound:
        return None


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
