"""Submission files: format, parse, write, check, and the score / check-submission commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flows.cli.main import main
from pneumo_core.errors import InputError
from pneumo_core.evaluation.submission import (
    check_submission,
    format_prediction_string,
    parse_prediction_string,
    read_submission,
    score_submission,
    write_submission,
)

REPO = Path(__file__).resolve().parents[2]
LABELS = "patientId,x,y,width,height,Target\na,,,,,0\nb,100,100,200,300,1\nc,,,,,0\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_format_sorts_by_confidence_and_rounds():
    boxes = np.array([[10.04, 20.26, 30, 40], [1, 2, 3, 4.5]])
    text = format_prediction_string(boxes, np.array([0.12345, 0.9]))
    assert text == "0.9000 1 2 3 4.5 0.1235 10 20.3 30 40"
    parsed_boxes, parsed_scores = parse_prediction_string(text)
    assert parsed_scores.tolist() == [0.9, 0.1235]
    assert parsed_boxes.tolist() == [[1, 2, 3, 4.5], [10, 20.3, 30, 40]]


def test_empty_prediction_string():
    assert format_prediction_string(np.zeros((0, 4)), np.zeros(0)) == ""
    boxes, scores = parse_prediction_string("")
    assert boxes.shape == (0, 4) and scores.shape == (0,)


@pytest.mark.parametrize("text", ["0.5 1 2 3", "0.5 1 2 3 x"])
def test_parse_rejects_bad_strings(text):
    with pytest.raises(InputError):
        parse_prediction_string(text)


def test_format_rejects_bad_scores():
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        format_prediction_string(np.array([[1, 2, 3, 4]]), np.array([1.5]))


def test_write_then_read_round_trip(tmp_path):
    rows = {
        "a": (np.array([[10, 20, 30, 40]]), np.array([0.75])),
        "b": (np.zeros((0, 4)), np.zeros(0)),
    }
    out = tmp_path / "sub" / "submission.csv"
    write_submission(rows, out)
    assert out.read_text() == "patientId,PredictionString\na,0.7500 10 20 30 40\nb,\n"
    assert check_submission(out) == []
    back = read_submission(out)
    assert back["a"][0].tolist() == [[10, 20, 30, 40]] and back["b"][1].size == 0
    assert [p.name for p in out.parent.iterdir()] == ["submission.csv"]  # no temp file left


def test_the_real_sample_submission_is_valid(rsna_sample):
    sample = rsna_sample / "stage_2_sample_submission.csv"
    assert check_submission(sample, sample=sample) == []


def test_check_names_every_bad_row(tmp_path):
    text = (
        "patientId,PredictionString\n"
        "a,0.5 10 10 20 20\n"
        "b,0.5 10 10 20\n"
        "a,\n"
        "c,1.5 10 10 20 20\n"
        "d,0.5 1000 10 30 20\n"
        "e,0.5 10 10 0 20\n"
        "f,0.5 ten 10 20 20\n"
        "g,0.5,extra\n"
        ",0.5 10 10 20 20\n"
        "h,0.5 10 10 20 20 0.4 -1 0 5 5\n"
    )
    problems = check_submission(write(tmp_path, "s.csv", text))
    assert problems == [
        "row 3: PredictionString has 4 numbers, not groups of five",
        "row 4: patientId a already on row 2",
        "row 5: box 1: confidence 1.5 is outside [0, 1]",
        "row 6: box 1: x=1000 y=10 w=30 h=20 is outside the 1024x1024 image",
        "row 7: box 1: width and height must be positive, got 0 20",
        "row 8: box 1: '0.5 ten 10 20 20' is not five numbers",
        "row 9: expected 2 fields (patientId,PredictionString), got 3",
        "row 10: empty patientId",
        "row 11: box 2: x=-1 y=0 w=5 h=5 is outside the 1024x1024 image",
    ]


def test_check_header_and_sample(tmp_path):
    assert check_submission(write(tmp_path, "h.csv", "patientId,Prediction\na,\n")) == [
        "row 1: header must be patientId,PredictionString, got patientId,Prediction"
    ]
    assert "empty file" in check_submission(write(tmp_path, "e.csv", ""))[0]
    sample = write(tmp_path, "sample.csv", "patientId,PredictionString\na,0.5 0 0 100 100\nb,\n")
    sub = write(tmp_path, "s.csv", "patientId,PredictionString\na,\nz,\n")
    assert check_submission(sub, sample=sample) == [
        f"row 3: patientId z is not in the sample {sample}",
        "patientId b from the sample is missing",
    ]


def test_score_only_the_submissions_patients(tmp_path):
    labels = write(tmp_path, "labels.csv", LABELS)
    sub = write(tmp_path, "s.csv", "patientId,PredictionString\na,\nb,0.9 100 100 200 300\n")
    assert score_submission(labels, sub, only_present=True) == {
        "map": 1.0,
        "images_scored": 1,
        "images_in_submission": 2,
        "labelled_images_not_in_submission": 1,
        "only_present": True,
        "warnings": [],
    }
    unknown = write(tmp_path, "u.csv", "patientId,PredictionString\nzz,\n")
    with pytest.raises(InputError, match="not in"):
        score_submission(labels, unknown)


def test_score_counts_a_missing_image_as_no_prediction(tmp_path, capsys):
    """What Kaggle would score: the missing positive b is a miss, not left out."""
    labels = write(tmp_path, "labels.csv", LABELS)
    sub = write(tmp_path, "s.csv", "patientId,PredictionString\na,\nc,\n")
    result = score_submission(labels, sub)
    assert (result["map"], result["images_scored"]) == (0.0, 1)
    [warning] = result["warnings"]
    assert "1 labelled image(s)" in warning and "Kaggle would refuse" in warning
    assert score_submission(labels, sub, only_present=True)["map"] is None  # nothing to score
    assert main(["score", "--labels", str(labels), "--submission", str(sub)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("mAP 0.0000 over 1 scored images") and "Kaggle would refuse" in err
    assert main(["score", "--labels", str(labels), "--submission", str(sub), "--only-present"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("mAP n/a") and err == ""


def test_score_takes_a_box_past_the_border_as_given_but_check_refuses_it(tmp_path, capsys):
    labels = write(tmp_path, "labels.csv", LABELS)
    text = "patientId,PredictionString\na,\nb,0.9 100 100 200 300 0.5 900 900 200 200\nc,\n"
    sub = write(tmp_path, "s.csv", text)
    result = score_submission(labels, sub)
    assert result["map"] == 0.5  # scored as given: the box past the border is a false positive
    assert result["warnings"] == [f"{sub}: 1 box(es) run past the 1024x1024 image border; "
                                  "scored as given"]  # fmt: skip
    assert main(["check-submission", str(sub)]) == 1
    assert "box 2: x=900 y=900 w=200 h=200 is outside" in capsys.readouterr().err


def test_a_utf8_bom_in_the_header_is_accepted(tmp_path, capsys):
    sub = tmp_path / "bom.csv"
    sub.write_bytes(b"\xef\xbb\xbfpatientId,PredictionString\na,0.5 1 1 10 10\n")
    assert check_submission(sub) == []
    assert main(["check-submission", str(sub)]) == 0
    assert "a" in read_submission(sub)
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"\xef\xbb\xbf" + LABELS.encode())
    assert score_submission(labels, sub, only_present=True)["images_in_submission"] == 1


def test_cli_score_json(tmp_path, capsys):
    labels = write(tmp_path, "labels.csv", LABELS)
    sub = write(
        tmp_path,
        "s.csv",
        "patientId,PredictionString\na,0.3 1 1 10 10\nb,0.9 100 100 200 300\nc,\n",
    )
    assert main(["score", "--labels", str(labels), "--submission", str(sub), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["map"] == 0.5 and result["images_scored"] == 2


def test_cli_score_invalid_submission_exits_2(tmp_path, capsys):
    labels = write(tmp_path, "labels.csv", LABELS)
    sub = write(tmp_path, "s.csv", "patientId,PredictionString\na,0.3 1 1 10\n")
    assert main(["score", "--labels", str(labels), "--submission", str(sub)]) == 2
    assert "row 2: PredictionString has 4 numbers" in capsys.readouterr().err


def test_cli_check_submission(tmp_path, capsys):
    good = write(tmp_path, "good.csv", "patientId,PredictionString\na,0.5 1 1 10 10\n")
    assert main(["check-submission", str(good)]) == 0
    bad = write(tmp_path, "bad.csv", "patientId,PredictionString\na,2 1 1 10 10\n")
    assert main(["check-submission", str(bad), "--sample", str(good)]) == 1
    assert "bad.csv: row 2: box 1: confidence 2 is outside [0, 1]" in capsys.readouterr().err
    empty = write(tmp_path, "empty.csv", "")
    assert main(["check-submission", str(empty)]) == 1
    assert capsys.readouterr().err.startswith(f"{empty}: empty file (expected header")


def test_console_commands_in_a_subprocess(tmp_path, rsna_sample):
    """The real sample submission scored against the real labels: its ids are test patients."""
    labels = rsna_sample / "stage_2_train_labels.csv"
    rows = {"00436515-870c-4b36-a041-de91049b9ab4": (np.array([[264, 152, 213, 379]]), [0.9])}
    sub = tmp_path / "s.csv"
    write_submission(rows, sub)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "flows.cli"]
    done = subprocess.run(
        [*command, "score", "--labels", str(labels), "--submission", str(sub), "--json",
         "--only-present"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["map"] == pytest.approx(0.5)  # 1 of 2 boxes, exact hit
    sample = rsna_sample / "stage_2_sample_submission.csv"
    done = subprocess.run(
        [*command, "check-submission", str(sub), "--sample", str(sample)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "from the sample is missing" in done.stderr and "is not in the sample" in done.stderr
