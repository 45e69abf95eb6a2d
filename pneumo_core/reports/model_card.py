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

import pandas as pd

from pneumo_core.layout import LABELS, QUARANTINE, SUMMARY, prepared_prefix
from pneumo_core.reports.markdown import cell
from pneumo_core.runs.records import Evaluation, FoldResult
from pneumo_core.runs.run import Run
from pneumo_core.storage.base import ObjectStore

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


def _stored_csv(store: ObjectStore, key: str) -> pd.DataFrame | None:
    text = store.get_text_or_none(key)
    return None if text is None else pd.read_csv(io.StringIO(text))


def data_section(store: ObjectStore, config: dict) -> list[str]:
    prefix = prepared_prefix(config["dataset"], config["image_size"])
    summary = store.get_json_or_none(prefix + SUMMARY) or {}
    labels = _stored_csv(store, prefix + LABELS)
    quarantine = _stored_csv(store, prefix + QUARANTINE)
    lines = [
        "## Data\n",
        f"- dataset `{config['dataset']}` ({COMPETITION_URL}); manifest digest "
        f"`{summary.get('manifest_digest', '–')}` (sha256 over every ingested file)",
        f"- images: {cell(summary.get('n_train'))} training, {cell(summary.get('n_test'))} "
        f"test, cached at {config['image_size']} px; {cell(summary.get('n_boxes'))} boxes",
        f"- labelled patients without an image: {cell(summary.get('missing_images'))}; "
        f"training images without a label row: {cell(summary.get('unlabelled_images'))}",
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
            lines.append(f"\n… and {n_quarantined - len(shown)} more in {prefix}{QUARANTINE}")
        lines.append("")
    return lines


def model_section(config: dict, config_hash: str, dones: Sequence[FoldResult]) -> list[str]:
    infos = [d.model_info for d in dones]
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


def training_section(dones: Sequence[FoldResult], seconds: dict[int, float]) -> list[str]:
    lines = ["## Training\n"]
    if not dones:
        return [*lines, "No fold has finished.\n"]
    lines.append("| fold | epochs | best epoch | best val mAP | train images | device | hours |")
    lines.append("|---|---|---|---|---|---|---|")
    for d in dones:
        hours = seconds.get(d.fold)
        lines.append(
            f"| {d.fold} | {cell(d.epochs)} | {cell(d.best_epoch)} | "
            f"{cell(d.best_val_map)} | {cell(d.n_train)} | "
            f"{cell(d.device)} | {cell(None if hours is None else hours / 3600, 2)} |"
        )
    total = sum(seconds.values())
    lines.append(
        f"\nTraining time in all: {total / 3600:.2f} h (sum of the epochs' training "
        "seconds in metrics.jsonl, validation excluded).\n"
    )
    return lines


def evaluation_section(evaluation: Evaluation | None) -> list[str]:
    lines = ["## Scores (out of fold, competition metric)\n"]
    if evaluation is None:
        return [*lines, "Not evaluated yet.\n"]
    se = evaluation.oof_map_se
    lines += [
        f"- **honest OOF mAP: {cell(evaluation.oof_map)}**"
        + (f" ± {se:.4f} (standard error)" if se is not None else "")
        + ": every image scored by models that never saw it, with post-processing "
        f"{evaluation.tuning or 'tuned on the out-of-fold predictions'}",
        f"- in-sample OOF mAP: {cell(evaluation.oof_map_in_sample)} (post-processing "
        "tuned on the very predictions it scores: optimistic)",
        f"- images: {cell(evaluation.images)}, scored: {cell(evaluation.images_scored)}",
    ]
    for row in evaluation.per_fold:
        lines.append(f"- fold {row.fold}: mAP {cell(row.map)}")
    has_box = evaluation.has_box
    if has_box:
        lines.append(
            f"- finds an opacity at all (image level): precision "
            f"{cell(has_box.get('precision'))}, recall {cell(has_box.get('recall'))}"
        )
    post = evaluation.postprocess
    lines += [
        "\nPost-processing used for the submission:\n",
        "```json\n" + json.dumps(post, indent=2, sort_keys=True) + "\n```\n",
    ]
    return lines


def render_model_card(store: ObjectStore, run_id: str) -> str:
    run = Run(store, run_id)
    run_config = run.config()  # InputError for an unknown run
    config, config_hash = run_config.to_dict(), run_config.config_hash()
    dones = run.fold_results(range(run_config.n_folds))
    seconds = {
        d.fold: sum(float(r.get("train_seconds") or 0) for r in run.fold_history(d.fold))
        for d in dones
    }
    parts = [
        f"# Model card: run {run_id}\n",
        "## Intended use\n",
        INTENDED_USE + "\n",
        *data_section(store, config),
        *model_section(config, config_hash, dones),
        *training_section(dones, seconds),
        *evaluation_section(run.evaluation()),
        "## Known limitations\n",
        LIMITATIONS + "\n",
    ]
    return "\n".join(parts)


def write_model_card(store: ObjectStore, run_id: str) -> str:
    """Store runs/<id>/model-card.md; its key."""
    key = Run(store, run_id).card_key
    store.put_text(key, render_model_card(store, run_id))
    return key
