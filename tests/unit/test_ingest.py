"""Ingest: every source kind lands byte for byte under raw/<dataset>/ with a true manifest;
hostile archives are refused before anything is written."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from flows.cli.main import main
from pneumo_core import DEFAULT_DATASET
from pneumo_core.data import archive as archive_module
from pneumo_core.data import kaggle
from pneumo_core.data.ingest import ingest
from pneumo_core.data.synthetic import generate
from pneumo_core.errors import InputError
from pneumo_core.layout import (
    CLASS_INFO,
    SAMPLE_SUBMISSION,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    manifest_key,
)
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.local import LocalStore

PREFIX = f"raw/{DEFAULT_DATASET}/"
# The smallest source ingest accepts: the two label tables and one train image (never decoded).
MINIMAL = {
    TRAIN_LABELS: b"patientId,x,y,width,height,Target\na,,,,,0\n",
    CLASS_INFO: b"patientId,class\na,Normal\n",
    f"{TRAIN_IMAGES}/a.dcm": b"image bytes",
}


def write_minimal(folder: Path) -> Path:
    for name, data in MINIMAL.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def source_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synth"), n_train=8, n_test=2, image_size=64, seed=3)


@pytest.fixture(scope="module")
def source_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(
        tmp_path_factory.mktemp("synth-zip"), n_train=8, n_test=2, image_size=64, seed=3, zip=True
    )


def folder_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def snapshot(store: ObjectStore) -> dict[str, bytes]:
    return {key: store.get_bytes(key) for key in store.list("")}


def assert_manifest_true(store: ObjectStore, expected: dict[str, bytes]) -> dict:
    """The stored objects are the source's bytes, and the manifest describes exactly them."""
    manifest = store.get_json(manifest_key(DEFAULT_DATASET))
    by_key = {m["key"]: m for m in manifest["members"]}
    assert set(by_key) == {PREFIX + name for name in expected}
    for name, data in expected.items():
        key = PREFIX + name
        assert store.get_bytes(key) == data
        assert by_key[key]["size"] == len(data)
        assert by_key[key]["sha256"] == hashlib.sha256(data).hexdigest() == store.sha256(key)
    lines = "".join(sorted(f"{m['key']}:{m['sha256']}\n" for m in manifest["members"]))
    assert manifest["digest"] == hashlib.sha256(lines.encode()).hexdigest()
    return manifest


def test_folder_lands_byte_for_byte(source_folder: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    result = ingest(str(source_folder), store)
    expected = folder_files(source_folder)
    manifest = assert_manifest_true(store, expected)
    assert manifest["source"] == str(source_folder.resolve())
    assert (result.members, result.uploaded, result.skipped) == (len(expected), len(expected), 0)
    assert result.bytes == sum(len(b) for b in expected.values())
    assert result.digest == manifest["digest"]


def test_zip_gives_the_same_members_as_the_folder(
    source_folder: Path, source_zip: Path, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    result = ingest(str(source_zip), store)
    assert_manifest_true(store, folder_files(source_folder))
    assert result.digest == ingest(str(source_folder), LocalStore(tmp_path / "other")).digest


def test_rerun_skips_what_is_intact_and_repairs_the_rest(source_zip: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    first = ingest(str(source_zip), store)
    manifest_before = store.get_bytes(manifest_key(DEFAULT_DATASET))

    again = ingest(str(source_zip), store)
    assert (again.uploaded, again.skipped, again.digest) == (0, first.members, first.digest)
    assert store.get_bytes(manifest_key(DEFAULT_DATASET)) == manifest_before

    damaged = PREFIX + TRAIN_LABELS
    original = store.get_bytes(damaged)
    store.put_bytes(damaged, original[:-5] + b"XXXXX")  # same size, other bytes
    repaired = ingest(str(source_zip), store)
    assert (repaired.uploaded, repaired.skipped) == (1, first.members - 1)
    assert store.get_bytes(damaged) == original


def test_changed_source_replaces_changed_members_and_manifest(
    source_folder: Path, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    ingest(str(source_folder), store)
    changed = tmp_path / "changed"
    shutil.copytree(source_folder, changed)
    (changed / SAMPLE_SUBMISSION).write_text("patientId,PredictionString\n")
    result = ingest(str(changed), store)
    assert result.uploaded == 1
    assert_manifest_true(store, folder_files(changed))


def test_large_members_stream_through_put_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive_module, "SMALL_MEMBER_BYTES", 1000)
    payload = os.urandom(5000)
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in MINIMAL.items():
            zf.writestr(name, data)
        zf.writestr("big.bin", payload, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("small.txt", b"tiny")
    folder = write_minimal(tmp_path / "folder")
    (folder / "big.bin").write_bytes(payload)

    for source in (archive, folder):
        store = LocalStore(tmp_path / f"store-{source.name}")
        put_files = spy_put_file(store, monkeypatch)
        ingest(str(source), store)
        assert put_files == [PREFIX + "big.bin"]
        assert store.get_bytes(PREFIX + "big.bin") == payload


def spy_put_file(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the keys that go up through put_file (the store still does the real work)."""
    keys: list[str] = []
    real = store.put_file

    def put_file(key: str, path: str | Path) -> None:
        keys.append(key)
        real(key, path)

    monkeypatch.setattr(store, "put_file", put_file)
    return keys


def hostile_zip(path: Path, bad: zipfile.ZipInfo, data: bytes = b"evil") -> Path:
    """A good member first, so a writer that checks as it goes would already have written."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(TRAIN_LABELS, b"patientId,x,y,width,height,Target\n")
        zf.writestr(bad, data)
    return path


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix, so external_attr carries the file mode
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    "bad",
    [
        zipfile.ZipInfo("../escape.txt"),
        zipfile.ZipInfo("stage_2_train_images/../../escape.txt"),
        zipfile.ZipInfo("/etc/escape.txt"),
        zipfile.ZipInfo("C:/Windows/escape.txt"),
        zipfile.ZipInfo("..\\escape.txt"),
        zipfile.ZipInfo("stage_2_train_images\\..\\..\\escape.txt"),
        symlink_info("stage_2_train_images/link.dcm"),
        zipfile.ZipInfo("manifest.json"),
    ],
    ids=lambda info: info.filename,
)
def test_hostile_archive_is_refused_and_nothing_changes(
    bad: zipfile.ZipInfo, source_zip: Path, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    ingest(str(source_zip), store)  # data stored earlier must survive untouched
    before = snapshot(store)
    archive = hostile_zip(tmp_path / "hostile.zip", bad, b"/etc/passwd")
    with pytest.raises(InputError, match=r"refusing|overwrite") as caught:
        ingest(str(archive), store)
    assert repr(bad.filename) in str(caught.value)
    assert snapshot(store) == before
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()


def test_hostile_archive_into_an_empty_store_writes_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    archive = hostile_zip(tmp_path / "hostile.zip", zipfile.ZipInfo("../../escape.txt"))
    with pytest.raises(InputError, match=r"'\.\./\.\./escape\.txt'"):
        ingest(str(archive), store)
    assert store.list("") == []


@pytest.mark.parametrize(
    ("names", "problem"),
    [(["a.txt", "./a.txt"], "appears twice"), (["x", "x/y.txt"], "both a file and a folder")],
)
def test_members_the_store_cannot_hold_side_by_side(
    names: list[str], problem: str, tmp_path: Path
) -> None:
    archive = tmp_path / "clash.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in names:
            zf.writestr(name, b"data")
    store = LocalStore(tmp_path / "store")
    with pytest.raises(InputError, match=problem):
        ingest(str(archive), store)
    assert store.list("") == []


def test_folder_symlink_outside_is_refused(source_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    shutil.copytree(source_folder, folder)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the store")
    (folder / TRAIN_IMAGES / "sneaky.dcm").symlink_to(secret)
    store = LocalStore(tmp_path / "store")
    with pytest.raises(InputError, match=r"sneaky\.dcm.*outside the source folder"):
        ingest(str(folder), store)
    assert store.list("") == []


def test_folder_links_inside_are_followed_and_loops_refused(tmp_path: Path) -> None:
    folder = write_minimal(tmp_path / "folder")
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "a.txt").write_bytes(b"A")
    (folder / "alias.txt").symlink_to(folder / "data" / "a.txt")
    (folder / "data-link").symlink_to(folder / "data", target_is_directory=True)
    store = LocalStore(tmp_path / "store")
    result = ingest(str(folder), store)
    assert result.members == 3 + len(MINIMAL)
    for name in ("data/a.txt", "alias.txt", "data-link/a.txt"):
        assert store.get_bytes(PREFIX + name) == b"A"

    (folder / "data" / "loop").symlink_to(folder, target_is_directory=True)
    with pytest.raises(InputError, match="links back"):
        ingest(str(folder), LocalStore(tmp_path / "other"))


def test_dangling_link_in_a_folder_is_not_skipped_silently(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"A")
    (folder / "gone.txt").symlink_to(folder / "missing.txt")
    with pytest.raises(InputError, match=r"gone\.txt"):
        ingest(str(folder), LocalStore(tmp_path / "store"))


def test_corrupt_member_is_named_and_nothing_changes(source_zip: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ingest(str(source_zip), store)
    before = snapshot(store)
    archive = tmp_path / "corrupt.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in MINIMAL.items():  # other labels than those stored
            zf.writestr(name, data)
        zf.writestr("a.txt", b"A" * 1000, compress_type=zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    data[data.index(b"A" * 1000) + 10] = ord("B")  # the CRC no longer matches
    archive.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"member 'a\.txt' is corrupt"):
        ingest(str(archive), store)
    assert snapshot(store) == before


@pytest.mark.parametrize("kind", ["missing", "not-a-zip"])
def test_bad_local_source_is_an_input_error(kind: str, tmp_path: Path) -> None:
    source = tmp_path / "archive.zip"
    if kind == "not-a-zip":
        source.write_bytes(b"PK? not really")
    with pytest.raises(InputError, match=r"archive\.zip"):
        ingest(str(source), LocalStore(tmp_path / "store"))


@pytest.fixture
def kaggle_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home without any Kaggle credentials."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return home


@pytest.fixture
def fake_download(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, str]]:
    """Replace only the network call: it writes a generated archive where Kaggle's would go."""
    calls: list[tuple[object, str]] = []

    def download(api: object, competition: str, dest_dir: Path) -> Path:
        calls.append((api, competition))
        return generate(dest_dir, n_train=6, n_test=2, image_size=64, seed=5, zip=True)

    monkeypatch.setattr(kaggle, "_download_competition", download)
    return calls


def test_kaggle_source_with_env_credentials(
    kaggle_home: Path, fake_download: list, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")
    store = LocalStore(tmp_path / "store")
    result = ingest("kaggle://rsna-pneumonia-detection-challenge", store)

    ((api, competition),) = fake_download
    assert competition == "rsna-pneumonia-detection-challenge"
    assert type(api).__name__ == "KaggleApi" and api.config_values["username"] == "someone"
    manifest = store.get_json(manifest_key(DEFAULT_DATASET))
    assert manifest["source"] == "kaggle://rsna-pneumonia-detection-challenge"
    reference = generate(tmp_path / "ref", n_train=6, n_test=2, image_size=64, seed=5)
    assert_manifest_true(store, folder_files(reference))
    assert result.uploaded == result.members == len(folder_files(reference))


def test_kaggle_source_with_kaggle_json(
    kaggle_home: Path, fake_download: list, tmp_path: Path
) -> None:
    (kaggle_home / ".kaggle").mkdir()
    config = kaggle_home / ".kaggle" / "kaggle.json"
    config.write_text('{"username": "from-file", "key": "0123456789abcdef"}')
    config.chmod(0o600)
    ingest("kaggle://rsna-pneumonia-detection-challenge", LocalStore(tmp_path / "store"))
    ((api, _),) = fake_download
    assert api.config_values["username"] == "from-file"


def test_kaggle_without_credentials_names_both_ways(
    kaggle_home: Path, fake_download: list, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store_dir = tmp_path / "store"
    with pytest.raises(InputError) as caught:
        ingest("kaggle://rsna-pneumonia-detection-challenge", LocalStore(store_dir))
    message = str(caught.value)
    assert "KAGGLE_USERNAME" in message and "KAGGLE_KEY" in message
    assert "~/.kaggle/kaggle.json" in message
    assert fake_download == []

    source = "kaggle://rsna-pneumonia-detection-challenge"
    assert main(["ingest", "--source", source, "--storage", str(store_dir)]) == 2
    assert "KAGGLE_USERNAME" in capsys.readouterr().err
    assert LocalStore(store_dir).list("") == []


def test_kaggle_key_never_reaches_output_logs_or_store(
    kaggle_home: Path,
    fake_download: list,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = "kagglekey" + os.urandom(8).hex()
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", key)
    store_dir = tmp_path / "store"
    args = ["ingest", "--source", "kaggle://rsna-pneumonia-detection-challenge"]
    with caplog.at_level(logging.DEBUG):
        assert main([*args, "--storage", str(store_dir)]) == 0
    stored = b"".join(snapshot(LocalStore(store_dir)).values())
    captured = capsys.readouterr()
    assert key.encode() not in stored and key not in captured.out + captured.err + caplog.text


def test_kaggle_refusal_is_clear_and_writes_nothing(
    kaggle_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """Only the HTTP call is replaced: Kaggle answers 401, as it does for a wrong key."""
    import requests
    from kaggle.api.kaggle_api_extended import KaggleApi

    key = "kagglekey" + os.urandom(8).hex()
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", key)

    def refuse(self: KaggleApi, competition: str, **kwargs: object) -> None:
        response = requests.Response()
        response.status_code = 401
        raise requests.HTTPError(
            f"401 Client Error: Unauthorized for {competition}", response=response
        )

    monkeypatch.setattr(KaggleApi, "competition_download_files", refuse)
    store_dir = tmp_path / "store"
    args = ["ingest", "--source", "kaggle://rsna-pneumonia-detection-challenge"]
    assert main([*args, "--storage", str(store_dir)]) == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "accept the rules" in err and key not in err
    assert LocalStore(store_dir).list("") == []


def test_kaggle_json_without_key_is_named(kaggle_home: Path, tmp_path: Path) -> None:
    (kaggle_home / ".kaggle").mkdir()
    (kaggle_home / ".kaggle" / "kaggle.json").write_text('{"username": "me"}')
    with pytest.raises(InputError, match=r"kaggle\.json: needs both"):
        ingest("kaggle://rsna-pneumonia-detection-challenge", LocalStore(tmp_path / "store"))


def test_log_lines_without_a_terminal(
    source_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="pneumo_core"):
        ingest(str(source_folder), LocalStore(tmp_path / "store"), progress=False)
    progress_lines = [r.getMessage() for r in caplog.records if r.name == "pneumo_core.progress"]
    assert progress_lines[-1].startswith(f"ingest {DEFAULT_DATASET}: 100%")
    for phase in ("check", "ingest"):  # every member read, then the changed ones written
        lines = [line for line in progress_lines if line.startswith(f"{phase} {DEFAULT_DATASET}")]
        assert lines[-1].startswith(f"{phase} {DEFAULT_DATASET}: 100%") and len(lines) <= 10


def test_progress_bar_goes_to_stderr(
    source_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ingest(str(source_folder), LocalStore(tmp_path / "store"), progress=True)
    captured = capsys.readouterr()
    assert f"ingest {DEFAULT_DATASET}" in captured.err and captured.out == ""


def test_unreadable_old_manifest_is_rewritten(source_folder: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ingest(str(source_folder), store)
    store.put_text(manifest_key(DEFAULT_DATASET), "{broken")
    result = ingest(str(source_folder), store)
    assert result.uploaded == 0
    assert_manifest_true(store, folder_files(source_folder))


def test_cli_prints_a_summary(
    source_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = [
        "ingest",
        "--source",
        str(source_zip),
        "--storage",
        str(tmp_path / "s"),
        "--dataset",
        "d",
    ]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    again = capsys.readouterr().out
    n = len(zipfile.ZipFile(source_zip).namelist())
    assert f"ingested {n} files" in first and f"{n} uploaded, 0 already there" in first
    assert f"0 uploaded, {n} already there" in again
    assert LocalStore(tmp_path / "s").exists("raw/d/manifest.json")


def test_real_sample_folder(rsna_sample: Path, tmp_path: Path) -> None:
    """The real files: 16 DICOMs and the CSVs, no test images folder at all."""
    store = LocalStore(tmp_path / "store")
    result = ingest(str(rsna_sample), store)
    expected = folder_files(rsna_sample)
    assert_manifest_true(store, expected)
    dicoms = [k for k in store.list(PREFIX + "stage_2_train_images/") if k.endswith(".dcm")]
    assert len(dicoms) == 16
    assert store.list(PREFIX + "stage_2_test_images/") == []
    assert result.uploaded == len(expected)
