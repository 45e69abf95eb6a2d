"""Hostile archives and files: a zip bomb is refused before anything is written (and before
`pneumo run` starts Prefect), and prepare quarantines a DICOM over the size cap without reading
it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from pneumo_core import DEFAULT_DATASET
from pneumo_core.data.dicom import DicomError, read_dicom
from pneumo_core.data.ingest import check_source, ingest
from pneumo_core.data.prepare import prepare_dataset
from pneumo_core.data.synthetic import generate
from pneumo_core.errors import InputError
from pneumo_core.layout import prepared_prefix
from pneumo_core.storage.local import LocalStore

ZEROS = 64 << 20  # 64 MiB of zeros deflate to about 64 KB: a ratio near 1000


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    return generate(out, n_train=8, n_test=2, image_size=64, seed=3, zip=True)


def bomb(archive: Path, out: Path) -> Path:
    """The real archive plus one member that inflates a thousandfold."""
    target = out / "bomb.zip"
    target.write_bytes(archive.read_bytes())
    with (
        zipfile.ZipFile(target, "a", compression=zipfile.ZIP_DEFLATED) as zf,
        zf.open("stage_2_train_images/padding.bin", "w", force_zip64=True) as member,
    ):
        for _ in range(ZEROS >> 20):
            member.write(bytes(1 << 20))
    return target


def test_a_zip_bomb_is_refused_before_any_write(archive: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    with pytest.raises(InputError, match=r"padding\.bin' inflates .*x .*PNEUMO_INGEST_MAX_RATIO"):
        ingest(str(bomb(archive, tmp_path)), store, progress=False)
    assert store.list() == []


def test_the_pre_run_check_refuses_a_zip_bomb(archive: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    with pytest.raises(InputError, match=r"padding\.bin' inflates .*PNEUMO_INGEST_MAX_RATIO"):
        check_source(str(bomb(archive, tmp_path)), store)
    assert not store.root.exists()


def test_pneumo_run_refuses_a_zip_bomb_in_one_line_before_prefect(
    archive: Path, tmp_path: Path
) -> None:
    """The real command in its own process: exit 2 and one line, no traceback, no Prefect,
    and no store folder left behind."""
    store = tmp_path / "store"
    args = ["run", "--source", str(bomb(archive, tmp_path)), "--storage", str(store)]
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args, "--preset", "ci"],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PNEUMO_DEBUG"},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = result.stderr.splitlines()
    assert "padding.bin' inflates" in line and "PNEUMO_INGEST_MAX_RATIO" in line
    assert "prefect" not in result.stderr.lower()
    assert not (store / "raw").exists()


def test_the_total_uncompressed_size_has_a_ceiling(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store")
    ingest(str(archive), store, progress=False)
    before = {k: store.get_bytes(k) for k in store.list()}
    monkeypatch.setenv("PNEUMO_INGEST_MAX_BYTES", "1000")
    with pytest.raises(InputError, match=r"would inflate to [\d,]+ bytes, over the ceiling of"):
        ingest(str(archive), store, progress=False)
    assert {k: store.get_bytes(k) for k in store.list()} == before  # nothing changed


def test_a_dicom_over_the_cap_is_quarantined_unread(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "source"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
    images = sorted((folder / "stage_2_train_images").glob("*.dcm"))
    cap = max(p.stat().st_size for p in folder.rglob("*.dcm"))
    big = images[0]
    big.write_bytes(big.read_bytes() + bytes(cap))  # still a DICOM, now twice the cap
    monkeypatch.setenv("PNEUMO_MAX_DICOM_BYTES", str(cap))
    with pytest.raises(DicomError, match=f"{big.name}: file of .* over the {cap:,}-byte cap"):
        read_dicom(big)

    store = LocalStore(tmp_path / "store")
    ingest(str(folder), store, progress=False)
    result = prepare_dataset(store, image_size=32, n_folds=2, workers=1, progress=False)
    assert (result.n_train, result.n_quarantined) == (len(images) - 1, 1)
    prefix = prepared_prefix(DEFAULT_DATASET, 32)
    quarantine = pd.read_csv(store.local_path(prefix + "quarantine.csv"))
    [row] = quarantine.to_dict("records")
    assert row["patientId"] == big.stem and "PNEUMO_MAX_DICOM_BYTES" in row["reason"]
