"""Local stores: a file URI must name an absolute path; opening a store writes nothing (its
folder appears with the first object), so read-only commands and refused ones leave no folder
behind; and a folder that is not a pneumo store is named as such."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli.main import main
from pneumo_core.data.ingest import ingest
from pneumo_core.data.synthetic import generate
from pneumo_core.errors import InputError, ObjectNotFound, StorageError
from pneumo_core.storage.local import LocalStore
from pneumo_core.storage.open import check_is_store, local_path, open_store


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("file://", "has no absolute path"),
        ("file:", "has no absolute path"),
        ("file:data/store", "has no absolute path"),
        ("file://data/store", "names the host 'data', not a folder"),
        ("file://~/store", "names the host '~'"),
    ],
)
def test_a_file_uri_without_an_absolute_path_is_refused(
    uri: str, problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=problem) as caught:
        open_store(uri)
    assert "file:///absolute/path" in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # nothing made in the current folder


def test_file_uri_forms_that_name_a_path(tmp_path: Path) -> None:
    spaced = tmp_path / "a store"
    assert local_path(spaced.as_uri()) == spaced  # percent-encoded
    assert local_path(f"file://localhost{tmp_path}") == tmp_path
    assert local_path(f"file:{tmp_path}") == tmp_path
    assert local_path("relative/store") == Path("relative/store")  # a plain path: as given
    assert open_store(f"file://{tmp_path}/s").uri == (tmp_path / "s").as_uri()


def test_opening_and_reading_a_store_create_no_folder(tmp_path: Path) -> None:
    root = tmp_path / "missing" / "store"
    store = open_store(str(root))
    assert store.list("") == [] and store.list("runs/") == []
    assert not store.exists("runs/x/config.json")
    assert store.read_versioned("locks/x.json") is None
    with pytest.raises(ObjectNotFound):
        store.get_bytes("runs/x/config.json")
    store.delete("runs/x/config.json")
    assert store.delete_prefix("runs/") == 0
    assert not (tmp_path / "missing").exists()
    store.put_bytes("runs/x/config.json", b"{}")  # the first write makes the folders
    assert (root / "runs" / "x" / "config.json").read_bytes() == b"{}"


def test_a_conditional_write_under_a_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    store = LocalStore(tmp_path / "file" / "store")
    with pytest.raises(StorageError, match="cannot write"):
        store.put_bytes_if("locks/x.json", b"{}", None)


def test_read_only_commands_leave_no_folder(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    main(["runs", "--storage", str(missing)])
    main(["champion", "--storage", str(missing)])
    assert not missing.exists()


def test_a_refused_ingest_leaves_no_store_folder(tmp_path: Path) -> None:
    source = generate(tmp_path / "synth", n_train=2, n_test=1, image_size=64, seed=1)
    inside = source / "store"
    assert main(["ingest", "--source", str(source), "--storage", str(inside)]) == 2
    elsewhere = tmp_path / "store"
    assert main(["ingest", "--source", str(tmp_path / "none"), "--storage", str(elsewhere)]) == 2
    assert not inside.exists() and not elsewhere.exists()


def test_a_folder_that_is_not_a_store_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(InputError, match=r"no pneumo store at .*missing: the folder does not"):
        check_is_store(open_store(str(missing)))
    assert not missing.exists()

    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("passwd", "hosts", "ssl"):
        (etc / name).write_text("x")
    with pytest.raises(InputError, match=r"etc is not a pneumo store: it holds hosts, passwd"):
        check_is_store(open_store(str(etc)))

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden").write_text("x")
    check_is_store(open_store(str(empty)))  # a new store: nothing in it yet

    source = generate(tmp_path / "synth", n_train=2, n_test=1, image_size=64, seed=1)
    store = open_store(str(tmp_path / "store"))
    ingest(str(source), store, progress=False)
    check_is_store(store)
