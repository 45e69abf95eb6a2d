"""RetinaNet builder: one input channel, weights from a file (never downloaded), helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection.retinanet import RetinaNetClassificationHead
from torchvision.ops.misc import FrozenBatchNorm2d

from pneumo_core.config.run import preset
from pneumo_core.errors import InputError
from pneumo_core.model.build import (
    MIN_BACKBONE_SHARE,
    FocalClassificationHead,
    build_model,
    detect_batch,
)
from pneumo_core.model.detector import losses_and_detections
from pneumo_core.model.weights import resolve
from pneumo_core.storage.base import file_sha256

S = 64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """A torch hub cache with no weights in it, so nothing found there leaks in."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def _cfg(**overrides):
    return preset("ci", image_size=S, fpn_channels=16, **overrides)


def _build(cfg):
    """As a fold builds a new model: weights resolved from the configuration (no store)."""
    return build_model(cfg, resolve(cfg, None))


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


def test_head_outputs_are_float32_under_bf16_autocast(empty_hub):
    """Boxes are decoded in the deltas' dtype: bfloat16 boxes at 512 px are 2 px coarse, so
    the losses and detections must see float32 however the convolutions ran."""
    model, _ = build_model(_cfg())
    images, targets = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = list(model.backbone(torch.stack(images)).values())
        outputs = model.head(features)
        model.train()
        losses = model(images, targets)
    assert features[0].dtype == torch.bfloat16  # the autocast did run the convolutions
    assert {v.dtype for v in outputs.values()} == {torch.float32}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


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
    model, info = _build(_cfg(weights_path=str(path), freeze_bn=True))
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
    model, _ = _build(_cfg(weights_path=str(path), conv1_init="random"))
    assert not torch.allclose(model.backbone.body.conv1.weight, rgb.conv1.weight.sum(1, True))


def test_detector_weights_file_loads_backbone_and_head(tmp_path, empty_hub):
    source, _ = build_model(_cfg())
    state = source.state_dict()
    rgb_conv1 = torch.randn(64, 3, 7, 7)
    state["backbone.body.conv1.weight"] = rgb_conv1
    path = tmp_path / "detector.pth"
    torch.save(state, path)
    model, info = _build(_cfg(weights_path=str(path)))
    assert info.tensors_skipped == 2  # the one-class head's logits: our head has other classes
    assert torch.allclose(model.backbone.body.conv1.weight, rgb_conv1.sum(1, keepdim=True))
    for name in ("head.regression_head.bbox_reg.weight", "backbone.fpn.layer_blocks.0.0.weight"):
        assert torch.equal(model.state_dict()[name], state[name])


def test_missing_or_bad_weights_file_is_an_input_error(tmp_path, empty_hub):
    with pytest.raises(InputError, match="not found"):
        _build(_cfg(weights_path=str(tmp_path / "nope.pth")))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"bad\.pth"):
        _build(_cfg(weights_path=str(bad)))


def test_pretrained_without_weights_anywhere_fails_naming_the_ways_out(empty_hub):
    with pytest.raises(InputError) as caught:
        _build(_cfg(pretrained=True, backbone="resnet34"))
    message = str(caught.value)
    assert "resnet34" in message and str(empty_hub / "checkpoints") in message
    assert "pneumo weights fetch" in message and "pretrained=false" in message


def test_weights_are_found_in_the_torch_hub_cache(empty_hub, monkeypatch):
    rgb = torchvision.models.resnet18(weights=None)
    published = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    (empty_hub / "checkpoints").mkdir(parents=True)
    path = empty_hub / "checkpoints" / published.url.rsplit("/", 1)[-1]
    torch.save(rgb.state_dict(), path)
    # torchvision's name carries the published hash: a file with other content is refused
    with pytest.raises(InputError, match="does not match"):
        _build(_cfg(pretrained=True))
    # named with its own hash prefix, as torchvision names its files, it is used
    path = path.rename(path.with_name(f"resnet18-{file_sha256(path)[:8]}.pth"))
    monkeypatch.setattr(published.value, "url", f"https://weights.invalid/{path.name}")
    model, info = _build(_cfg(pretrained=True))
    assert info.weights == str(path) and info.weights_origin == "torch hub cache"
    assert info.weights_sha256 == file_sha256(path) and info.tensors_skipped == 2  # fc
    assert torch.allclose(model.backbone.body.conv1.weight, rgb.conv1.weight.sum(1, True))


def test_a_weights_file_for_another_backbone_is_refused(tmp_path, empty_hub):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(InputError, match=f"{MIN_BACKBONE_SHARE:.0%}"):
        _build(_cfg(weights_path=str(path)))


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


def test_image_head_adds_its_loss_and_an_opacity_per_image(empty_hub):
    cfg = _cfg(image_head_weight=0.1, tta_hflip=True)
    model, _ = build_model(cfg)
    images, targets = _batch()
    targets[0]["image_class"] = torch.tensor(0)  # Lung Opacity
    targets[1]["image_class"] = torch.tensor(-1)  # unknown: ignored
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression", "image_class"}
    sum(losses.values()).backward()
    assert model.image_head.weight.grad.abs().sum() > 0
    model.eval()
    detected = detect_batch([model], images, cfg)
    assert all(0.0 <= d.opacity <= 1.0 for d in detected)
    plain, _ = build_model(_cfg())
    plain.eval()
    assert all(d.opacity is None for d in detect_batch([plain], images, _cfg()))
