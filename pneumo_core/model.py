"""RetinaNet builder: ResNet-18/34/50 FPN, one input channel, optional pretrained weights.

Weights come from `config.weights_path` or torchvision's download cache when present;
nothing is ever downloaded (workers may have no network). A pretrained RGB `conv1` becomes
a 1-channel one by summing its kernels over the colour axis, which is exactly the RGB
network applied to a grey image repeated on three channels.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import (
    RetinaNet_ResNet50_FPN_Weights,
    RetinaNetClassificationHead,
    RetinaNetHead,
)
from torchvision.ops import sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from pneumo_core import postprocess
from pneumo_core.config import RunConfig
from pneumo_core.errors import InputError

log = logging.getLogger(__name__)

Detection = tuple[np.ndarray, np.ndarray]  # boxes xywh [M, 4] (cache px), scores [M]

NUM_CLASSES = 2  # background + opacity, as torchvision counts them
IMAGE_MEAN = [0.485]
IMAGE_STD = [0.229]
_RESNETS = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
}
_warned: set[str] = set()


@dataclass(frozen=True)
class ModelInfo:
    """How a model was built; stored in checkpoints so inference rebuilds the same modules."""

    weights: str | None  # file the pretrained weights came from, None = random
    frozen_bn: bool


def build_model(
    config: RunConfig, *, load_weights: bool = True, frozen_bn: bool | None = None
) -> tuple[RetinaNet, ModelInfo]:
    """The detector for `config`. `load_weights=False` skips pretrained weights (a checkpoint
    will overwrite them); `frozen_bn` then restores the normalisation the checkpoint used."""
    state, source = _pretrained_state(config) if load_weights else (None, None)
    if frozen_bn is None:
        # Freezing batch norm keeps pretrained statistics; random ones are not worth keeping.
        frozen_bn = config.freeze_bn and state is not None
    build_resnet, _ = _RESNETS[config.backbone]
    body = build_resnet(weights=None, norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d)
    rgb_conv1 = None
    if state is not None and _is_detector_state(state):
        rgb_conv1 = state.get("backbone.body.conv1.weight")
    elif state is not None:
        rgb_conv1 = state.get("conv1.weight")
        _load_matching(body, {k: v for k, v in state.items() if not k.startswith("conv1.")})
    _freeze_layers(body, config.trainable_backbone_layers)
    # After freezing, as the seed did: the new conv1 always trains.
    body.conv1 = _one_channel_conv1(body.conv1, rgb_conv1, config.conv1_init)

    c = config.fpn_channels
    stage2 = body.inplanes // 8  # 64 for BasicBlock resnets, 256 for Bottleneck ones
    backbone = BackboneWithFPN(
        body,
        return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=[stage2 * 2, stage2 * 4, stage2 * 8],
        out_channels=c,
        extra_blocks=LastLevelP6P7(c, c),
    )
    anchors = _anchor_generator()
    n_anchors = anchors.num_anchors_per_location()[0]
    # GroupNorm in the head (as torchvision's RetinaNet v2) lets a head trained from scratch
    # converge in a few epochs; None keeps the original RetinaNet head.
    norm = partial(nn.GroupNorm, min(32, c // 4)) if config.head_groupnorm else None
    head = RetinaNetHead(c, n_anchors, NUM_CLASSES, norm_layer=norm)
    head.classification_head = FocalClassificationHead(
        c, n_anchors, NUM_CLASSES, config.focal_alpha, config.focal_gamma, norm
    )
    head.regression_head._loss_type = config.box_loss
    model = RetinaNet(
        backbone,
        NUM_CLASSES,
        min_size=config.image_size,
        max_size=config.image_size,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
        anchor_generator=anchors,
        head=head,
        score_thresh=config.oof_score_floor,
        detections_per_img=config.detections_per_img,
    )
    if state is not None and _is_detector_state(state):
        skip = ("backbone.body.conv1.", "head.classification_head.cls_logits.")
        _load_matching(model, {k: v for k, v in state.items() if not k.startswith(skip)})
    return model, ModelInfo(weights=source, frozen_bn=frozen_bn)


class FocalClassificationHead(RetinaNetClassificationHead):
    """torchvision's head with the focal loss's alpha and gamma as parameters."""

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        alpha: float,
        gamma: float,
        norm_layer: Callable[..., nn.Module] | None = None,
    ):
        super().__init__(in_channels, num_anchors, num_classes, norm_layer=norm_layer)
        self.alpha = alpha
        self.gamma = gamma

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        matched_idxs: list[Tensor],
    ) -> Tensor:
        losses = []
        for target, logits, matched in zip(
            targets, head_outputs["cls_logits"], matched_idxs, strict=True
        ):
            foreground = matched >= 0
            wanted = torch.zeros_like(logits)
            wanted[foreground, target["labels"][matched[foreground]]] = 1.0
            valid = matched != self.BETWEEN_THRESHOLDS
            loss = sigmoid_focal_loss(
                logits[valid], wanted[valid], alpha=self.alpha, gamma=self.gamma, reduction="sum"
            )
            losses.append(loss / max(1, int(foreground.sum())))
        return torch.stack(losses).sum() / len(targets)


def losses_and_detections(
    model: RetinaNet, images: list[Tensor], targets: list[dict[str, Tensor]]
) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
    """Validation losses and detections from one forward pass (torchvision's forward gives
    one or the other depending on train/eval mode)."""
    original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    batch, targets = model.transform(images, targets)
    features = list(model.backbone(batch.tensors).values())
    head_outputs = model.head(features)
    anchors = model.anchor_generator(batch, features)
    losses = model.compute_loss(targets, head_outputs, anchors)
    per_level = [f.size(2) * f.size(3) for f in features]
    per_anchor = head_outputs["cls_logits"].size(1) // sum(per_level)
    per_level = [n * per_anchor for n in per_level]
    split_outputs = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
    split_anchors = [list(a.split(per_level)) for a in anchors]
    detections = model.postprocess_detections(split_outputs, split_anchors, batch.image_sizes)
    detections = model.transform.postprocess(detections, batch.image_sizes, original_sizes)
    return losses, detections


@torch.no_grad()
def detect_batch(
    models: Sequence[RetinaNet], images: list[Tensor], config: RunConfig
) -> list[Detection]:
    """Per image: every model's boxes, on the image and (with TTA) its mirror, fused into one
    set (xywh, cache px). A single model without TTA is returned unfused."""
    width = images[0].shape[-1]
    variants: list[list[Detection]] = [[] for _ in images]
    for model in models:
        for flipped in (False, True) if config.tta_hflip else (False,):
            batch = [img.flip(-1) for img in images] if flipped else images
            for found, output in zip(variants, model(batch), strict=True):
                boxes = output["boxes"].float().cpu().numpy()
                if flipped:
                    boxes = np.stack(
                        [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1
                    )
                xywh = boxes.copy()
                xywh[:, 2:] -= xywh[:, :2]
                found.append((xywh, output["scores"].float().cpu().numpy()))
    if len(variants[0]) == 1:
        return [v[0] for v in variants]
    return [postprocess.fuse(v, config.postprocess, image_size=width) for v in variants]


def _anchor_generator() -> AnchorGenerator:
    """torchvision's RetinaNet anchors: 4x the stride of each level (32 px on P3 .. 512 on P7),
    three scales and three aspect ratios per position."""
    sizes = tuple(
        tuple(round(base * 2 ** (k / 3)) for k in range(3)) for base in (32, 64, 128, 256, 512)
    )
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def _pretrained_state(config: RunConfig) -> tuple[dict[str, Tensor] | None, str | None]:
    if config.weights_path:
        path = Path(config.weights_path).expanduser()
        if not path.is_file():
            raise InputError(f"weights_path {path}: file not found")
        return _read_state(path), str(path)
    if not config.pretrained:
        _log_once(f"{config.backbone}: pretrained=false, starting from RANDOM weights")
        return None, None
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    candidates = [checkpoints / Path(_RESNETS[config.backbone][1].url).name]
    if config.backbone == "resnet50":
        candidates.insert(0, checkpoints / Path(RetinaNet_ResNet50_FPN_Weights.COCO_V1.url).name)
    for path in candidates:
        if path.is_file():
            log.info("loading pretrained weights from %s", path)
            return _read_state(path), str(path)
    _log_once(
        f"{config.backbone}: no pretrained weights found (looked for "
        f"{', '.join(str(p) for p in candidates)}; set weights_path to use a file), "
        "starting from RANDOM weights"
    )
    return None, None


def _read_state(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise InputError(f"weights_path {path}: not a readable torch state dict ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # one of our own checkpoints
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(f"weights_path {path}: expected a state dict of tensors")
    return OrderedDict(state)


def _is_detector_state(state: dict[str, Tensor]) -> bool:
    return any(key.startswith("backbone.body.") for key in state)


def _load_matching(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Load every tensor whose name and shape match; report the rest once."""
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(usable, strict=False)
    skipped = sorted(set(state) - set(usable))
    if skipped:
        log.info(
            "pretrained weights: %d tensors loaded, %d skipped (e.g. %s)",
            len(usable),
            len(skipped),
            skipped[0],
        )


def _one_channel_conv1(conv: nn.Conv2d, rgb_weight: Tensor | None, init: str) -> nn.Conv2d:
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    if rgb_weight is not None and init == "sum_rgb":
        with torch.no_grad():
            new.weight.copy_(rgb_weight.sum(dim=1, keepdim=True))
    return new


def _freeze_layers(body: nn.Module, trainable: int) -> None:
    """Same rule as torchvision's `trainable_backbone_layers` (5 = everything trains)."""
    layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable]
    if trainable == 5:
        layers.append("bn1")
    for name, param in body.named_parameters():
        if not any(name.startswith(layer) for layer in layers):
            param.requires_grad_(False)


def _log_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)
