"""A run's plots as PNG bytes: training curves, mAP against the score threshold, and
validation images with their true and predicted boxes. Headless (Agg): workers have no display.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless workers: never open a display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from pneumo_core.data.dataset import PreparedCache
from pneumo_core.evaluation import postprocess
from pneumo_core.evaluation.postprocess import PostprocessConfig

Curve = Sequence[tuple[float, float | None]]  # (score threshold, mAP or None: nothing scored)


def _numeric(record: dict, needle: str) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in record.items()
        if needle in k and k.startswith(("train_", "val_")) and isinstance(v, int | float)
    }


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


def _png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
