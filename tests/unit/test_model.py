"""RetinaNet builder: one input channel, weights from a file (never downloaded), helpers."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection.retinanet import RetinaNetClassificationHead
from torchvision.ops.misc import FrozenBatchNorm2d

from pneumo_core.config import preset
from pneumo_core.errors import InputError
from pneumo_core.model import (
    FocalClassificationHead,
    build_model,
    detect_batch,
    losses_and_detections,
)

S = 64


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """A torch hub cache with no weights in it, so nothing found there leaks in."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def _cfg(**overrides):
    return preset("ci", image_size=S, fpn_channels=16, **overrides)


def _batch(n=2):
    torch.manual_seed(0)
    images = [torch.rand(1, S, S) for _ in range(n)]
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)},
    ][:n]
    return images, targets


def test_one_channel_model_trains_and_detects(empty_hub):
    model, info = build_model(_cfg())
    assert info.weights is None and not info.frozen_bn
    assert model.backbone.body.conv1.in_channels == 1
    assert model.transform.image_mean == [0.485] and model.transform.image_std == [0.229]
    assert model.transform.min_size == (S,) and model.transform.max_size == S
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression"}
    sum(losses.values()).backward()
    assert model.backbone.body.conv1.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[0]["boxes"].shape[-1] == 4


@pytest.mark.parametrize("backbone", ["resnet34", "resnet50"])
def test_other_backbones_build(backbone, empty_hub):
    model, _ = build_model(_cfg(backbone=backbone))
    model.eval()
    with torch.no_grad():
        assert len(model([torch.rand(1, S, S)])) == 1


def test_resnet_weights_file_gives_summed_conv1_and_frozen_bn(tmp_path, empty_hub):
    rgb = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(rgb.state_dict(), path)
    model, info = build_model(_cfg(weights_path=str(path), freeze_bn=True))
    body = model.backbone.body
    assert info.weights == str(path) and info.frozen_bn
    expected = rgb.conv1.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(body.conv1.weight, expected)
    assert torch.equal(body.layer3[0].conv1.weight, rgb.layer3[0].conv1.weight)
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert torch.equal(body.layer1[0].bn1.running_var, rgb.layer1[0].bn1.running_var)


def test_random_conv1_init_ignores_pretrained_kernels(tmp_path, empty_hub):
    rgb = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(rgb.state_dict(), path)
    model, _ = build_model(_cfg(weights_path=str(path), conv1_init="random"))
    assert not torch.allclose(model.backbone.body.conv1.weight, rgb.conv1.weight.sum(1, True))


def test_detector_weights_file_loads_backbone_and_head(tmp_path, empty_hub):
    source, _ = build_model(_cfg())
    state = source.state_dict()
    rgb_conv1 = torch.randn(64, 3, 7, 7)
    state["backbone.body.conv1.weight"] = rgb_conv1
    path = tmp_path / "detector.pth"
    torch.save(state, path)
    model, _ = build_model(_cfg(weights_path=str(path)))
    assert torch.allclose(model.backbone.body.conv1.weight, rgb_conv1.sum(1, keepdim=True))
    for name in ("head.regression_head.bbox_reg.weight", "backbone.fpn.layer_blocks.0.0.weight"):
        assert torch.equal(model.state_dict()[name], state[name])


def test_missing_or_bad_weights_file_is_an_input_error(tmp_path, empty_hub):
    with pytest.raises(InputError, match="not found"):
        build_model(_cfg(weights_path=str(tmp_path / "nope.pth")))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"bad\.pth"):
        build_model(_cfg(weights_path=str(bad)))


def test_no_weights_anywhere_says_so_once(empty_hub, caplog):
    caplog.set_level(logging.WARNING, logger="pneumo_core.model")
    for _ in range(2):
        build_model(_cfg(pretrained=True, backbone="resnet34"))
    messages = [r.getMessage() for r in caplog.records if "RANDOM weights" in r.getMessage()]
    assert len(messages) == 1 and "resnet34" in messages[0]


def test_weights_are_found_in_the_torch_hub_cache(empty_hub):
    rgb = torchvision.models.resnet18(weights=None)
    name = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    (empty_hub / "checkpoints").mkdir(parents=True)
    torch.save(rgb.state_dict(), empty_hub / "checkpoints" / name)
    model, info = build_model(_cfg(pretrained=True))
    assert info.weights.endswith(name)
    assert torch.allclose(model.backbone.body.conv1.weight, rgb.conv1.weight.sum(1, True))


def test_losses_and_detections_match_torchvision_forward(empty_hub):
    model, _ = build_model(_cfg())
    images, targets = _batch()
    model.eval()
    with torch.no_grad():
        losses, detections = losses_and_detections(model, images, targets)
        reference = model(images)
        model.train()
        model.backbone.body.apply(lambda m: m.eval() if isinstance(m, torch.nn.BatchNorm2d) else m)
        train_losses = model(images, targets)
    for got, want in zip(detections, reference, strict=True):
        assert torch.equal(got["boxes"], want["boxes"]) and torch.equal(
            got["scores"], want["scores"]
        )
    for key, value in train_losses.items():
        assert torch.allclose(losses[key], value)


def test_focal_head_matches_torchvision_and_uses_its_parameters():
    torch.manual_seed(0)
    ours = FocalClassificationHead(16, 9, 2, alpha=0.25, gamma=2.0)
    theirs = RetinaNetClassificationHead(16, 9, 2)
    logits = {"cls_logits": torch.randn(2, 90, 2)}
    targets = [{"labels": torch.tensor([1, 1])}, {"labels": torch.zeros(0, dtype=torch.int64)}]
    matched = [torch.randint(-2, 2, (90,)), torch.full((90,), -1)]
    want = theirs.compute_loss(targets, logits, matched)
    assert torch.allclose(ours.compute_loss(targets, logits, matched), want)
    other = FocalClassificationHead(16, 9, 2, alpha=0.5, gamma=0.0)
    assert not torch.allclose(other.compute_loss(targets, logits, matched), want)


def test_flip_tta_maps_mirrored_boxes_back(empty_hub):
    """On a left-right symmetric image, the mirrored view's boxes, mapped back, are the mirror
    images of the plain view's boxes: the union (fusion "none") is itself symmetric."""
    cfg = _cfg(
        oof_score_floor=0.0,
        tta_hflip=True,
        **{"postprocess.fusion": "none", "postprocess.skip_threshold": 0.0},
    )
    model, _ = build_model(cfg)
    model.eval()
    half = torch.rand(1, S, S // 2)
    image = torch.cat([half, half.flip(-1)], dim=-1)
    (plain,) = detect_batch([model], [image], cfg.with_overrides({"tta_hflip": False}))
    (both,) = detect_batch([model], [image], cfg)
    assert len(both[0]) == 2 * len(plain[0]) > 0
    mirrored = plain[0].copy()
    mirrored[:, 0] = S - plain[0][:, 0] - plain[0][:, 2]
    expected = np.concatenate([plain[0], mirrored]).astype(np.float64)
    assert np.allclose(np.unique(both[0].round(3), axis=0), np.unique(expected.round(3), axis=0))
