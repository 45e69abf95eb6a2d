"""A run's model card (runs/<id>/model-card.md): what the model was trained on, from what,
how well it scores, where it fails, and what it is for.

Built from stored records only (config, prepared summary, labels, quarantine, done.json,
metrics, evaluation), so any finished run can get one, and the figures in it are the ones
the run itself stored, not retyped.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from pneumo_core.errors import ObjectNotFound
from pneumo_core.runs.ids import load_run_config, run_key
from pneumo_core.storage.base import ObjectStore

CARD_NAME = "model-card.md"
COMPETITION_URL = "https://www.kaggle.com/competitions/rsna-pneumonia-detection-challenge"

INTENDED_USE = """\
**Research and the Kaggle competition only.** This model is **not a medical device** and
has not been validated clinically: do not use it for diagnosis, triage or any decision about
a patient. Its boxes are guesses scored against one set of reader annotations."""

LIMITATIONS = """\
- Trained and scored on the RSNA Pneumonia Detection Challenge images (frontal PA/AP
  radiographs of the NIH Clinical Center's ChestX-ray14 set) with one group of radiologists'
  boxes; other hospitals, scanners, populations or lateral views are outside what it has seen.
- The competition metric rewards boxes that overlap the readers' (IoU 0.40–0.75); it says
  nothing about sensitivity for small or faint opacities, which the readers themselves
  disagreed on.
- Images are decoded to 8 bits and resized to the configuration's `image_size`; detail
  finer than that size allows is lost.
- The score threshold, box limit and shrink factor were tuned on the out-of-fold predictions
  of this very training set (see *honest* vs *in-sample* figures below)."""


def _stored_json(store: ObjectStore, key: str) -> Any | None:
    try:
        return store.get_json(key)
    except ObjectNotFound:
        return None


def _stored_csv(store: ObjectStore, key: str) -> pd.DataFrame | None:
    try:
        return pd.read_csv(io.StringIO(store.get_text(key)))
    except ObjectNotFound:
        return None


def _cell(value: object, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def data_section(store: ObjectStore, config: dict) -> list[str]:
    prefix = f"prepared/{config['dataset']}/{config['image_size']}/"
    summary = _stored_json(store, prefix + "summary.json") or {}
    labels = _stored_csv(store, prefix + "labels.csv")
    quarantine = _stored_csv(store, prefix + "quarantine.csv")
    lines = [
        "## Data\n",
        f"- dataset `{config['dataset']}` ({COMPETITION_URL}); manifest digest "
        f"`{summary.get('manifest_digest', '–')}` (sha256 over every ingested file)",
        f"- images: {_cell(summary.get('n_train'))} training, {_cell(summary.get('n_test'))} "
        f"test, cached at {config['image_size']} px; {_cell(summary.get('n_boxes'))} boxes",
        f"- labelled patients without an image: {_cell(summary.get('missing_images'))}; "
        f"training images without a label row: {_cell(summary.get('unlabelled_images'))}",
    ]
    if labels is not None and len(labels):
        classes = labels["class"].value_counts()
        balance = ", ".join(f"{name} {n} ({n / len(labels):.1%})" for name, n in classes.items())
        positives = int(labels["target"].sum())
        lines.append(
            f"- class balance ({len(labels)} labelled): {balance}; with a box: {positives} "
            f"({positives / len(labels):.1%})"
        )
    n_quarantined = 0 if quarantine is None else len(quarantine)
    lines.append(f"- quarantined (unreadable, left out): {n_quarantined}\n")
    if n_quarantined:
        shown = quarantine.head(20)
        lines.append("| patientId | split | reason |\n|---|---|---|")
        lines.extend(f"| {r.patientId} | {r.split} | {r.reason} |" for r in shown.itertuples())
        if n_quarantined > len(shown):
            lines.append(f"\n… and {n_quarantined - len(shown)} more in {prefix}quarantine.csv")
        lines.append("")
    return lines


def model_section(config: dict, config_hash: str, dones: Sequence[dict]) -> list[str]:
    infos = [d.get("model_info") or {} for d in dones]
    weights = sorted(
        {(i.get("weights"), i.get("weights_sha256"), i.get("weights_origin")) for i in infos}
    )
    lines = [
        "## Model\n",
        f"- RetinaNet, `{config.get('backbone')}` FPN backbone, one model per fold "
        f"({config.get('n_folds')} folds), predictions averaged over folds"
        + (" and a horizontal flip" if config.get("tta_hflip") else ""),
        f"- configuration hash `{config_hash}` (runs/<id>/config.json, preset "
        f"`{config.get('preset')}`)",
    ]
    if not dones:
        lines.append("- weights: no fold finished yet")
    for name, sha, origin in weights:
        if name is None:
            lines.append("- starting weights: none (random initialisation)")
        else:
            lines.append(
                f"- starting weights: `{name}`, sha256 `{sha or 'not recorded'}`"
                + (f", from {origin}" if origin else "")
            )
    lines.append("")
    return lines


def training_section(dones: Sequence[dict], seconds: dict[int, float]) -> list[str]:
    lines = ["## Training\n"]
    if not dones:
        return [*lines, "No fold has finished.\n"]
    lines.append("| fold | epochs | best epoch | best val mAP | train images | device | hours |")
    lines.append("|---|---|---|---|---|---|---|")
    for d in dones:
        fold = int(d.get("fold", -1))
        hours = seconds.get(fold)
        lines.append(
            f"| {fold} | {_cell(d.get('epochs'))} | {_cell(d.get('best_epoch'))} | "
            f"{_cell(d.get('best_val_map'))} | {_cell(d.get('n_train'))} | "
            f"{_cell(d.get('device'))} | {_cell(None if hours is None else hours / 3600, 2)} |"
        )
    total = sum(seconds.values())
    lines.append(
        f"\nTraining time in all: {total / 3600:.2f} h (sum of the epochs' training "
        "seconds in metrics.jsonl, validation excluded).\n"
    )
    return lines


def evaluation_section(evaluation: dict | None) -> list[str]:
    lines = ["## Scores (out of fold, competition metric)\n"]
    if not evaluation:
        return [*lines, "Not evaluated yet.\n"]
    se = evaluation.get("oof_map_se")
    lines += [
        f"- **honest OOF mAP: {_cell(evaluation.get('oof_map'))}**"
        + (f" ± {se:.4f} (standard error)" if se is not None else "")
        + ": every image scored by models that never saw it, with post-processing "
        f"{evaluation.get('tuning', 'tuned on the out-of-fold predictions')}",
        f"- in-sample OOF mAP: {_cell(evaluation.get('oof_map_in_sample'))} (post-processing "
        "tuned on the very predictions it scores: optimistic)",
        f"- images: {_cell(evaluation.get('images'))}, scored: "
        f"{_cell(evaluation.get('images_scored'))}",
    ]
    for row in evaluation.get("per_fold") or []:
        lines.append(f"- fold {row.get('fold')}: mAP {_cell(row.get('map'))}")
    has_box = evaluation.get("has_box") or {}
    if has_box:
        lines.append(
            f"- finds an opacity at all (image level): precision "
            f"{_cell(has_box.get('precision'))}, recall {_cell(has_box.get('recall'))}"
        )
    post = evaluation.get("postprocess") or {}
    lines += [
        "\nPost-processing used for the submission:\n",
        "```json\n" + json.dumps(post, indent=2, sort_keys=True) + "\n```\n",
    ]
    return lines


def render_model_card(store: ObjectStore, run_id: str) -> str:
    from pneumo_core.reports.report import fold_history

    run_config = load_run_config(store, run_id)  # InputError for an unknown run
    config, config_hash = run_config.to_dict(), run_config.config_hash()
    folds = range(int(config.get("n_folds") or 0))
    dones = [d for k in folds if (d := _stored_json(store, run_key(run_id, f"fold-{k}/done.json")))]
    seconds = {
        int(d["fold"]): sum(
            float(r.get("train_seconds") or 0) for r in fold_history(store, run_id, int(d["fold"]))
        )
        for d in dones
    }
    parts = [
        f"# Model card: run {run_id}\n",
        "## Intended use\n",
        INTENDED_USE + "\n",
        *data_section(store, config),
        *model_section(config, config_hash, dones),
        *training_section(dones, seconds),
        *evaluation_section(_stored_json(store, run_key(run_id, "evaluation.json"))),
        "## Known limitations\n",
        LIMITATIONS + "\n",
    ]
    return "\n".join(parts)


def write_model_card(store: ObjectStore, run_id: str) -> str:
    """Store runs/<id>/model-card.md; its key."""
    key = run_key(run_id, CARD_NAME)
    store.put_text(key, render_model_card(store, run_id))
    return key
