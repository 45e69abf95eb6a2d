"""A source is checked in full before anything is stored, and before `pneumo run` starts: the
competition's files must be there and its labels must parse, or the source is refused in one
line naming the file, row and field, and the store's current dataset stays as it was."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from flows.cli.main import main
from pneumo_core import DEFAULT_DATASET
from pneumo_core.data import kaggle
from pneumo_core.data.ingest import check_source, ingest
from pneumo_core.data.synthetic import generate
from pneumo_core.errors import InputError
from pneumo_core.layout import CLASS_INFO, TRAIN_IMAGES, TRAIN_LABELS, manifest_key
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.local import LocalStore


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synth"), n_train=8, n_test=2, image_size=64, seed=3)


@pytest.fixture
def stored(good: Path, tmp_path: Path) -> LocalStore:
    """A store that already holds a good dataset, which a refused source must not replace."""
    store = LocalStore(tmp_path / "store")
    ingest(str(good), store, progress=False)
    return store


def snapshot(store: ObjectStore) -> dict[str, bytes]:
    return {key: store.get_bytes(key) for key in store.list("")}


def zipped(folder: Path, archive: Path, under: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, under + path.relative_to(folder).as_posix())
    return archive


def refused_everywhere(source: str, store: LocalStore, *fragments: str) -> str:
    """check_source and ingest refuse the source with one line naming every fragment, and
    the store (its manifest first) is unchanged."""
    before = snapshot(store)
    for check in (check_source, ingest):
        with pytest.raises(InputError) as caught:
            check(source, store)
        message = str(caught.value)
        assert "\n" not in message, message
        for fragment in fragments:
            assert fragment in message, message
    assert snapshot(store) == before
    return message


# --- the competition's shape ----------------------------------------------------------------


def test_a_folder_of_csvs_is_refused_naming_the_image_folder(
    good: Path, stored: LocalStore, tmp_path: Path
) -> None:
    tables = tmp_path / "tables"
    tables.mkdir()
    for name in (TRAIN_LABELS, CLASS_INFO):
        shutil.copy(good / name, tables / name)
    refused_everywhere(str(tables), stored, str(tables), f"no {TRAIN_IMAGES}/")


def test_the_image_folder_itself_is_refused_naming_the_tables(
    good: Path, stored: LocalStore
) -> None:
    images = good / TRAIN_IMAGES
    message = refused_everywhere(str(images), stored, f"no {TRAIN_LABELS}, {CLASS_INFO}")
    assert ".dcm" in message  # what it holds instead


def test_any_other_folder_is_refused(stored: LocalStore, tmp_path: Path) -> None:
    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("no labels here")
    refused_everywhere(str(other), stored, "not the competition's archive", "readme.txt")


def test_an_archive_nested_in_a_folder_says_where_the_files_are(
    good: Path, stored: LocalStore, tmp_path: Path
) -> None:
    archive = zipped(good, tmp_path / "nested.zip", under="rsna/")
    refused_everywhere(str(archive), stored, f"'rsna/{TRAIN_LABELS}'")


def test_the_synthetic_data_zipped_or_not_and_the_real_sample_pass(
    good: Path, rsna_sample: Path, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    for source in (good, zipped(good, tmp_path / "good.zip"), rsna_sample):
        check_source(str(source), store)
    assert not store.root.exists()  # checking writes nothing


def test_check_source_never_reads_an_image(good: Path, tmp_path: Path) -> None:
    """The pre-run check reads a zip's directory and the two tables: a corrupt image passes
    it, and ingest (which reads every member) still refuses it."""
    archive = zipped(good, tmp_path / "corrupt.zip")  # stored: each image's bytes as they are
    image = sorted((good / TRAIN_IMAGES).glob("*.dcm"))[0].read_bytes()
    data = bytearray(archive.read_bytes())
    data[data.index(image[-200:])] ^= 0xFF  # the CRC no longer matches
    archive.write_bytes(bytes(data))
    store = LocalStore(tmp_path / "store")
    check_source(str(archive), store)
    with pytest.raises(InputError, match=r"\.dcm' is corrupt"):
        ingest(str(archive), store, progress=False)


def test_hostile_member_names_are_refused_before_the_run(good: Path, tmp_path: Path) -> None:
    archive = zipped(good, tmp_path / "hostile.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("../../escape.txt", b"evil")
    with pytest.raises(InputError, match=r"'\.\./\.\./escape\.txt' climbs out"):
        check_source(str(archive), LocalStore(tmp_path / "store"))


# --- the labels -----------------------------------------------------------------------------


def edited(good: Path, tmp_path: Path, name: str, edit: object) -> tuple[Path, int]:
    """A copy of the good source with one table's lines changed by `edit(lines) -> index`;
    returns the copy and the changed row's number (the header is row 1)."""
    source = tmp_path / "edited"
    shutil.copytree(good, source)
    lines = (source / name).read_text().splitlines()
    index = edit(lines)
    (source / name).write_text("\n".join(lines) + "\n")
    return source, index + 1


def negative_width(lines: list[str]) -> int:
    i = next(i for i, line in enumerate(lines) if line.endswith(",1"))
    fields = lines[i].split(",")
    fields[3] = "-" + fields[3]
    lines[i] = ",".join(fields)
    return i


def box_with_target_0(lines: list[str]) -> int:
    i = next(i for i, line in enumerate(lines) if line.endswith(",,,,0"))
    lines[i] = lines[i].split(",")[0] + ",10,10,20,20,0"
    return i


def target_column_missing(lines: list[str]) -> int:
    lines[0] = lines[0].replace("Target", "Label")
    return 0


def unknown_class(lines: list[str]) -> int:
    lines[1] = lines[1].split(",")[0] + ",Healthy"
    return 1


@pytest.mark.parametrize(
    ("name", "edit", "problem"),
    [
        (TRAIN_LABELS, negative_width, "box size must be positive, got width -"),
        (TRAIN_LABELS, box_with_target_0, "Target 0 with a box"),
        (TRAIN_LABELS, target_column_missing, "missing column(s) Target"),
        (CLASS_INFO, unknown_class, "unknown class 'Healthy'"),
    ],
    ids=["negative-width", "box-with-target-0", "missing-column", "unknown-class"],
)
@pytest.mark.parametrize("form", ["folder", "zip"])
def test_bad_labels_are_refused_naming_file_row_and_field(
    good: Path, stored: LocalStore, tmp_path: Path, name: str, edit: object, problem: str, form: str
) -> None:
    source, row = edited(good, tmp_path, name, edit)
    if form == "zip":
        source = zipped(source, tmp_path / "edited.zip")
    where = f"{source.resolve()}/{name}"
    if edit is target_column_missing:
        refused_everywhere(str(source), stored, f"{where}: {problem}")
    else:
        refused_everywhere(str(source), stored, f"{where} row {row}: {problem}")


def test_a_labels_file_with_only_its_header_is_refused(
    good: Path, stored: LocalStore, tmp_path: Path
) -> None:
    source = tmp_path / "empty-labels"
    shutil.copytree(good, source)
    for name in (TRAIN_LABELS, CLASS_INFO):
        header = (source / name).read_text().splitlines()[0]
        (source / name).write_text(header + "\n")
    refused_everywhere(str(source), stored, "no labelled patients")


def test_the_cli_refuses_in_one_line_and_keeps_the_dataset(
    good: Path, stored: LocalStore, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source, row = edited(good, tmp_path, TRAIN_LABELS, negative_width)
    before = snapshot(stored)
    assert main(["ingest", "--source", str(source), "--storage", str(stored.root)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert f"{TRAIN_LABELS} row {row}: box size" in line
    assert snapshot(stored) == before


@pytest.mark.parametrize("defect", ["bad-labels", "no-images"])
def test_pneumo_run_refuses_before_prefect_starts(good: Path, tmp_path: Path, defect: str) -> None:
    """The real command in its own process: one line, exit 2, nothing ingested."""
    if defect == "bad-labels":
        source, row = edited(good, tmp_path, TRAIN_LABELS, negative_width)
        expected = f"{TRAIN_LABELS} row {row}: box size must be positive, got width -"
    else:
        source = tmp_path / "tables"
        source.mkdir()
        shutil.copy(good / TRAIN_LABELS, source / TRAIN_LABELS)
        expected = f"no {CLASS_INFO}, {TRAIN_IMAGES}/"
    store = tmp_path / "store"
    args = ["run", "--source", str(source), "--storage", str(store), "--preset", "ci"]
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PNEUMO_DEBUG"},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = result.stderr.splitlines()
    assert expected in line
    assert "prefect" not in result.stderr.lower()
    assert not (store / "raw").exists()


# --- downloaded sources: checked once here, before anything is stored ---------------------------


def test_a_kaggle_download_with_bad_labels_never_replaces_the_dataset(
    good: Path, stored: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the network call is replaced: it writes a zip whose labels are broken."""
    source, row = edited(good, tmp_path, TRAIN_LABELS, box_with_target_0)

    def download(api: object, competition: str, dest_dir: Path) -> Path:
        return zipped(source, dest_dir / f"{competition}.zip")

    monkeypatch.setattr(kaggle, "_download_competition", download)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")
    before = snapshot(stored)
    competition = "kaggle://rsna-pneumonia-detection-challenge"
    check_source(competition, stored)  # its form only: nothing is downloaded before the run
    with pytest.raises(InputError, match=rf"{TRAIN_LABELS} row {row}: Target 0 with a box"):
        ingest(competition, stored, progress=False)
    assert snapshot(stored) == before
    assert stored.get_json(manifest_key(DEFAULT_DATASET))["source"] == str(good.resolve())
