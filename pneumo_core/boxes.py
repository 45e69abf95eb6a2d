"""Box forms, owned here: the competition's (x, y, width, height) and torchvision's corners
(x1, y1, x2, y2), as NumPy arrays. Torch tensors convert with `torchvision.ops.box_convert`;
these stay free of torch so that scoring and submission files load fast."""

from __future__ import annotations

import numpy as np

Detections = tuple[np.ndarray, np.ndarray]
"""(boxes xywh [N, 4], scores [N]): one image's predictions, a submission row's content."""


def xywh_to_xyxy(boxes: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Corners from (x, y, width, height); a new [N, 4] array."""
    out = np.array(boxes, dtype=dtype).reshape(-1, 4)
    out[:, 2:] += out[:, :2]
    return out


def xyxy_to_xywh(boxes: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """(x, y, width, height) from corners; a new [N, 4] array."""
    out = np.array(boxes, dtype=dtype).reshape(-1, 4)
    out[:, 2:] -= out[:, :2]
    return out
