"""Training-time augmentation: one affine warp plus photometric noise, with box-exact transforms.

Geometry (scale, rotation, shear, shift, horizontal flip) is composed into ONE 3x3 matrix in
scikit-image's `AffineTransform` convention and applied once with OpenCV's `warpAffine`, which
is about 18x faster than `skimage.transform.warp` at 512 px and gives the same picture.

Matrix convention (what `Augmenter.sample_matrix` returns):
- It is the FORWARD map from input to output coordinates, `[x_out, y_out, 1] = M @ [x, y, 1]`,
  with x the column and y the row, in pixel-centre coordinates (pixel (r, c) is the point
  x=c, y=r; the image spans -0.5 .. W-0.5), exactly as `skimage.transform.warp` and
  `cv2.warpAffine` use them. So `cv2.warpAffine(img, M[:2], (W, H))` equals
  `skimage.transform.warp(img, AffineTransform(M).inverse, order=1)`.
- `M = T(c + shift) @ A(scale, rotation, shear) @ T(-c) @ F`: optional horizontal flip `F`
  (x -> W-1-x), then skimage's scale -> shear -> rotate about the image centre `c`, then shift.
- Boxes are x1,y1,x2,y2 in pixel-EDGE coordinates (a box covering columns 10..19 is
  x1=10, x2=20), as the competition's x,y,width,height are; they are shifted by half a
  pixel into the matrix's frame and back, so a flip or shift moves them exactly.
"""

from __future__ import annotations

import math

import cv2
import imgaug.augmenters as iaa
import numpy as np
from skimage.transform import AffineTransform

from pneumo_core.data.augment_config import AugmentConfig  # re-exported: augment.AugmentConfig
from pneumo_core.errors import InputError

# Points at 1/3 and 2/3 along each edge of a box (fractions of width, height): the seed's
# way to follow a box through a rotation without inflating it the way its corners would.
_EDGE_POINTS = np.array(
    [
        (1 / 3, 0.0),
        (2 / 3, 0.0),
        (1 / 3, 1.0),
        (2 / 3, 1.0),
        (0.0, 1 / 3),
        (0.0, 2 / 3),
        (1.0, 1 / 3),
        (1.0, 2 / 3),
    ]
)


class Augmenter:
    """Applies an `AugmentConfig` to one image and its boxes; all randomness comes from `rng`.

    Holds an imgaug pipeline that is re-seeded from `rng` on every call, so an instance must not
    be shared between threads (DataLoader worker processes each get their own copy).
    """

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config
        self._photometric = _photometric_pipeline(config)

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment a uint8 HxW image and its float [N,4] x1y1x2y2 boxes (pixel edges)."""
        if image.ndim != 2 or image.dtype != np.uint8:
            raise InputError(f"augment expects a uint8 HxW image, got {image.dtype} {image.shape}")
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if not self.config.enabled:
            return image, boxes
        height, width = image.shape
        matrix = self.sample_matrix(height, width, rng)
        if not np.array_equal(matrix, np.eye(3)):
            image = warp_image(image, matrix)
            boxes = transform_boxes(
                boxes,
                matrix,
                height,
                width,
                min_size=self.config.min_box_size,
                min_visible=self.config.min_visible,
            )
        if self._photometric is not None:
            self._photometric.seed_(int(rng.integers(2**31)))
            image = self._photometric(image=image)
        return image, boxes

    def sample_matrix(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """Draw one forward 3x3 affine matrix (see the module docstring for its convention)."""
        c = self.config
        zoom = 1.0 + rng.uniform(-c.scale, c.scale)
        rotation = math.radians(rng.uniform(-c.rotation_deg, c.rotation_deg))
        shear = math.radians(rng.uniform(-c.shear_deg, c.shear_deg))
        shift = rng.uniform(-c.shift, c.shift, size=2) * (width, height)
        flip = rng.random() < c.hflip_p
        return affine_matrix(height, width, zoom, rotation, shear, shift, flip)


def affine_matrix(
    height: int,
    width: int,
    zoom: float = 1.0,
    rotation: float = 0.0,
    shear: float = 0.0,
    shift: tuple[float, float] | np.ndarray = (0.0, 0.0),
    hflip: bool = False,
) -> np.ndarray:
    """Compose flip, then skimage's scale/shear/rotation (radians) about the centre, then shift."""
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    flip = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    core = AffineTransform(scale=zoom, rotation=rotation, shear=shear).params
    to_origin = AffineTransform(translation=-centre).params
    back = AffineTransform(translation=centre + np.asarray(shift, dtype=float)).params
    matrix = back @ core @ to_origin
    return matrix @ flip if hflip else matrix


def warp_image(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Bilinear warp with a forward matrix, zeros outside: skimage's `warp(order=1)` geometry."""
    height, width = image.shape[:2]
    return cv2.warpAffine(
        image,
        matrix[:2].astype(np.float64),
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def transform_boxes(
    boxes: np.ndarray,
    matrix: np.ndarray,
    height: int,
    width: int,
    min_size: float = 0.0,
    min_visible: float = 0.0,
) -> np.ndarray:
    """Move x1y1x2y2 boxes (pixel edges) through `matrix`: min/max of 8 edge points, clipped.

    Boxes narrower or lower than `min_size`, or keeping less than `min_visible` of their
    transformed area inside the image, are dropped.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros((0, 4), dtype=np.float32)
    size = boxes[:, 2:] - boxes[:, :2]
    points = boxes[:, None, :2] + _EDGE_POINTS[None] * size[:, None]  # [N, 8, 2]
    homogeneous = np.concatenate([points - 0.5, np.ones((*points.shape[:2], 1))], axis=2)
    moved = homogeneous @ matrix.T
    moved = moved[..., :2] + 0.5
    new = np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1)
    area = np.prod(new[:, 2:] - new[:, :2], axis=1)
    clipped = np.clip(new, 0.0, [width, height, width, height])
    clipped_size = clipped[:, 2:] - clipped[:, :2]
    keep = (
        (clipped_size >= min_size).all(axis=1)
        & (clipped_size > 0).all(axis=1)
        & (np.prod(clipped_size, axis=1) >= min_visible * area)
    )
    return clipped[keep].astype(np.float32)


def _photometric_pipeline(config: AugmentConfig) -> iaa.Augmenter | None:
    """imgaug ops of the seed recipe; None when none of them can fire."""
    ops: list[iaa.Augmenter] = []
    if config.gamma > 0:
        ops.append(iaa.GammaContrast((1 - config.gamma, 1 + config.gamma)))
    if config.blur_p > 0 and config.blur_sigma > 0:
        ops.append(iaa.Sometimes(config.blur_p, iaa.GaussianBlur(sigma=(0.0, config.blur_sigma))))
    if config.noise_p > 0 and config.noise_std > 0:
        noise = iaa.AdditiveGaussianNoise(scale=(0.0, config.noise_std))
        ops.append(iaa.Sometimes(config.noise_p, noise))
    if config.salt_pepper_p > 0 and config.salt_pepper > 0:
        salt_pepper = iaa.CoarseSaltAndPepper(
            config.salt_pepper,
            size_percent=(config.salt_pepper_size_min, config.salt_pepper_size_max),
        )
        ops.append(iaa.Sometimes(config.salt_pepper_p, salt_pepper))
    return iaa.Sequential(ops) if ops else None
