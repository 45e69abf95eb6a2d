"""Where everything lives in the object store: every key of every stored object is built here.

```
raw/<dataset>/<member>               the Kaggle archive, byte for byte, and manifest.json
prepared/<dataset>/<size>/<table>    decoded images, tables, folds, quarantine, summary.json
runs/<run_id>/<file>                 a run: config, record, evaluation, report, submission, ...
runs/<run_id>/fold-<k>/<file>        a fold: checkpoints, metrics, out-of-fold predictions, done
models/champion.json                 the best run so far
models/weights/<file>                pretrained backbone weights, verified
locks/<name>.json                    leases (one writer of a group of objects at a time)
```

Other modules name a stored object through these functions and constants only, so the
layout can be read (and changed) in one place. The architecture test holds that rule.
"""

from __future__ import annotations

import re

from pneumo_core.errors import InputError

# --- the competition archive (raw/<dataset>/) ---------------------------------------------------
TRAIN_LABELS = "stage_2_train_labels.csv"
CLASS_INFO = "stage_2_detailed_class_info.csv"
SAMPLE_SUBMISSION = "stage_2_sample_submission.csv"
TRAIN_IMAGES = "stage_2_train_images"
TEST_IMAGES = "stage_2_test_images"
IMAGE_FOLDERS = {"train": TRAIN_IMAGES, "test": TEST_IMAGES}
ARCHIVE_MEMBERS = (TRAIN_LABELS, CLASS_INFO, SAMPLE_SUBMISSION, TRAIN_IMAGES, TEST_IMAGES)
MANIFEST = "manifest.json"


def raw_prefix(dataset: str) -> str:
    return f"raw/{dataset}/"


def raw_key(dataset: str, member: str) -> str:
    """A member of the dataset's archive, by its path in the archive."""
    return raw_prefix(dataset) + member


def manifest_key(dataset: str) -> str:
    return raw_key(dataset, MANIFEST)


# --- the prepared cache (prepared/<dataset>/<size>/) ---------------------------------------------
METADATA = "metadata.csv"
LABELS = "labels.csv"
BOXES = "boxes.csv"
FOLDS = "folds.csv"
QUARANTINE = "quarantine.csv"
SUMMARY = "summary.json"


def images_name(split: str) -> str:
    """The uint8 [N, S, S] array of a split's images."""
    return f"images-{split}.npy"


def prepared_prefix(dataset: str, image_size: int) -> str:
    return f"prepared/{dataset}/{image_size}/"


def prepared_key(dataset: str, image_size: int, name: str) -> str:
    return prepared_prefix(dataset, image_size) + name


# --- runs (runs/<run_id>/) -----------------------------------------------------------------------
RUNS = "runs/"
CONFIG = "config.json"
RECORD = "run.json"
EVALUATION = "evaluation.json"
REPORT = "report.md"
MODEL_CARD = "model-card.md"
SUBMISSION = "submission.csv"
KAGGLE_SUBMISSIONS = "kaggle-submissions.jsonl"
PLOTS = "plots"
PREDICTIONS = "predictions"  # predictions for images outside the test set
# in each fold's folder
DONE = "done.json"
METRICS = "metrics.jsonl"
OOF_PREDICTIONS = "oof_predictions.csv"
CHECKPOINT_LAST = "checkpoint-last.pt"
CHECKPOINT_BEST = "checkpoint-best.pt"

RUN_ID_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FOLD_FOLDER = re.compile(r"^fold-(\d+)/")


def check_run_id(run_id: object) -> str:
    """The run id unchanged, or InputError saying what a run id may be: it names a folder of
    the store, so a bad one fails in one line before any work."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise InputError(f"run id {run_id!r}: use {RUN_ID_RULE} (no '..')")
    return run_id


def run_prefix(run_id: str) -> str:
    return f"{RUNS}{check_run_id(run_id)}/"


def run_key(run_id: str, name: str) -> str:
    return run_prefix(run_id) + name


def fold_name(fold: int, name: str) -> str:
    """A fold's file, relative to its run's folder."""
    return f"fold-{fold}/{name}"


def fold_key(run_id: str, fold: int, name: str) -> str:
    return run_key(run_id, fold_name(fold, name))


def fold_of(name: str) -> int | None:
    """The fold of a name relative to a run's folder (`fold-2/done.json` -> 2), else None."""
    match = _FOLD_FOLDER.match(name)
    return int(match.group(1)) if match else None


def plot_key(run_id: str, name: str) -> str:
    return run_key(run_id, f"{PLOTS}/{name}")


# --- models and locks ----------------------------------------------------------------------------
CHAMPION_KEY = "models/champion.json"
WEIGHTS_PREFIX = "models/weights/"


def weights_key(file_name: str) -> str:
    return WEIGHTS_PREFIX + file_name


def lock_key(name: str) -> str:
    return f"locks/{name}.json"


def ingest_lock_key(dataset: str) -> str:
    """One ingest per dataset at a time: the manifest describes exactly what is stored."""
    return lock_key(f"ingest-{dataset}")


# --- Prefect's task results, beside the store's own objects --------------------------------------
PREFECT_RESULTS = "prefect-results"
