"""Labels and class info: the real files, and every malformed row named by file and row."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from pneumo_core.data.labels import load_labels, load_targets
from pneumo_core.errors import InputError

HEADER = "patientId,x,y,width,height,Target\n"
INFO_HEADER = "patientId,class\n"
GOOD_LABELS = HEADER + "a,,,,,0\nb,10,20,30,40,1\nb,100,200,50,60.5,1\nc,,,,,0\n"
GOOD_INFO = (
    INFO_HEADER + "a,Normal\nb,Lung Opacity\nb,Lung Opacity\nc,No Lung Opacity / Not Normal\n"
)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_real_files(rsna_sample):
    labels = load_labels(
        rsna_sample / "stage_2_train_labels.csv", rsna_sample / "stage_2_detailed_class_info.csv"
    )
    patients, boxes = labels.patients, labels.boxes
    assert len(patients) == 26684 and patients["patientId"].is_unique
    assert len(boxes) + (patients["n_boxes"] == 0).sum() == 30227
    assert list(patients.columns) == ["patientId", "class", "target", "n_boxes"]
    assert list(boxes.columns) == ["patientId", "x", "y", "width", "height"]
    assert patients["class"].value_counts().to_dict() == {
        "No Lung Opacity / Not Normal": 11821,
        "Normal": 8851,
        "Lung Opacity": 6012,
    }
    assert (patients["target"] == (patients["class"] == "Lung Opacity")).all()
    assert ((patients["n_boxes"] > 0) == (patients["target"] == 1)).all()
    first = patients.head(16)
    assert (first["n_boxes"] == 2).sum() == 5 and (first["n_boxes"] == 0).sum() == 11
    gt = labels.boxes_by_patient()
    np.testing.assert_array_equal(
        gt["00436515-870c-4b36-a041-de91049b9ab4"],
        [[264.0, 152.0, 213.0, 379.0], [562.0, 152.0, 256.0, 453.0]],
    )
    assert gt["0004cfab-14fd-4e49-80ba-63a80b6bddd6"].shape == (0, 4)


def test_small_files_fold_rows_into_patients(tmp_path):
    labels = load_labels(write(tmp_path, "l.csv", GOOD_LABELS), write(tmp_path, "c.csv", GOOD_INFO))
    assert labels.patients.to_dict("list") == {
        "patientId": ["a", "b", "c"],
        "class": ["Normal", "Lung Opacity", "No Lung Opacity / Not Normal"],
        "target": [0, 1, 0],
        "n_boxes": [0, 2, 0],
    }
    assert labels.boxes[["x", "y", "width", "height"]].to_numpy().tolist() == [
        [10, 20, 30, 40],
        [100, 200, 50, 60.5],
    ]


def test_streams_and_targets_alone():
    labels = load_targets(io.StringIO(GOOD_LABELS))
    assert labels.patients["target"].tolist() == [0, 1, 0]
    assert "class" not in labels.patients


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("d,ten,20,30,40,1", "row 6: x 'ten' is not a number"),
        ("d,10,20,-30,40,1", "row 6: box size must be positive"),
        ("d,10,20,30,0,1", "row 6: box size must be positive"),
        ("d,1000,20,30,40,1", "row 6: box x=1000 y=20 w=30 h=40 is outside the 1024x1024"),
        ("d,-1,20,30,40,1", "row 6: box x=-1"),
        ("d,,,,,1", "row 6: Target 1 without a box"),
        ("d,10,20,30,40,0", "row 6: Target 0 with a box"),
        ("d,10,,30,40,1", "row 6: y '' is not a number"),
        ("d,,,,,2", "row 6: Target must be 0 or 1, got '2'"),
        ("d,10,20,30,nan,1", "row 6: height 'nan' is not a finite number"),
        (",,,,,0", "row 6: empty patientId"),
        ("b,,,,,0", "row 3: patient b has both Target 0 and 1 rows"),
    ],
)
def test_bad_label_rows_name_file_and_row(tmp_path, row, message):
    path = write(tmp_path, "labels.csv", GOOD_LABELS + row + "\n")
    with pytest.raises(InputError) as info:
        load_targets(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_every_bad_row_is_reported(tmp_path):
    bad = "".join(f"z{i},x,1,1,1,1\n" for i in range(15))
    with pytest.raises(InputError, match=r"(?s)row 2: x 'x'.*row 11: .*and 5 more"):
        load_targets(write(tmp_path, "l.csv", HEADER + bad))


def test_row_numbers_count_blank_lines(tmp_path):
    path = write(tmp_path, "l.csv", HEADER + "a,,,,,0\n\nb,1,1,-1,1,1\n")
    with pytest.raises(InputError, match=r"(?s)row 3: empty patientId.*row 4: box size"):
        load_targets(path)


def test_image_size_bounds_boxes(tmp_path):
    path = write(tmp_path, "l.csv", HEADER + "a,200,0,100,100,1\n")
    assert len(load_targets(path).boxes) == 1
    with pytest.raises(InputError, match="outside the 256x256 image"):
        load_targets(path, image_size=256)


def test_boxes_checked_against_each_images_own_size(tmp_path):
    labels = load_labels(write(tmp_path, "l.csv", GOOD_LABELS), write(tmp_path, "c.csv", GOOD_INFO))
    sizes = pd.DataFrame({"patientId": ["a", "b"], "rows": [64, 261], "cols": [64, 149]})
    with pytest.raises(InputError, match=r"l.csv row 4: box x=100 .* outside the 149x261 image of"):
        labels.check_inside(sizes)  # row 3's box (10, 20, 30, 40) fits; a has no box
    sizes.loc[1, "cols"] = 150  # x + width = 150 touches the edge: inside
    labels.check_inside(sizes)


def test_missing_columns(tmp_path):
    with pytest.raises(InputError, match=r"l.csv: missing column\(s\) Target"):
        load_targets(write(tmp_path, "l.csv", "patientId,x,y,width,height\na,,,,\n"))
    with pytest.raises(InputError, match=r"c.csv: missing column\(s\) class"):
        load_labels(
            write(tmp_path, "ok.csv", GOOD_LABELS), write(tmp_path, "c.csv", "patientId\na\n")
        )


def test_empty_file(tmp_path):
    with pytest.raises(InputError, match="cannot read as CSV"):
        load_targets(write(tmp_path, "l.csv", ""))


@pytest.mark.parametrize(
    ("info", "message"),
    [
        (GOOD_INFO.replace("a,Normal", "a,Healthy"), "c.csv row 2: unknown class 'Healthy'"),
        (
            GOOD_INFO + "a,Lung Opacity\n",
            "c.csv row 6: patient a has class 'Lung Opacity' but row 2",
        ),
        (
            GOOD_INFO.replace("a,Normal", "a,Lung Opacity"),
            "row 2: patient a has class 'Lung Opacity' but Target 0",
        ),
        (
            GOOD_INFO.replace("b,Lung Opacity", "b,Normal"),
            "row 3: patient b has class 'Normal' but Target 1",
        ),
        (GOOD_INFO.replace("c,No Lung Opacity / Not Normal\n", ""), "patient c from"),
        (GOOD_INFO + "e,Normal\n", "c.csv row 6: patient e is not in"),
    ],
)
def test_bad_class_info(tmp_path, info, message):
    labels, classes = write(tmp_path, "l.csv", GOOD_LABELS), write(tmp_path, "c.csv", info)
    with pytest.raises(InputError) as error:
        load_labels(labels, classes)
    assert message in str(error.value)


def test_exact_duplicate_rows_are_reported_and_counted_once(tmp_path, caplog):
    text = GOOD_LABELS + "b,10,20,30,40,1\na,,,,,0\nb,10,20,30,41,1\n"
    labels = load_targets(write(tmp_path, "labels.csv", text))
    assert "2 exact duplicate row(s)" in caplog.text
    assert "row 6 repeats row 3; row 7 repeats row 2" in caplog.text
    boxes = labels.boxes[labels.boxes["patientId"] == "b"]
    assert len(boxes) == 3  # the repeat is counted once; the different box stays
    assert labels.patients.set_index("patientId").loc["b", "n_boxes"] == 3
    assert labels.box_rows == (3, 4, 8)  # still the rows of the file
    with pytest.raises(InputError, match="row 8: box"):  # a later error names its real row
        load_targets(write(tmp_path, "l2.csv", text.replace("30,41,1", "30,4100,1")))
