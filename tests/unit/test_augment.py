"""Augmentation: the warp matches skimage, boxes follow the picture, everything is seeded."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.transform import AffineTransform, warp

from pneumo_core.data.augment import (
    AugmentConfig,
    Augmenter,
    affine_matrix,
    transform_boxes,
    warp_image,
)
from pneumo_core.errors import InputError

SIZE = 128
GEOMETRY_ONLY = AugmentConfig(gamma=0.0, blur_p=0.0, noise_p=0.0, salt_pepper_p=0.0)


def _textured_image(size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: enough structure that a wrong geometry shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 100 + 60 * np.sin(xx / 7.0) + 40 * np.cos(yy / 11.0) + rng.normal(0, 10, (size, size))
    return np.clip(base, 0, 255).astype(np.uint8)


def _draw_ellipse(box: np.ndarray, size: int = SIZE) -> np.ndarray:
    """A bright ellipse filling `box` (pixel edges) on a black image."""
    x1, y1, x2, y2 = box
    yy, xx = np.mgrid[0:size, 0:size] + 0.5  # pixel centres in edge coordinates
    cx, cy, ax, ay = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    inside = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1
    return np.where(inside, 255, 0).astype(np.uint8)


def _inside(box: np.ndarray) -> bool:
    """True when a moved box was not clipped, so the whole drawn shape is still in view."""
    return bool((box[:2] > 0).all() and (box[2:] < SIZE).all())


def _bright_box(image: np.ndarray, level: int = 128) -> np.ndarray | None:
    """Bounding box (pixel edges) of pixels above `level`; None when there are none."""
    rows, cols = np.nonzero(image > level)
    if len(rows) == 0:
        return None
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=float)


boxes_strategy = st.tuples(
    st.floats(0, SIZE - 24), st.floats(0, SIZE - 24), st.floats(16, 60), st.floats(16, 60)
).map(lambda t: np.array([t[0], t[1], min(t[0] + t[2], SIZE), min(t[1] + t[3], SIZE)]))


def test_warp_matches_skimage_warp():
    image = _textured_image()
    matrix = affine_matrix(SIZE, SIZE, 1.12, math.radians(5), math.radians(-3), (6.5, -4.0), True)
    ours = warp_image(image, matrix).astype(float)
    reference = warp(
        image,
        AffineTransform(matrix=matrix).inverse,
        order=1,
        mode="constant",
        cval=0,
        preserve_range=True,
    )
    diff = np.abs(ours - reference)
    assert diff.mean() < 0.5
    assert np.percentile(diff, 99.5) <= 2.0


def test_seed_recipe_defaults_follow_design():
    config = AugmentConfig.seed_recipe()
    assert (config.scale, config.rotation_deg, config.shear_deg, config.gamma) == (
        0.15,
        6.0,
        4.0,
        0.25,
    )
    assert (config.hflip_p, config.blur_sigma, config.blur_p) == (0.5, 2.0, 0.5)
    assert config.noise_std == pytest.approx(10.2) and config.noise_p == 0.5
    assert (config.salt_pepper, config.salt_pepper_p) == (0.01, 0.1)
    assert (config.salt_pepper_size_min, config.salt_pepper_size_max) == (0.1, 0.2)


@pytest.mark.parametrize(
    "bad", [{"hflip_p": 1.5}, {"scale": -0.1}, {"scale": 1.0}, {"salt_pepper_size_min": 0.0}]
)
def test_bad_settings_are_named(bad):
    with pytest.raises(InputError, match=next(iter(bad))):
        AugmentConfig(**bad)


@given(box=boxes_strategy)
def test_pure_flip_moves_boxes_and_content_exactly(box):
    matrix = affine_matrix(SIZE, SIZE, hflip=True)
    moved = transform_boxes(box[None], matrix, SIZE, SIZE)
    np.testing.assert_allclose(moved[0], [SIZE - box[2], box[1], SIZE - box[0], box[3]], atol=1e-4)
    integral = np.round(box)
    image = _draw_ellipse(integral)
    np.testing.assert_array_equal(warp_image(image, matrix), image[:, ::-1])


@given(box=boxes_strategy, dx=st.integers(-20, 20), dy=st.integers(-20, 20))
def test_pure_shift_moves_boxes_and_content_exactly(box, dx, dy):
    matrix = affine_matrix(SIZE, SIZE, shift=(dx, dy))
    offset = np.array([dx, dy, dx, dy])
    expected = np.clip(box + offset, 0, SIZE)
    moved = transform_boxes(box[None], matrix, SIZE, SIZE)
    if (expected[2:] - expected[:2] > 0).all():
        np.testing.assert_allclose(moved[0], expected, atol=1e-4)
    else:
        assert len(moved) == 0
    integral = np.round(box)
    shifted = integral + offset
    if _inside(shifted):
        bright = _bright_box(warp_image(_draw_ellipse(integral), matrix))
        np.testing.assert_array_equal(bright, shifted)


@settings(max_examples=60, deadline=None)
@given(
    box=boxes_strategy,
    zoom=st.floats(0.85, 1.15),
    rotation=st.floats(-6, 6),
    shear=st.floats(-4, 4),
    dx=st.floats(-6, 6),
    dy=st.floats(-6, 6),
    flip=st.booleans(),
)
def test_content_stays_inside_the_moved_box(box, zoom, rotation, shear, dx, dy, flip):
    """A bright ellipse filling the box ends up inside the moved box, and fills most of it."""
    matrix = affine_matrix(
        SIZE, SIZE, zoom, math.radians(rotation), math.radians(shear), (dx, dy), flip
    )
    moved = transform_boxes(box[None], matrix, SIZE, SIZE)
    bright = _bright_box(warp_image(_draw_ellipse(box), matrix))
    if bright is None:
        return
    assert len(moved) == 1
    x1, y1, x2, y2 = moved[0]
    tolerance = 1.5  # bilinear interpolation blurs the rim by about a pixel
    assert bright[0] >= x1 - tolerance and bright[1] >= y1 - tolerance
    assert bright[2] <= x2 + tolerance and bright[3] <= y2 + tolerance
    if not _inside(moved[0]):
        return
    assert (bright[2] - bright[0]) >= 0.8 * (x2 - x1) - 2
    assert (bright[3] - bright[1]) >= 0.8 * (y2 - y1) - 2


@settings(max_examples=60, deadline=None)
@given(box=boxes_strategy, zoom=st.floats(0.9, 1.1), dx=st.integers(-8, 8), flip=st.booleans())
def test_axis_aligned_transforms_keep_content_on_the_box(box, zoom, dx, flip):
    matrix = affine_matrix(SIZE, SIZE, zoom=zoom, shift=(dx, 0), hflip=flip)
    moved = transform_boxes(box[None], matrix, SIZE, SIZE)
    bright = _bright_box(warp_image(_draw_ellipse(box), matrix))
    if len(moved) == 0 or not _inside(moved[0]):
        return
    np.testing.assert_allclose(bright, moved[0], atol=2.0)


@settings(max_examples=50, deadline=None)
@given(
    boxes=st.lists(boxes_strategy, min_size=0, max_size=4),
    seed=st.integers(0, 2**32 - 1),
    size=st.sampled_from([64, 96, 128]),
)
def test_boxes_always_inside_the_image(boxes, seed, size):
    config = AugmentConfig(
        scale=0.3, rotation_deg=30, shear_deg=15, shift=0.3, min_box_size=0.0, min_visible=0.0
    )
    array = np.array(boxes, dtype=float).reshape(-1, 4) * size / SIZE
    image, moved = Augmenter(config)(_textured_image(size), array, np.random.default_rng(seed))
    assert image.shape == (size, size) and image.dtype == np.uint8
    assert moved.dtype == np.float32 and moved.shape[1] == 4 and len(moved) <= len(array)
    assert (
        (moved >= 0).all() and (moved[:, [0, 2]] <= size).all() and (moved[:, [1, 3]] <= size).all()
    )
    assert (moved[:, 2:] > moved[:, :2]).all()


def test_small_and_mostly_outside_boxes_are_dropped():
    identity = np.eye(3)
    boxes = np.array([[10, 10, 12, 40], [-30, 10, 5, 40], [20, 20, 60, 60]], dtype=float)
    kept = transform_boxes(boxes, identity, SIZE, SIZE, min_size=4, min_visible=0.25)
    np.testing.assert_allclose(kept, [[20, 20, 60, 60]])
    loose = transform_boxes(boxes, identity, SIZE, SIZE, min_size=0, min_visible=0)
    assert len(loose) == 3


def test_same_seed_same_result_and_different_seeds_differ():
    augmenter = Augmenter(AugmentConfig.seed_recipe())
    image = _textured_image()
    boxes = np.array([[20.0, 30.0, 70.0, 90.0]])
    first = augmenter(image, boxes, np.random.default_rng(7))
    again = Augmenter(AugmentConfig.seed_recipe())(image, boxes, np.random.default_rng(7))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    other = augmenter(image, boxes, np.random.default_rng(8))
    assert not np.array_equal(first[0], other[0])


def test_photometric_ops_fire_with_the_seed_probabilities():
    """Over many draws, blur/noise show up about half the time; gamma changes every image."""
    config = AugmentConfig(hflip_p=0, scale=0, rotation_deg=0, shear_deg=0, shift=0)
    augmenter = Augmenter(config)
    image = np.full((64, 64), 128, dtype=np.uint8)
    rng = np.random.default_rng(0)
    outputs = [augmenter(image, np.zeros((0, 4)), rng)[0] for _ in range(200)]
    noisy = sum(out.std() > 1.0 for out in outputs)
    assert 70 <= noisy <= 130  # noise p=0.5 (blur does nothing on a flat image)
    assert len({int(out.mean()) for out in outputs}) > 20  # gamma varies brightness


def test_disabled_and_flip_only():
    image = _textured_image()
    boxes = np.array([[10.0, 20.0, 40.0, 60.0]])
    out, moved = Augmenter(AugmentConfig(enabled=False))(image, boxes, np.random.default_rng(0))
    assert out is image and np.array_equal(moved, boxes)
    flip_only = Augmenter(AugmentConfig.flip_only())
    seen = set()
    for seed in range(20):
        out, moved = flip_only(image, boxes, np.random.default_rng(seed))
        if np.array_equal(out, image):
            np.testing.assert_allclose(moved, boxes)
            seen.add("same")
        else:
            np.testing.assert_array_equal(out, image[:, ::-1])
            np.testing.assert_allclose(moved, [[SIZE - 40, 20, SIZE - 10, 60]])
            seen.add("flipped")
    assert seen == {"same", "flipped"}


def test_augmenter_survives_pickling_for_worker_processes():
    augmenter = Augmenter(AugmentConfig.seed_recipe())
    copy = pickle.loads(pickle.dumps(augmenter))
    image = _textured_image()
    a = augmenter(image, np.zeros((0, 4)), np.random.default_rng(3))[0]
    b = copy(image, np.zeros((0, 4)), np.random.default_rng(3))[0]
    np.testing.assert_array_equal(a, b)


def test_rejects_non_uint8_images():
    with pytest.raises(InputError, match="uint8"):
        Augmenter(GEOMETRY_ONLY)(
            np.zeros((8, 8), np.float32), np.zeros((0, 4)), np.random.default_rng()
        )
