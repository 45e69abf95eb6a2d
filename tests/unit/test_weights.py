"""Pretrained weights: torchvision's real download and hash check against a local HTTP server,
the verified file kept in the store, and a fold that loads it with no network and no hub cache."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision

from flows.cli.main import main
from pneumo_core.config.run import preset
from pneumo_core.errors import InputError, NetworkError
from pneumo_core.layout import fold_key
from pneumo_core.model.build import build_model
from pneumo_core.model.weights import fetch, resolve, store_key
from pneumo_core.runs.run import create_run
from pneumo_core.storage.base import file_sha256
from pneumo_core.storage.local import LocalStore
from pneumo_core.train.checkpoint import load_checkpoint
from pneumo_core.train.fold import train_fold

PUBLISHED = torchvision.models.ResNet18_Weights.IMAGENET1K_V1


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def weights_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server (the only replaced part: the network) serving tmp_path/served."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served
    server.shutdown()
    server.server_close()


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def _publish(served: Path, monkeypatch: pytest.MonkeyPatch, base: str, name=None) -> dict:
    """A ResNet-18 state dict with torchvision's names and random values, named as torchvision
    names its files (own sha256 prefix), and torchvision's download URL pointed at it."""
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = served / "upload.pth"
    torch.save(state, path)
    final = path.rename(served / (name or f"resnet18-{file_sha256(path)[:8]}.pth"))
    monkeypatch.setattr(PUBLISHED.value, "url", f"{base}/{final.name}")
    return state


def test_fetch_checks_the_hash_and_a_fold_loads_the_stored_file_offline(
    weights_server, torch_home, tiny_prepared, monkeypatch, capsys
):
    base, served = weights_server
    state = _publish(served, monkeypatch, base)
    store = tiny_prepared.store
    (key,) = fetch(store, "resnet18")
    name = PUBLISHED.url.rsplit("/", 1)[-1]
    assert key == store_key(name)
    record = store.get_json(f"{key}.json")
    assert record["sha256"] == store.sha256(key) == file_sha256(served / name)
    assert fetch(store, "resnet18") == [key]  # already stored: nothing downloaded again
    argv = ["weights", "fetch", "--backbone", "resnet18", "--storage", store.uri]
    assert main(argv) == 0
    assert record["sha256"] in capsys.readouterr().out

    # A clean environment: empty hub cache, and any download fails the test.
    monkeypatch.setenv("TORCH_HOME", str(torch_home.parent / "clean-home"))

    def no_network(*args, **kwargs):
        raise AssertionError("training tried to download weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    config = preset(
        "ci",
        dataset=tiny_prepared.dataset,
        image_size=tiny_prepared.image_size,
        fpn_channels=16,
        epochs=1,
        pretrained=True,
        trainable_backbone_layers=0,  # the ResNet stays as loaded (conv1 always trains)
    )
    found = resolve(config, store)
    assert found.origin.startswith("store") and found.sha256 == record["sha256"]
    model, _ = build_model(config, found)
    body = model.backbone.body.state_dict()
    assert torch.allclose(body["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    for name_, tensor in state.items():
        if name_ in body and name_ != "conv1.weight":
            assert torch.equal(body[name_], tensor), name_

    run_id = create_run(store, config, "offline")
    done = train_fold(store, run_id, 0)
    info = done.model_info
    assert info["weights_sha256"] == record["sha256"] and info["frozen_bn"]
    assert info["tensors_skipped"] == 2 and info["backbone_share"] == 1.0  # only fc unused
    trained = load_checkpoint(store, fold_key(run_id, 0, "checkpoint-last.pt"))["model"]
    for part in ("bn1", "layer1.0.bn1", "layer4.1.bn2"):  # frozen batch-norm statistics
        for stat in ("running_mean", "running_var", "weight", "bias"):
            assert torch.equal(trained[f"backbone.body.{part}.{stat}"], state[f"{part}.{stat}"])
    assert torch.equal(
        trained["backbone.body.layer3.0.conv2.weight"], state["layer3.0.conv2.weight"]
    )


def test_a_file_whose_hash_does_not_match_is_refused(weights_server, torch_home, monkeypatch):
    base, served = weights_server
    _publish(served, monkeypatch, base, name="resnet18-00000000.pth")
    store = LocalStore(torch_home.parent / "store")
    with pytest.raises(NetworkError, match="hash"):
        fetch(store, "resnet18")
    assert store.list("models/") == []


def test_no_network_fails_clearly(torch_home, monkeypatch):
    monkeypatch.setattr(PUBLISHED.value, "url", "http://127.0.0.1:9/resnet18-f37072fd.pth")
    store = LocalStore(torch_home.parent / "store")
    with pytest.raises(NetworkError, match="pneumo weights fetch"):
        fetch(store, "resnet18")


def test_pretrained_run_without_weights_stops_before_training(torch_home, tiny_prepared):
    store = tiny_prepared.store
    config = preset("ci", dataset=tiny_prepared.dataset, image_size=64, pretrained=True)
    run_id = create_run(store, config, "no-weights")
    with pytest.raises(InputError, match="pretrained=false"):
        train_fold(store, run_id, 0)
    assert not store.exists(fold_key(run_id, 0, "checkpoint-last.pt"))
