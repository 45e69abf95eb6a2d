"""From raw detections to the boxes a submission keeps.

All boxes here are x, y, width, height (xywh) in one pixel frame, like the metric, the
out-of-fold files and the submission. `fuse` merges several prediction sets of one image
(fold models, flip TTA); `apply` then keeps what the metric rewards: confident boxes, a few
per image, optionally shrunk around their centre (the winning solutions shrank to 0.875,
because the annotators' boxes were generous).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from pneumo_core.boxes import Detections, xywh_to_xyxy
from pneumo_core.config.checked import CheckedModel
from pneumo_core.errors import InputError


class PostprocessConfig(CheckedModel):
    """score_threshold/max_boxes/shrink are the starting point; evaluate tunes them on the
    out-of-fold predictions when `tune` (and shrink when `tune_shrink`) is set."""

    section: ClassVar[str] = "postprocess."

    score_threshold: float = Field(0.5, ge=0, le=1)
    max_boxes: int = Field(4, ge=1)
    shrink: float = Field(1.0, gt=0, le=1)  # 1.0 = boxes unchanged
    fusion: Literal["wbf", "nms", "none"] = "wbf"
    fusion_iou: float = Field(0.55, gt=0, lt=1)
    skip_threshold: float = Field(0.05, ge=0, lt=1)  # boxes below this never enter a fusion
    tune: bool = True
    tune_shrink: bool = True
    # The image-level gate (2nd place): box scores x P(opacity)^gate, where the model has an
    # image head (config.image_head_weight > 0); 0 = off. Tuned on OOF when tune_gate.
    gate: float = Field(0.0, ge=0, le=4)
    tune_gate: bool = True


def shrink_boxes(boxes: np.ndarray, factor: float) -> np.ndarray:
    """Scale width and height by `factor`, keeping each box's centre."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if factor == 1.0:
        return boxes
    width, height = boxes[:, 2] * factor, boxes[:, 3] * factor
    centre_x, centre_y = boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2
    return np.column_stack([centre_x - width / 2, centre_y - height / 2, width, height])


def gated(scores: np.ndarray, opacity: float | None, gate: float) -> np.ndarray:
    """Box scores times the image's opacity probability to the power `gate` (unchanged
    without a probability or with gate 0)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if opacity is None or gate == 0 or np.isnan(opacity):
        return scores
    return scores * float(opacity) ** gate


def apply(
    boxes: np.ndarray, scores: np.ndarray, cfg: PostprocessConfig, opacity: float | None = None
) -> Detections:
    """Boxes with (gated) score >= threshold, at most max_boxes, most confident first, shrunk."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = gated(scores, opacity, cfg.gate)
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= cfg.score_threshold][: cfg.max_boxes]
    return shrink_boxes(boxes[order], cfg.shrink), scores[order]


def fuse(
    predictions: Sequence[Detections],
    cfg: PostprocessConfig,
    image_size: tuple[int, int] | int = 1024,
) -> Detections:
    """Merge prediction sets of one image (each model / TTA view counts once).

    wbf: weighted box fusion (boxes seen by fewer sets get proportionally lower scores);
    nms: the most confident box of each overlapping group; none: all boxes together.
    `image_size` (height, width or one side) is the frame of the boxes, for WBF's
    normalised coordinates.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    kept = []
    for boxes, scores in predictions:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(boxes) != len(scores):
            raise InputError(f"fuse: {len(boxes)} boxes but {len(scores)} scores")
        keep = scores >= cfg.skip_threshold
        kept.append((boxes[keep], scores[keep]))
    if not kept or sum(len(s) for _, s in kept) == 0:
        return np.zeros((0, 4)), np.zeros(0)
    if cfg.fusion == "wbf":
        return _wbf(kept, cfg, width, height)
    boxes = np.concatenate([b for b, _ in kept])
    scores = np.concatenate([s for _, s in kept])
    if cfg.fusion == "nms":
        import torch
        from torchvision.ops import nms

        xyxy = torch.from_numpy(xywh_to_xyxy(boxes))
        keep = nms(xyxy, torch.from_numpy(scores), cfg.fusion_iou).numpy()
        boxes, scores = boxes[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order]


def _wbf(kept: list[Detections], cfg: PostprocessConfig, width: int, height: int) -> Detections:
    from ensemble_boxes import weighted_boxes_fusion

    scale = np.array([width, height, width, height], dtype=np.float64)
    boxes_list = [
        np.clip(np.column_stack([b[:, :2], b[:, :2] + b[:, 2:]]) / scale, 0.0, 1.0) for b, _ in kept
    ]
    fused, scores, _ = weighted_boxes_fusion(
        boxes_list,
        [s for _, s in kept],
        [np.zeros(len(s)) for _, s in kept],
        iou_thr=cfg.fusion_iou,
        skip_box_thr=cfg.skip_threshold,
    )
    fused = np.asarray(fused, dtype=np.float64).reshape(-1, 4) * scale
    boxes = np.column_stack([fused[:, :2], fused[:, 2:] - fused[:, :2]])
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order]
