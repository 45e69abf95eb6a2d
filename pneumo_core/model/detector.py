"""The detector's public surface: how the project configures and runs torchvision's RetinaNet.

torchvision exposes some of what this project needs only through private attributes (the
regression head's box loss, the transform's skipped resize) and gives either losses or
detections from a forward pass, never both. Everything that reaches into those internals is
kept here, behind a few functions, in the manner of MONAI's RetinaNetDetector setters:

- `set_box_loss(model, kind)`, `set_fixed_size(model)`: configuration set at build time;
- `training_losses(model, images, targets)`: the losses of a training batch;
- `detections(model, images)`: the detections of a batch;
- `losses_and_detections(model, images, targets)`: both from one forward pass (validation).

Building, training, inference and the benchmarks call only these, so a future batched
training step (or a torchvision upgrade) can replace what is behind `training_losses` without
changing its callers. tests/unit/test_detector.py fails when a torchvision release changes
what `losses_and_detections` copies from RetinaNet's forward.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor
from torchvision.models.detection import RetinaNet

BoxLoss = Literal["l1", "smooth_l1", "giou"]  # what torchvision's `_box_loss` accepts


def set_box_loss(model: RetinaNet, kind: BoxLoss) -> None:
    """The regression head's box loss (torchvision's default is l1; its v2 uses giou)."""
    head = model.head.regression_head
    if not hasattr(head, "_loss_type"):  # the private attribute torchvision reads
        raise RuntimeError("this torchvision's RetinaNet regression head has no _loss_type")
    head._loss_type = kind


def set_fixed_size(model: RetinaNet) -> None:
    """No resize in training: the images are already the model's size. Besides the wasted
    interpolation, torchvision's training resize draws a size from torch's global RNG at every
    image, which folds trained at once in threads of one process must not do (they take turns
    at that RNG; see pneumo_core.train.device.GLOBAL_RNG). Evaluation never resizes randomly."""
    if not hasattr(model.transform, "_skip_resize"):  # the private flag torchvision reads
        raise RuntimeError("this torchvision's GeneralizedRCNNTransform has no _skip_resize")
    model.transform._skip_resize = True


def training_losses(
    model: RetinaNet, images: list[Tensor], targets: list[dict[str, Tensor]]
) -> dict[str, Tensor]:
    """A batch's losses, the model in training mode: classification and bbox_regression, and
    image_class for a model with an image head. Their sum is the loss to minimise."""
    if not model.training:
        raise ValueError("training_losses: the model is in eval mode")
    return model(images, targets)


def detections(model: RetinaNet, images: list[Tensor]) -> list[dict[str, Tensor]]:
    """A batch's detections, the model in eval mode: per image boxes (xyxy, input pixels),
    scores and labels, and opacity for a model with an image head."""
    if model.training:
        raise ValueError("detections: the model is in training mode")
    return model(images)


def losses_and_detections(
    model: RetinaNet, images: list[Tensor], targets: list[dict[str, Tensor]]
) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
    """Validation: the box losses and the detections from one forward pass (torchvision's
    forward gives one or the other depending on train/eval mode). The steps are those of
    RetinaNet.forward; an image head's loss and opacity are not computed."""
    original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    batch, targets = model.transform(images, targets)
    features = list(model.backbone(batch.tensors).values())
    head_outputs = model.head(features)
    anchors = model.anchor_generator(batch, features)
    losses = model.compute_loss(targets, head_outputs, anchors)
    # The head's outputs are concatenated over the pyramid levels: split them back per level.
    per_level = [f.size(2) * f.size(3) for f in features]
    per_anchor = head_outputs["cls_logits"].size(1) // sum(per_level)
    per_level = [n * per_anchor for n in per_level]
    split_outputs = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
    split_anchors = [list(a.split(per_level)) for a in anchors]
    found = model.postprocess_detections(split_outputs, split_anchors, batch.image_sizes)
    found = model.transform.postprocess(found, batch.image_sizes, original_sizes)
    return losses, found
