"""RetinaNet builder: ResNet-18/34/50 FPN, one input channel, optional pretrained weights.

Which weights file to start from is decided by `weights.resolve` (weights_path, the store,
torch's hub cache); nothing is downloaded here. A pretrained RGB `conv1` becomes a 1-channel
one by summing its kernels over the colour axis, which is exactly the RGB network applied to
a grey image repeated on three channels. A file that fills less than MIN_BACKBONE_SHARE of
the backbone's tensors is refused: a mismatched file must not pass as "pretrained".
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetHead
from torchvision.ops import box_convert, sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from pneumo_core.boxes import Detections
from pneumo_core.config.run import RunConfig
from pneumo_core.data.labels import CLASSES, POSITIVE_CLASS
from pneumo_core.errors import InputError
from pneumo_core.evaluation import postprocess
from pneumo_core.model.detector import detections, set_box_loss, set_fixed_size
from pneumo_core.model.weights import WeightsFile

log = logging.getLogger(__name__)


class Detected(NamedTuple):
    """One image's fused detections and, with an image head, its P(Lung Opacity)."""

    boxes: np.ndarray  # xywh [M, 4], cache px
    scores: np.ndarray  # [M], not gated
    opacity: float | None


NUM_CLASSES = 2  # background + opacity, as torchvision counts them
IMAGE_MEAN = [0.485]
IMAGE_STD = [0.229]
MIN_BACKBONE_SHARE = 0.9  # of the backbone's tensors a weights file must fill
_RESNETS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}


@dataclass(frozen=True)
class ModelInfo:
    """How a model was built; stored in checkpoints so inference rebuilds the same modules,
    and in done.json and the report so a run says what it started from."""

    weights: str | None  # file the pretrained weights came from, None = random
    frozen_bn: bool
    weights_sha256: str | None = None
    weights_origin: str | None = None  # weights_path, store <url> or torch hub cache
    tensors_loaded: int = 0  # of the file's tensors (conv1 included, summed over RGB)
    tensors_skipped: int = 0  # file tensors that fit nowhere (ImageNet's fc); BN counters aside
    backbone_share: float | None = None  # share of the backbone's tensors the file filled


def build_model(
    config: RunConfig, weights: WeightsFile | None = None, frozen_bn: bool | None = None
) -> tuple[RetinaNet, ModelInfo]:
    """The detector for `config`, starting from `weights` (None: random; a checkpoint will
    overwrite them); `frozen_bn` restores the normalisation a checkpoint used."""
    state = _read_state(weights.path) if weights is not None else None
    if frozen_bn is None:
        # Freezing batch norm keeps pretrained statistics; random ones are not worth keeping.
        frozen_bn = config.freeze_bn and state is not None
    body = _RESNETS[config.backbone](
        weights=None, norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    )
    body_state = _body_state(state) if state is not None else {}
    loaded = _load_matching(body, {k: v for k, v in body_state.items() if not _outside_backbone(k)})
    _freeze_layers(body, config.trainable_backbone_layers)
    # After freezing, as the seed did: the new conv1 always trains.
    rgb_conv1 = body_state.get("conv1.weight")
    body.conv1 = _one_channel_conv1(body.conv1, rgb_conv1, config.conv1_init)
    if rgb_conv1 is not None and config.conv1_init == "sum_rgb":
        loaded.add("conv1.weight")

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
    head.register_forward_hook(_float32_outputs)
    detector = GatedRetinaNet if config.image_head_weight > 0 else RetinaNet
    extra = {"image_head_weight": config.image_head_weight} if config.image_head_weight else {}
    model = detector(
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
        **extra,
    )
    set_box_loss(model, config.box_loss)
    set_fixed_size(model)  # cache images are already image_size square
    if weights is None:
        return model, ModelInfo(weights=None, frozen_bn=frozen_bn)
    if _is_detector_state(state):
        loaded = {f"backbone.body.{k}" for k in loaded}
        skip = ("backbone.body.", "head.classification_head.cls_logits.")
        loaded |= _load_matching(model, {k: v for k, v in state.items() if not k.startswith(skip)})
    share = _backbone_share(body, {k.removeprefix("backbone.body.") for k in loaded})
    if share < MIN_BACKBONE_SHARE:
        raise InputError(
            f"weights {weights.path}: only {share:.0%} of the {config.backbone} backbone's "
            f"tensors have a match in the file (at least {MIN_BACKBONE_SHARE:.0%} needed); "
            "is it a weights file for this backbone?"
        )
    info = ModelInfo(
        weights=str(weights.path),
        frozen_bn=frozen_bn,
        weights_sha256=weights.sha256,
        weights_origin=weights.origin,
        tensors_loaded=len(loaded),
        tensors_skipped=sum(k not in loaded and not _is_counter(k) for k in state),
        backbone_share=round(share, 4),
    )
    log.info(
        "pretrained weights %s (%s): %d tensors loaded, %d skipped, %.0f%% of the backbone",
        weights.path, weights.origin, info.tensors_loaded, info.tensors_skipped, 100 * share,
    )  # fmt: skip
    return model, info


class GatedRetinaNet(RetinaNet):
    """RetinaNet with the 2nd-place solution's image-level head: the three classes of
    stage_2_detailed_class_info.csv from the pooled pyramid features. Training adds its
    cross-entropy, times `image_head_weight`, as loss `image_class` (targets without a known
    class, -1, are ignored); evaluation adds `opacity`, P(Lung Opacity), to each image's
    detections, by which post-processing may multiply box scores."""

    def __init__(self, *args, image_head_weight: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.image_head = nn.Linear(self.backbone.out_channels, len(CLASSES))
        self.image_head_weight = image_head_weight
        self._features: list[Tensor] = []
        self.backbone.register_forward_hook(self._keep_features)

    def _keep_features(self, module: nn.Module, inputs: object, output: dict) -> None:
        self._features = list(output.values())

    def image_logits(self) -> Tensor:
        """Class logits of the images of the last forward pass: pooled level by level."""
        pooled = torch.stack([f.float().mean(dim=(2, 3)) for f in self._features]).mean(0)
        return self.image_head(pooled)

    def forward(self, images, targets=None):
        out = super().forward(images, targets)
        logits = self.image_logits()
        if self.training:
            wanted = torch.stack([t["image_class"] for t in targets])
            loss = F.cross_entropy(logits, wanted, ignore_index=-1)
            out["image_class"] = self.image_head_weight * torch.nan_to_num(loss)
            return out
        opacity = logits.softmax(-1)[:, CLASSES.index(POSITIVE_CLASS)]
        for found, p in zip(out, opacity, strict=True):
            found["opacity"] = p
        return out


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


@torch.no_grad()
def detect_batch(
    models: Sequence[RetinaNet], images: list[Tensor], config: RunConfig
) -> list[Detected]:
    """Per image: every model's boxes, on the image and (with TTA) its mirror, fused into one
    set (xywh, cache px), and the mean opacity probability of the models' image heads (None
    without). A single model without TTA is returned unfused."""
    width = images[0].shape[-1]
    variants: list[list[Detections]] = [[] for _ in images]
    opacities: list[list[float]] = [[] for _ in images]
    for model in models:
        for flipped in (False, True) if config.tta_hflip else (False,):
            batch = [img.flip(-1) for img in images] if flipped else images
            outputs = detections(model, batch)
            for found, output in zip(variants, outputs, strict=True):
                boxes = output["boxes"].float()
                if flipped:
                    boxes = torch.stack(
                        [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1
                    )
                xywh = box_convert(boxes, "xyxy", "xywh").cpu().numpy()
                found.append((xywh, output["scores"].float().cpu().numpy()))
            for probs, output in zip(opacities, outputs, strict=True):
                if "opacity" in output:
                    probs.append(float(output["opacity"]))
    fused = (
        [v[0] for v in variants]
        if len(variants[0]) == 1
        else [postprocess.fuse(v, config.postprocess, image_size=width) for v in variants]
    )
    return [
        Detected(boxes, scores, float(np.mean(probs)) if probs else None)
        for (boxes, scores), probs in zip(fused, opacities, strict=True)
    ]


def _float32_outputs(module: nn.Module, inputs: object, output: dict[str, Tensor]) -> dict:
    """The head's logits and box deltas in float32 whatever autocast computed them in:
    torchvision decodes boxes in the deltas' dtype, and bfloat16 boxes at 512 px are 2 px
    coarse, which the GIoU loss and the validation IoUs would feel."""
    return {k: v.float() for k, v in output.items()}


def _anchor_generator() -> AnchorGenerator:
    """torchvision's RetinaNet anchors: 4x the stride of each level (32 px on P3 .. 512 on P7),
    three scales and three aspect ratios per position."""
    sizes = tuple(
        tuple(round(base * 2 ** (k / 3)) for k in range(3)) for base in (32, 64, 128, 256, 512)
    )
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def _read_state(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise InputError(f"weights {path}: not a readable torch state dict ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # one of our own checkpoints
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InputError(f"weights {path}: expected a state dict of tensors")
    return OrderedDict(state)


def _is_detector_state(state: dict[str, Tensor]) -> bool:
    return any(key.startswith("backbone.body.") for key in state)


def _body_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ResNet part of a classifier's or a detector's state dict, with ResNet names."""
    if not _is_detector_state(state):
        return state
    prefix = "backbone.body."
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _load_matching(module: nn.Module, state: dict[str, Tensor]) -> set[str]:
    """Load every tensor whose name and shape match; returns the names loaded."""
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(usable, strict=False)
    return set(usable)


def _backbone_share(body: nn.Module, loaded: set[str]) -> float:
    """Share of the backbone's tensors (batch-norm counters aside) filled from the file."""
    names = [k for k in body.state_dict() if not _is_counter(k) and not k.startswith("fc.")]
    return sum(k in loaded for k in names) / len(names)


def _outside_backbone(name: str) -> bool:
    """conv1 is built apart (one channel); the classifier's fc is not part of a detector."""
    return name == "conv1.weight" or name.startswith("fc.")


def _is_counter(name: str) -> bool:
    return name.endswith("num_batches_tracked")  # batch norm's step counter, not a weight


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
