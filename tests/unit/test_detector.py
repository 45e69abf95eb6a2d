"""The detector's public surface (model/detector.py) against torchvision's own RetinaNet.

These fail when a torchvision upgrade changes what the surface relies on: the steps of
RetinaNet.forward that `losses_and_detections` copies, the private box-loss attribute and the
private skipped resize.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import retinanet

from pneumo_core.config.run import preset
from pneumo_core.model.build import build_model
from pneumo_core.model.detector import (
    detections,
    losses_and_detections,
    set_box_loss,
    set_fixed_size,
    training_losses,
)

S = 64
pytestmark = pytest.mark.usefixtures("one_torch_thread")
BOX_LOSSES = ("l1", "smooth_l1", "giou")


@pytest.fixture
def model():
    """A tiny random detector, scoring every anchor (floor 0), so that eval mode detects."""
    torch.manual_seed(0)
    model, _ = build_model(preset("ci", image_size=S, fpn_channels=16, oof_score_floor=0.0))
    return model


def _batch():
    """Three images: one box, two boxes, none; the last smaller than the model's size, so
    that eval mode resizes it and maps its boxes back (both steps of the copied forward)."""
    torch.manual_seed(1)
    images = [torch.rand(1, S, S), torch.rand(1, S, S), torch.rand(1, 48, 56)]
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
        {
            "boxes": torch.tensor([[4.0, 4.0, 20.0, 50.0], [36.0, 12.0, 60.0, 44.0]]),
            "labels": torch.tensor([1, 1]),
        },
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return images, targets


def test_losses_are_exactly_those_of_the_training_forward(model):
    images, targets = _batch()
    model.train()
    torch.manual_seed(2)
    want = model(images, targets)
    torch.manual_seed(2)
    got, _ = losses_and_detections(model, images, targets)
    torch.manual_seed(2)
    surface = training_losses(model, images, targets)
    assert set(got) == set(want) == set(surface) == {"classification", "bbox_regression"}
    for key, value in want.items():
        assert torch.equal(got[key], value), key
        assert torch.equal(surface[key], value), key


def test_detections_are_exactly_those_of_the_eval_forward(model):
    images, targets = _batch()
    model.eval()
    with torch.no_grad():
        want = model(images)
        _, got = losses_and_detections(model, images, targets)
        surface = detections(model, images)
    assert len(got) == len(want) == len(surface) == len(images)
    assert all(len(w["boxes"]) > 0 for w in want), "nothing detected: the check is empty"
    for g, s, w in zip(got, surface, want, strict=True):
        assert set(g) == set(s) == set(w) == {"boxes", "scores", "labels"}
        for key in w:
            assert torch.equal(g[key], w[key]) and torch.equal(s[key], w[key]), key


def test_the_box_loss_set_is_the_one_torchvision_uses(model, monkeypatch):
    images, targets = _batch()
    model.train()
    used: list[str] = []
    box_loss = retinanet._box_loss

    def spy(kind, *args, **kwargs):
        used.append(kind)
        return box_loss(kind, *args, **kwargs)

    monkeypatch.setattr(retinanet, "_box_loss", spy)
    values = {}
    for kind in BOX_LOSSES:
        set_box_loss(model, kind)
        used.clear()
        torch.manual_seed(2)
        with torch.no_grad():
            values[kind] = training_losses(model, images, targets)["bbox_regression"].item()
        assert used and set(used) == {kind}
    assert len(set(values.values())) == len(BOX_LOSSES), values


def test_the_configured_box_loss_is_set_by_build_model(monkeypatch):
    used: list[str] = []
    box_loss = retinanet._box_loss
    monkeypatch.setattr(
        retinanet, "_box_loss", lambda kind, *a, **k: used.append(kind) or box_loss(kind, *a, **k)
    )
    for kind in BOX_LOSSES:
        model, _ = build_model(preset("ci", image_size=S, fpn_channels=16, box_loss=kind))
        used.clear()
        with torch.no_grad():
            training_losses(model.train(), *_batch())
        assert set(used) == {kind}


def test_fixed_size_training_neither_resizes_nor_draws_from_the_global_rng(model):
    """Folds trained at once in one process rely on this (train.device.GLOBAL_RNG)."""
    set_fixed_size(model)  # build_model set it already; setting it twice is harmless
    model.train()
    small = [torch.rand(1, 48, 48)]
    batch, _ = model.transform(small)
    assert batch.image_sizes == [(48, 48)]
    images, targets = _batch()
    before = torch.get_rng_state()
    training_losses(model, images, targets)
    assert torch.equal(torch.get_rng_state(), before)


def test_each_call_wants_its_mode(model):
    images, targets = _batch()
    with pytest.raises(ValueError, match="eval mode"):
        training_losses(model.eval(), images, targets)
    with pytest.raises(ValueError, match="training mode"):
        detections(model.train(), images)
