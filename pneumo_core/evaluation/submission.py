"""Kaggle submission files: `patientId,PredictionString`, one row per test image.

PredictionString is `conf x y w h conf x y w h ...` in original pixels, empty for no box.
Rows are numbered as lines of the file (the header is row 1), as in labels.py.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumo_core.boxes import Detections
from pneumo_core.errors import InputError

if TYPE_CHECKING:
    from pneumo_core.storage.base import ObjectStore

HEADER = ["patientId", "PredictionString"]
IMAGE_SIZE = 1024


def format_prediction_string(boxes_xywh: np.ndarray, scores: np.ndarray) -> str:
    """Most confident first; confidence with 4 decimals, box values rounded to 0.1 px."""
    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise InputError(f"{len(boxes)} boxes but {len(scores)} scores")
    if not np.isfinite(boxes).all() or ((scores < 0) | (scores > 1) | np.isnan(scores)).any():
        raise InputError("scores must lie in [0, 1] and boxes must be finite")
    parts = []
    for j in np.argsort(-scores, kind="stable"):
        parts.append(f"{scores[j]:.4f}")
        parts.extend(_number(v) for v in boxes[j])
    return " ".join(parts)


def parse_prediction_string(text: str) -> Detections:
    """Boxes [N, 4] and scores [N]; an empty string is no box. Values are checked by
    `check_submission`; this only needs groups of five numbers."""
    tokens = (text or "").split()
    if len(tokens) % 5:
        raise InputError(f"PredictionString has {len(tokens)} numbers, not groups of five")
    try:
        values = np.array([float(t) for t in tokens], dtype=np.float64).reshape(-1, 5)
    except ValueError as exc:
        raise InputError(f"PredictionString has a value that is not a number: {exc}") from exc
    return values[:, 1:], values[:, 0]


def write_submission(
    rows: Mapping[str, Detections], out: str | Path, store: ObjectStore | None = None
) -> str:
    """Write atomically to a local path, or to key `out` in `store`; returns where it went."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    for pid, (boxes, scores) in rows.items():
        writer.writerow([pid, format_prediction_string(boxes, scores)])
    text = buffer.getvalue()
    if store is not None:
        store.put_text(str(out), text)
        return store.url(str(out))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(path)


def read_submission(path: str | Path, bounds: bool = True) -> dict[str, Detections]:
    """Predictions per patient; raises InputError with every problem `check_submission` finds
    (`bounds=False`: a box past the image border is read as given)."""
    problems = check_submission(path, bounds=bounds)
    if problems:
        shown = "\n".join(problems[:10])
        more = f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise InputError(f"{path}: invalid submission:\n{shown}{more}")
    _, rows = _read(path)
    return {fields[0].strip(): parse_prediction_string(fields[1]) for _, fields in rows}


def check_submission(
    path: str | Path, sample: str | Path | None = None, bounds: bool = True
) -> list[str]:
    """Every problem with the file, each naming its row; empty when valid.

    With `sample` (e.g. stage_2_sample_submission.csv), each of its patientIds must appear
    exactly once and no other. `bounds=False` lets a box run past the image border.
    """
    try:
        header, rows = _read(path)
    except InputError as exc:  # like every other finding, without the file's name in front
        return [str(exc).removeprefix(f"{path}: ")]
    problems: list[str] = []
    if header != HEADER:
        problems.append(f"row 1: header must be {','.join(HEADER)}, got {','.join(header)}")
    first_row: dict[str, int] = {}
    for row, fields in rows:
        if len(fields) != 2:
            problems.append(
                f"row {row}: expected 2 fields (patientId,PredictionString), got {len(fields)}"
            )
            continue
        pid = fields[0].strip()
        if not pid:
            problems.append(f"row {row}: empty patientId")
        elif pid in first_row:
            problems.append(f"row {row}: patientId {pid} already on row {first_row[pid]}")
        else:
            first_row[pid] = row
        problems.extend(f"row {row}: {p}" for p in _prediction_problems(fields[1], bounds))
    if sample is not None:
        expected = _sample_ids(sample)
        wanted = set(expected)
        problems.extend(
            f"row {row}: patientId {pid} is not in the sample {sample}"
            for pid, row in first_row.items()
            if pid not in wanted
        )
        problems.extend(
            f"patientId {pid} from the sample is missing"
            for pid in expected
            if pid not in first_row
        )
    return problems


def _prediction_problems(text: str, bounds: bool = True) -> list[str]:
    tokens = text.split()
    if len(tokens) % 5:
        return [f"PredictionString has {len(tokens)} numbers, not groups of five"]
    problems = []
    for g in range(len(tokens) // 5):
        group = tokens[5 * g : 5 * g + 5]
        try:
            conf, x, y, w, h = (float(t) for t in group)
        except ValueError:
            problems.append(f"box {g + 1}: {' '.join(group)!r} is not five numbers")
            continue
        if not all(math.isfinite(v) for v in (conf, x, y, w, h)):
            problems.append(f"box {g + 1}: {' '.join(group)!r} is not finite")
        elif not 0 <= conf <= 1:
            problems.append(f"box {g + 1}: confidence {conf:g} is outside [0, 1]")
        elif w <= 0 or h <= 0:
            problems.append(f"box {g + 1}: width and height must be positive, got {w:g} {h:g}")
        elif bounds and _outside(x, y, w, h):
            problems.append(
                f"box {g + 1}: x={x:g} y={y:g} w={w:g} h={h:g} is outside the "
                f"{IMAGE_SIZE}x{IMAGE_SIZE} image"
            )
    return problems


def _outside(x: float, y: float, w: float, h: float) -> bool:
    return x < 0 or y < 0 or x + w > IMAGE_SIZE or y + h > IMAGE_SIZE


def _sample_ids(sample: str | Path) -> list[str]:
    """patientIds of a sample submission (its own problems are errors, not findings)."""
    header, rows = _read(sample)
    if not header or header[0] != HEADER[0]:
        raise InputError(f"{sample} row 1: the first column must be {HEADER[0]}")
    ids = [fields[0].strip() for _, fields in rows if fields]
    if len(set(ids)) != len(ids):
        raise InputError(f"{sample}: a patientId appears more than once")
    return ids


def _read(path: str | Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (row number, fields) of every further row."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:  # a BOM is fine
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise InputError(f"{path}: empty file (expected header {','.join(HEADER)})")
            return header, [(reader.line_num, fields) for fields in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from exc


def _number(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def score_submission(
    labels_csv: str | Path, submission_csv: str | Path, only_present: bool = False
) -> dict:
    """Score a submission against a train labels file (the labels file alone suffices).

    Scores what Kaggle would: every labelled patient, one missing from the submission counting
    as one with no prediction (with a warning: Kaggle refuses an incomplete file), unless
    `only_present` scores the submission's patients alone on purpose. A box past the image
    border is scored as given, with a warning. A submission patient without a labels row is
    an error. `warnings` lists what the caller should show.
    """
    from pneumo_core.data.labels import load_targets
    from pneumo_core.evaluation.metric import map_score

    predictions = read_submission(submission_csv, bounds=False)
    truth = load_targets(labels_csv).boxes_by_patient()
    unknown = [pid for pid in predictions if pid not in truth]
    if unknown:
        raise InputError(
            f"{submission_csv}: {len(unknown)} patientId(s) are not in {labels_csv}, "
            f"e.g. {unknown[0]}"
        )
    warnings = []
    missing = len(truth) - len(predictions)
    if missing and not only_present:
        warnings.append(
            f"{submission_csv}: {missing} labelled image(s) of {labels_csv} are missing and "
            "scored as images with no prediction; Kaggle would refuse an incomplete submission "
            "(--only-present scores the submission's images alone)"
        )
    outside = sum(_outside(*box) for boxes, _ in predictions.values() for box in boxes.tolist())
    if outside:
        warnings.append(
            f"{submission_csv}: {outside} box(es) run past the {IMAGE_SIZE}x{IMAGE_SIZE} image "
            "border; scored as given"
        )
    scored_ids = list(predictions) if only_present else list(truth)
    value, scored = map_score({pid: truth[pid] for pid in scored_ids}, predictions)
    return {
        "map": None if math.isnan(value) else value,
        "images_scored": scored,
        "images_in_submission": len(predictions),
        "labelled_images_not_in_submission": missing,
        "only_present": only_present,
        "warnings": warnings,
    }
