"""`pneumo` as a user meets it, in a real subprocess: bad arguments, configuration, run ids
and stores fail before Prefect starts, in one line on stderr, with exit 2 for the user's
mistakes and exit 1 for the machine's (a file as store, a read-only store, `--out` a folder);
`--debug` / PNEUMO_DEBUG shows the traceback; nothing is written."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pneumo_core.config.run import preset
from pneumo_core.data.synthetic import generate
from pneumo_core.runs.run import Run, create_run
from pneumo_core.storage.open import open_store

PNEUMO = [sys.executable, "-m", "flows.cli"]


def pneumo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "PNEUMO_DEBUG"} | (env or {})
    return subprocess.run(
        [*PNEUMO, *args], capture_output=True, text=True, timeout=300, env=environment
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """The command failed with `code`, one stderr line naming every fragment, before Prefect."""
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "prefect" not in result.stderr.lower()
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("source")
    return generate(out, n_train=4, n_test=2, image_size=64, seed=1)


def run_args(source: Path, store: Path, *extra: str) -> list[str]:
    return ["run", "--source", str(source), "--storage", str(store), "--preset", "ci", *extra]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--set", "lr=abc"], "field lr='abc'"),
        (["--set", "lr=nan"], "field lr="),
        (["--set", "focal_alpha=2"], "field focal_alpha="),
        (["--set", "augment.hflip_p=-1"], "field augment.hflip_p="),
        (["--set", "nope=1"], "unknown field nope"),
        (["--set", "lr"], "KEY=VALUE"),
        (["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
        (["--train-fold", "7"], "folds [7]"),
        (["--run-id", "My run"], "run id 'My run'"),
        (["--epochs", "x"], "argument --epochs: invalid int value"),
        (["--set", "device=cuda:9"], "device='cuda:9'"),
    ],
)
def test_user_errors_are_one_line_exit_2_and_write_nothing(source, tmp_path, extra, fragment):
    store = tmp_path / "store"
    result = pneumo(*run_args(source, store, *extra))
    one_line_error(result, 2, fragment)
    assert not (store / "runs").exists() and not (store / "raw").exists()


def test_a_missing_source_and_a_store_inside_the_source_are_refused(source, tmp_path):
    one_line_error(pneumo(*run_args(tmp_path / "nothing", tmp_path / "s")), 2, "no such folder")
    inside = source / "store"
    one_line_error(pneumo(*run_args(source, inside)), 2, "inside the source folder")
    one_line_error(
        pneumo("ingest", "--source", str(source), "--storage", str(inside)),
        2,
        "inside the source folder",
    )
    assert not any(inside.rglob("*.json"))


def test_resuming_with_another_configuration_names_the_fields(source, tmp_path):
    store = open_store(tmp_path / "store")
    create_run(store, preset("ci", epochs=1, image_size=64), "exp-1")
    before = sorted(store.list())
    result = pneumo(*run_args(source, tmp_path / "store", "--run-id", "exp-1", "--epochs", "3"))
    one_line_error(result, 2, "run exp-1 exists", "epochs (stored 1, asked 3)")
    result = pneumo(
        "run", "--source", str(source), "--storage", str(tmp_path / "store"),
        "--run-id", "exp-1", "--preset", "default", "--set", "image_size=96",
    )  # fmt: skip
    one_line_error(result, 2, "preset (stored 'ci', asked 'default')", "image_size (stored 64")
    assert sorted(store.list()) == before


def test_a_file_as_store_is_a_system_error(source, tmp_path):
    store = tmp_path / "store"
    store.write_text("not a folder")
    one_line_error(pneumo(*run_args(source, store)), 1, "it is a file, not a folder")
    assert store.read_text() == "not a folder"


@contextlib.contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """A read-only mount as root (permissions do not stop root), else a 0555 folder."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)])
    if mounted.returncode != 0:
        pytest.skip("running as root without the right to mount a read-only tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_read_only_store_is_a_system_error(source, tmp_path):
    with read_only_folder(tmp_path / "store") as store:
        line = one_line_error(pneumo(*run_args(source, store)), 1)
        assert "Read-only file system" in line or "Permission denied" in line, line


@contextlib.contextmanager
def tiny_disk(path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a disk that fills up for real."""
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem to fill up needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)])
    if mounted.returncode != 0:
        pytest.skip("running as root without the right to mount a tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_is_a_system_error_and_leaves_no_half_written_object(tmp_path):
    data = generate(tmp_path / "big", n_train=8, n_test=2, image_size=256, seed=2)
    with tiny_disk(tmp_path / "store") as store:
        result = pneumo("ingest", "--source", str(data), "--storage", str(store))
        assert result.returncode == 1, result.stderr[-3000:]
        assert "Traceback" not in result.stderr  # ingest logs its progress; the error is last
        last = result.stderr.splitlines()[-1]
        assert last.startswith("pneumo ingest: error: cannot write file://"), last
        assert last.endswith("No space left on device"), last
        assert not list(store.rglob("*.pneumo-tmp"))
        assert not (store / "raw" / "rsna-pneumonia-detection-challenge" / "manifest.json").exists()


def test_out_as_a_folder_is_a_system_error(tmp_path):
    result = pneumo(
        "predict", "--run", "exp-1", "--images", str(tmp_path), "--out", str(tmp_path),
        "--storage", str(tmp_path / "store"),
    )  # fmt: skip
    one_line_error(result, 1, "--out is a folder", str(tmp_path))


def test_debug_shows_the_traceback(source, tmp_path):
    args = run_args(source, tmp_path / "store", "--set", "lr=abc")
    for result in (pneumo("--debug", *args), pneumo(*args, env={"PNEUMO_DEBUG": "1"})):
        assert result.returncode != 0
        assert "Traceback" in result.stderr and "InputError" in result.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["prepare", "--workers", "0"], "argument --workers: must be at least 1, got 0"),
        (["prepare", "--image-size", "5000"], "argument --image-size: must be at most 4096"),
        (["prepare", "--folds", "1"], "argument --folds: must be at least 2, got 1"),
        (["synth", "--seed", "-1"], "argument --seed: must be at least 0, got -1"),
        (["synth", "--n-train", "0"], "argument --n-train: must be at least 1, got 0"),
        (["synth", "--image-size", "4097", "--n-train", "1", "--n-test", "0"], "--image-size"),
        (["train-fold", "--run", "r", "--fold", "-1"], "argument --fold: must be at least 0"),
        (["synth", "--n-test", "x"], "argument --n-test: invalid int value: 'x'"),
    ],
)
def test_counts_and_sizes_out_of_range_are_refused_naming_the_flag(tmp_path, args, fragment):
    store = tmp_path / "store"
    where = ["--out", str(tmp_path / "synth")] if args[0] == "synth" else ["--storage", str(store)]
    one_line_error(pneumo(*args, *where), 2, fragment)
    assert not store.exists() and not (tmp_path / "synth").exists()


def test_a_huge_image_size_is_refused_while_parsing() -> None:
    """The 100,000 px that once ended in a 37 GiB MemoryError: refused before any work."""
    from flows.cli.main import build_parser

    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["synth", "--out", "x", "--image-size", "100000"])
    assert stopped.value.code == 2


def test_check_submission_of_a_missing_file_is_a_user_error(tmp_path):
    missing = tmp_path / "nothing.csv"
    one_line_error(pneumo("check-submission", str(missing)), 2, f"{missing}: no such file")
    present = tmp_path / "submission.csv"
    present.write_text("patientId,PredictionString\na,\n")
    result = pneumo("check-submission", str(present), "--sample", str(missing))
    one_line_error(result, 2, f"--sample {missing}: no such file")
    assert pneumo("check-submission", str(present)).returncode == 0


LIGHT = (
    "import sys; from flows.cli.main import main; code = main(sys.argv[1:]); "
    "print(code, 'torch' in sys.modules, 'prefect' in sys.modules)"
)


def light_command(*args: str) -> tuple[int, str]:
    """The command's exit code and its one stderr line; it must not have imported torch
    or prefect (seconds of imports) to say so."""
    result = subprocess.run(
        [sys.executable, "-c", LIGHT, *args], capture_output=True, text=True, timeout=300
    )
    code, torch, prefect = result.stdout.split()
    assert (torch, prefect) == ("False", "False"), (args, result.stderr[-2000:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    return int(code), lines[0]


def test_argument_errors_answer_before_torch_and_prefect_are_imported(tmp_path):
    store = open_store(tmp_path / "store")
    create_run(store, preset("ci"), "untrained")  # configured, no fold trained yet
    images, out = tmp_path / "images", str(tmp_path / "out.csv")
    images.mkdir()
    predict = ["predict", "--storage", store.uri, "--out", out]
    code, line = light_command(*predict, "--run", "untrained", "--images", str(tmp_path / "no"))
    assert code == 2 and f"--images {tmp_path / 'no'}: no such file or folder" in line
    code, line = light_command(*predict, "--run", "nope", "--images", str(images))
    assert code == 2 and f"run nope: no runs/nope/config.json in {store.uri}" in line
    code, line = light_command(*predict, "--run", "untrained", "--images", str(images))
    assert code == 2 and "run untrained: no fold has a checkpoint yet" in line

    train = ["train-fold", "--storage", store.uri]
    code, line = light_command(*train, "--run", "nope", "--fold", "0")
    assert code == 2 and "run nope: no runs/nope/config.json" in line
    code, line = light_command(*train, "--run", "untrained", "--fold", "5")
    assert code == 2 and "folds [5]: choose among 0..1" in line
    code, line = light_command(*train, "--run", "new", "--fold", "5", "--preset", "ci")
    assert code == 2 and "folds [5]" in line and not Run(store, "new").exists()

    as_file = tmp_path / "a-file"
    as_file.write_text("not a store")
    code, line = light_command(
        "weights", "fetch", "--backbone", "resnet18", "--storage", str(as_file)
    )
    assert code == 1 and "it is a file, not a folder" in line
