"""Competition labels: `stage_2_train_labels.csv` + `stage_2_detailed_class_info.csv`.

The labels file has one row per box (empty box fields when Target is 0) and the class-info
file repeats the patient's class once per labels row, so both are validated row by row and
folded into one row per patient. Rows are numbered as lines of the file: the header is row 1,
so the first data row is row 2 (what an editor or `sed -n 2p` shows).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from pneumo_core.errors import InputError

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("Lung Opacity", "No Lung Opacity / Not Normal", "Normal")
POSITIVE_CLASS = "Lung Opacity"
LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
CLASS_INFO_COLUMNS = ("patientId", "class")
BOX_COLUMNS = ("x", "y", "width", "height")
MAX_MESSAGES = 10

Source = str | Path | IO[str]


@dataclass(frozen=True)
class Labels:
    """One row per patient (patientId, class, target, n_boxes; no class when loaded from the
    labels file alone) and one row per box (patientId, x, y, width, height, original px)."""

    patients: pd.DataFrame
    boxes: pd.DataFrame
    source: str = "<labels>"  # the labels file, for messages
    box_rows: tuple[int, ...] = ()  # the file row of each box (header = row 1)

    def boxes_by_patient(self) -> dict[str, np.ndarray]:
        """Ground truth in the shape the metric wants; every patient present, negatives empty."""
        return group_boxes(self.patients["patientId"], self.boxes)

    def check_inside(self, sizes: pd.DataFrame) -> None:
        """InputError naming each labels row whose box leaves its own image (`sizes`:
        patientId, rows, cols); loading only bounds boxes by the nominal image size."""
        boxes = self.boxes.assign(row=self.box_rows or None)
        boxes = boxes.merge(sizes[["patientId", "rows", "cols"]], on="patientId", how="inner")
        outside = boxes[
            (boxes["x"] + boxes["width"] > boxes["cols"])
            | (boxes["y"] + boxes["height"] > boxes["rows"])
        ]
        _raise(
            [
                f"{self.source} row {r['row']}: box x={r['x']:g} y={r['y']:g} "
                f"w={r['width']:g} h={r['height']:g} is outside the {r['cols']}x{r['rows']} "
                f"image of patient {r['patientId']}"
                for r in outside.sort_values("row").to_dict("records")
            ]
        )


def group_boxes(patient_ids: pd.Series | list[str], boxes: pd.DataFrame) -> dict[str, np.ndarray]:
    """xywh float arrays [N, 4] per patient, in the order of `boxes`; empty for patients without."""
    grouped = {
        str(pid): frame[list(BOX_COLUMNS)].to_numpy(dtype=np.float64)
        for pid, frame in boxes.groupby("patientId", sort=False)
    }
    empty = np.zeros((0, 4), dtype=np.float64)
    return {str(pid): grouped.get(str(pid), empty) for pid in patient_ids}


def load_targets(labels_csv: Source, image_size: int = 1024) -> Labels:
    """Read and validate the labels file alone (enough to score a submission)."""
    name = _name(labels_csv)
    rows, lines = _without_exact_duplicates(_read_csv(labels_csv, name, LABEL_COLUMNS), name)
    errors: list[str] = []
    targets = np.zeros(len(rows), dtype=np.int64)
    values = np.full((len(rows), 4), np.nan)
    for i, row in enumerate(rows.itertuples(index=False)):
        where = f"{name} row {lines[i]}"
        problem = _check_label_row(row, image_size, values[i])
        if problem:
            errors.append(f"{where}: {problem}")
        else:
            targets[i] = int(row.Target)
    _raise(errors)

    frame = pd.DataFrame({"patientId": rows["patientId"].to_numpy(), "target": targets})
    frame["row"] = lines
    per_patient = frame.groupby("patientId", sort=False).agg(
        target=("target", "max"),
        kinds=("target", "nunique"),  # built in, not a Python call per patient: 27,000 of them
        first_row=("row", "first"),
    )
    for pid, info in per_patient[per_patient["kinds"] > 1].iterrows():
        errors.append(f"{name} row {info.first_row}: patient {pid} has both Target 0 and 1 rows")
    _raise(errors)

    positive = targets == 1
    boxes = pd.DataFrame(values[positive], columns=list(BOX_COLUMNS))
    boxes.insert(0, "patientId", rows["patientId"].to_numpy()[positive])
    patients = per_patient.reset_index()[["patientId", "target"]]
    counts = boxes.groupby("patientId", sort=False).size()
    patients["n_boxes"] = patients["patientId"].map(counts).fillna(0).astype(np.int64)
    rows_of_boxes = tuple(int(r) for r in lines[positive])
    return Labels(patients=patients, boxes=boxes, source=name, box_rows=rows_of_boxes)


def load_labels(labels_csv: Source, class_info_csv: Source, image_size: int = 1024) -> Labels:
    """Labels joined with the detailed class info; every inconsistency is an InputError."""
    targets = load_targets(labels_csv, image_size)
    classes = _load_classes(class_info_csv)
    labels_name, info_name = _name(labels_csv), _name(class_info_csv)
    merged = targets.patients.merge(classes, on="patientId", how="left", validate="one_to_one")

    errors = [
        f"{info_name}: patient {pid} from {labels_name} has no class"
        for pid in merged.loc[merged["class"].isna(), "patientId"]
    ]
    extra = classes[~classes["patientId"].isin(targets.patients["patientId"])]
    errors += [
        f"{info_name} row {r['row']}: patient {r['patientId']} is not in {labels_name}"
        for r in extra.to_dict("records")
    ]
    both = merged[merged["class"].notna()]
    disagree = both[(both["class"] == POSITIVE_CLASS) != (both["target"] == 1)]
    for row in disagree.to_dict("records"):
        errors.append(
            f"{info_name} row {row['row']}: patient {row['patientId']} has class "
            f"{row['class']!r} but Target {row['target']} in {labels_name}"
        )
    _raise(errors)

    patients = both[["patientId", "class", "target", "n_boxes"]].reset_index(drop=True)
    patients = patients.astype({"target": np.int64, "n_boxes": np.int64})
    return replace(targets, patients=patients)


def _load_classes(class_info_csv: Source) -> pd.DataFrame:
    """patientId, class, row (first row of the patient); repeated rows must agree."""
    name = _name(class_info_csv)
    rows = _read_csv(class_info_csv, name, CLASS_INFO_COLUMNS)
    rows = rows.assign(row=np.arange(len(rows)) + 2)
    errors = [
        f"{name} row {r['row']}: unknown class {r['class']!r} (expected one of "
        f"{', '.join(CLASSES)})"
        for r in rows[~rows["class"].isin(CLASSES)].to_dict("records")
    ]
    errors += [f"{name} row {row}: empty patientId" for row in rows["row"][rows["patientId"] == ""]]
    _raise(errors)
    first = rows.drop_duplicates("patientId")
    conflicts = rows.merge(first, on="patientId", suffixes=("", "_first"))
    conflicts = conflicts[conflicts["class"] != conflicts["class_first"]]
    for r in conflicts.to_dict("records"):
        errors.append(
            f"{name} row {r['row']}: patient {r['patientId']} has class {r['class']!r} but row "
            f"{r['row_first']} says {r['class_first']!r}"
        )
    _raise(errors)
    return first.reset_index(drop=True)


def _check_label_row(row: tuple, image_size: int, out: np.ndarray) -> str | None:
    """Why one labels row is wrong, or None; fills `out` with the parsed box."""
    if not row.patientId:
        return "empty patientId"
    if row.Target not in ("0", "1"):
        return f"Target must be 0 or 1, got {row.Target!r}"
    fields = [getattr(row, c) for c in BOX_COLUMNS]
    if all(f == "" for f in fields):
        return "Target 1 without a box" if row.Target == "1" else None
    if row.Target == "0":
        return "Target 0 with a box"
    for i, (column, text) in enumerate(zip(BOX_COLUMNS, fields, strict=True)):
        try:
            value = float(text)
        except ValueError:
            return f"{column} {text!r} is not a number"
        if not math.isfinite(value):
            return f"{column} {text!r} is not a finite number"
        out[i] = value
    x, y, w, h = out
    if w <= 0 or h <= 0:
        return f"box size must be positive, got width {w:g} height {h:g}"
    if x < 0 or y < 0 or x + w > image_size or y + h > image_size:
        return f"box x={x:g} y={y:g} w={w:g} h={h:g} is outside the {image_size}x{image_size} image"
    return None


def _without_exact_duplicates(rows: pd.DataFrame, name: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows without exact repeats (the same box listed twice would count twice), and the
    file row number of each row kept; every repeat is reported."""
    lines = np.arange(len(rows)) + 2
    group = rows.groupby(list(rows.columns), sort=False).ngroup().to_numpy()
    first = pd.Series(lines).groupby(group).transform("min").to_numpy()
    repeat = (lines != first) & (rows["patientId"] != "").to_numpy()  # blank rows stay errors
    if repeat.any():
        shown = zip(lines[repeat][:5], first[repeat][:5], strict=True)
        pairs = [f"row {r} repeats row {f}" for r, f in shown]
        log.warning(
            "%s: %d exact duplicate row(s), each counted once: %s%s",
            name, int(repeat.sum()), "; ".join(pairs), " ..." if repeat.sum() > 5 else "",
        )  # fmt: skip
    return rows[~repeat].reset_index(drop=True), lines[~repeat]


def _read_csv(source: Source, name: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """All fields as stripped strings, so each can be validated and reported by row (blank
    lines are kept as rows so that row numbers stay line numbers)."""
    try:
        frame = pd.read_csv(
            source, dtype=str, keep_default_na=False, skipinitialspace=True, skip_blank_lines=False
        )
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{name}: cannot read as CSV: {exc}") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        header = ", ".join(frame.columns)
        raise InputError(f"{name}: missing column(s) {', '.join(missing)} (header has {header})")
    return frame[list(columns)].apply(lambda col: col.str.strip())


def _name(source: Source) -> str:
    """How messages name the file: the path given, or a stream's name."""
    if isinstance(source, str | Path):
        return str(source)
    return str(getattr(source, "name", "<stream>"))


def _raise(errors: list[str]) -> None:
    """One InputError on one line (the CLI prints errors as one line): the first problems,
    each naming its file and row, and how many more there are."""
    if not errors:
        return
    shown = errors[:MAX_MESSAGES]
    more = f"; ... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
    raise InputError("; ".join(shown) + more)
