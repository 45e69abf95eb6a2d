"""The pictures of the synthetic data set: chest radiographs (drawn, or the user's own real
ones as backgrounds), lung fields, opacities and, on hard data, the distractors that give the
"No Lung Opacity / Not Normal" class its look. `synthetic` writes them into a Kaggle-shaped
archive.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pneumo_core.data.labels import CLASSES
from pneumo_core.layout import TRAIN_LABELS  # beside a background folder: which are negative

OPACITY, NOT_NORMAL, NORMAL = CLASSES
# Opacity strength in gray levels at the shape's full strength (hard: also textured 0.3-1.7x),
# and how far a hard opacity smooths the structure behind it (0 none, 1 all). Hard is set
# where recipes separate (bench/compare_presets.py, 10 CPU epochs, ResNet-18): default's OOF
# mAP was 0.04 at 11-20, 0.08 at 20-32 and 0.18 at 28-45, where the seed scored 0 and the
# naive recipe (Adam 1e-3) 0.002. At 28-45 an opacity adds 15-25 gray levels on average
# inside its box (256 px, 12 draws).
EASY_OPACITY_LEVELS = (55.0, 85.0)
HARD_OPACITY_LEVELS = (28.0, 45.0)
HARD_VEIL = 0.35
MIN_VISIBLE_LEVEL = 1.0  # gray levels; an opacity's fainter fringe is cut off


@dataclass
class Patient:
    patient_id: str
    split: str  # "train" | "test"
    index: int
    cls: str
    n_boxes: int
    sex: str
    age: int
    view: str
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # x, y, w, h px


@dataclass(frozen=True)
class Radiograph:
    pixels: np.ndarray  # uint8 [S, S]
    lungs: np.ndarray  # float32 [2, S, S]: image-left and image-right lung field, soft 0..1


def load_backgrounds(folder: Path | None, size: int) -> list[Radiograph]:
    """Real radiographs of `folder` (None: none), labelled negative where a labels file sits
    beside it, resized, with their lung fields found once."""
    from pneumo_core.data.dicom import read_dicom

    if folder is None:
        return []
    files = sorted(folder.glob("*.dcm"))
    negatives = _negative_ids(folder.parent / TRAIN_LABELS)
    if negatives is not None:
        files = [f for f in files if f.stem in negatives] or files
    images = [
        cv2.resize(read_dicom(f).pixels, (size, size), interpolation=cv2.INTER_AREA) for f in files
    ]
    return [Radiograph(image, _find_lungs(image)) for image in images]


# Generous lung zones of a frontal chest film (unit cx, cy, half width, half height): where
# the lung finder looks, and its answer where the image defeats it.
LUNG_ZONES = ((0.3, 0.47, 0.17, 0.32), (0.7, 0.47, 0.17, 0.32))


def _find_lungs(image: np.ndarray) -> np.ndarray:
    """The two lung fields of a radiograph: the darker half of each lung zone (air outside the
    body excluded), the largest piece per side, smoothed. A side where that finds too little
    (rotated or unusual films) falls back to a shrunken zone ellipse."""
    s = image.shape[0]
    blurred = cv2.GaussianBlur(image.astype(np.float32), (0, 0), s * 0.015)
    axis = (np.arange(s, dtype=np.float32) + 0.5) / s
    xx, yy = np.meshgrid(axis, axis)
    open_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, s // 40),) * 2)
    close_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, s // 12),) * 2)
    lungs = np.zeros((2, s, s), np.float32)
    for side, (cx, cy, ax, ay) in enumerate(LUNG_ZONES):
        zone = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1
        body = zone & (blurred > 20)  # film background is near black; lungs are not
        mask, biggest = np.zeros((s, s), np.uint8), 0
        if body.sum() > 0.02 * s * s:
            mask[body & (blurred < np.percentile(blurred[body], 50))] = 1
            mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, open_kernel)
            n, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
            biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])) if n > 1 else 0
            mask = cv2.morphologyEx(
                (labels == biggest).astype(np.uint8), cv2.MORPH_CLOSE, close_kernel
            )
        if not biggest or mask.sum() < 0.15 * zone.sum():
            mask = (((xx - cx) / (ax * 0.8)) ** 2 + ((yy - cy) / (ay * 0.8)) ** 2 <= 1).astype(
                np.uint8
            )
        lungs[side] = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), s * 0.01)
    return lungs


def _negative_ids(labels: Path) -> set[str] | None:
    if not labels.is_file():
        return None
    with labels.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    positives = {r["patientId"] for r in rows if r.get("Target") == "1"}
    return {r["patientId"] for r in rows} - positives


# --- painting ------------------------------------------------------------------------------
# Geometry is drawn in unit coordinates (0..1 across the image) and rendered at `size`.


@dataclass(frozen=True)
class _Lung:
    cx: float
    cy: float
    ax: float  # half width
    ay: float  # half height


class Painter:
    def __init__(self, size: int, difficulty: str, backgrounds: list[Radiograph]) -> None:
        self.size = size
        self.hard = difficulty == "hard"
        self.backgrounds = backgrounds
        axis = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.xx, self.yy = np.meshgrid(axis, axis)

    def paint(self, p: Patient, rng: np.random.Generator) -> np.ndarray:
        """The image of one patient; fills `p.boxes` with the opacities actually drawn."""
        if self.backgrounds:
            image, masks = self._real_background(rng)
        else:
            image, masks = self._drawn_background(rng)
        lungs = [self._extent(mask) for mask in masks]
        lung_mask = np.clip(masks[0] + masks[1], 0, 1)
        if p.cls == NOT_NORMAL and self.hard:
            image += self._distractors(rng, lungs, masks)
        if self.hard and rng.random() < {OPACITY: 0.3, NOT_NORMAL: 0.0, NORMAL: 0.05}[p.cls]:
            image += self._devices(rng)  # devices alone must not give the class away
        # Noise before the opacities: the same patient without boxes differs only by them.
        noise = rng.normal(0, 2.5 if self.hard else 4.0, image.shape).astype(np.float32)
        for box in self._sample_boxes(rng, lungs, p.n_boxes):
            region = self._region(box)
            shape = (
                self._hard_shape(rng, box, region) if self.hard else self._easy_shape(box, region)
            )
            clipped = shape * lung_mask[region]  # opacities live inside the lungs
            if clipped.max() > 0.5:
                shape = clipped
            levels = HARD_OPACITY_LEVELS if self.hard else EASY_OPACITY_LEVELS
            layer = shape * float(rng.uniform(*levels))
            layer[layer < MIN_VISIBLE_LEVEL] = 0  # so the box holds every pixel it changes
            if self.hard:  # consolidation also veils the vessels and ribs behind it
                patch = image[region]
                veil = HARD_VEIL * layer / layer.max()
                patch += veil * (cv2.GaussianBlur(patch, (0, 0), self.size * 0.01) - patch)
            image[region] += layer
            p.boxes.append(self._support_box(layer, region))
        return np.clip(image + noise, 0, 255).astype(np.uint8)

    # backgrounds

    def _drawn_background(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Body, lungs, heart, spine, ribs and clavicles with per-patient jitter."""

        def j(sd: float) -> float:
            return float(rng.normal(0, sd))

        shift_x, shift_y = j(0.015), j(0.015)
        lungs = [
            _Lung(0.31 + shift_x + j(0.01), 0.46 + shift_y, 0.145 + j(0.01), 0.29 + j(0.015)),
            _Lung(0.69 + shift_x + j(0.01), 0.46 + shift_y, 0.135 + j(0.01), 0.28 + j(0.015)),
        ]
        heart = _Lung(0.55 + shift_x + j(0.01), 0.64 + shift_y, 0.14 + j(0.01), 0.12 + j(0.01))
        body = _Lung(0.5 + shift_x, 0.62 + shift_y, 0.46 + j(0.01), 0.66)
        neck = _Lung(0.5 + shift_x, 0.0, 0.1, 0.2)
        image = 12 + 125 * np.maximum(
            self._ellipse(body, softness=0.04, power=3.5), self._ellipse(neck, softness=0.1)
        )
        image += 12 * np.clip(self.yy - 0.5, 0, None) / 0.5  # abdomen below the domes
        masks = np.stack([self._ellipse(lung, softness=0.1) * self._dome(lung) for lung in lungs])
        image -= float(rng.uniform(70, 95)) * (masks[0] + masks[1])
        image += 45 * self._ellipse(heart, softness=0.25)
        spine = np.exp(-(((self.xx - 0.5 - shift_x) / 0.045) ** 2))
        image += spine * (50 + 8 * np.sin(self.yy * 2 * np.pi * 14))
        image += self._bones(rng, lungs, shift_x, shift_y) * (0.4 + 0.6 * (masks[0] + masks[1]))
        image += self._smooth_noise(rng, cells=24, amplitude=6)  # vessels and soft-tissue texture
        gamma = float(rng.uniform(0.85, 1.15))
        return 255 * (np.clip(image, 0, 255) / 255) ** gamma, masks

    def _real_background(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A real negative radiograph and its lungs, jittered by a small affine and gamma."""
        s = self.size
        base = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        scale, angle = float(rng.uniform(0.93, 1.07)), float(rng.uniform(-4, 4))
        shift = rng.uniform(-0.03, 0.03, size=2)
        matrix = cv2.getRotationMatrix2D((s / 2, s / 2), angle, scale)
        matrix[:, 2] += shift * s

        def warp(a: np.ndarray) -> np.ndarray:
            return cv2.warpAffine(a, matrix, (s, s), flags=cv2.INTER_LINEAR, borderValue=0)

        image = warp(base.pixels).astype(np.float32)
        image = 255 * (image / 255) ** float(rng.uniform(0.85, 1.15))
        return image, np.stack([warp(lung) for lung in base.lungs])

    def _bones(self, rng, lungs: list[_Lung], shift_x: float, shift_y: float) -> np.ndarray:
        """Posterior ribs as arcs from the spine outwards and down, and two clavicles."""
        s = self.size
        canvas = np.zeros((s, s), np.uint8)
        thickness = max(1, round(s * 0.014))
        for side, lung in zip((-1, 1), lungs, strict=True):
            top = lung.cy - lung.ay * 0.95
            for k in range(10):
                y0 = top + k * lung.ay * 0.2 + float(rng.normal(0, 0.004))
                t = np.linspace(0, 1, 24)
                x = 0.5 + shift_x + side * (0.03 + t * (lung.ax * 2.1))
                y = y0 - 0.05 * np.sin(np.pi * t * 0.9) + 0.09 * t**2
                pts = np.stack([x * s, y * s], axis=1).round().astype(np.int32)
                cv2.polylines(canvas, [pts], False, 255, thickness, cv2.LINE_AA)
            cx0, cy0 = 0.5 + shift_x + side * 0.04, 0.17 + shift_y
            clavicle = np.array([[cx0, cy0], [cx0 + side * 0.2, cy0 - 0.04]]) * s
            cv2.polylines(canvas, [clavicle.round().astype(np.int32)], False, 255, thickness * 2)
        sigma = max(0.6, s * 0.003)
        bones = cv2.GaussianBlur(canvas.astype(np.float32) / 255, (0, 0), sigma)
        return bones * float(rng.uniform(18, 30))

    # opacities

    def _sample_boxes(self, rng, lungs: list[_Lung], n: int) -> list[tuple[float, ...]]:
        """Candidate boxes (unit x, y, w, h) inside the lungs: one lung each first, sizes as
        in the real labels (median about 0.21 × 0.29 of the image)."""
        first = int(rng.integers(2))
        sides = [(first + i) % 2 for i in range(n)]
        boxes = []
        for i, side in enumerate(sides):
            lung = lungs[side]
            same = [k for k, sd in enumerate(sides) if sd == side]
            band = same.index(i), len(same)  # split a lung vertically between its boxes
            w = float(np.clip(rng.normal(0.21, 0.05), 0.09, 2 * lung.ax * 0.95))
            band_h = 2 * lung.ay / band[1]
            h = float(np.clip(np.exp(rng.normal(np.log(0.29), 0.35)), 0.09, band_h * 0.95))
            x0 = lung.cx - lung.ax + float(rng.uniform(0, max(2 * lung.ax - w, 0)))
            y_top = lung.cy - lung.ay + band[0] * band_h
            y0 = y_top + float(rng.uniform(0, max(band_h - h, 0)))
            boxes.append((x0, y0, w, h))
        return boxes

    def _region(self, box: tuple[float, ...]) -> tuple[slice, slice]:
        """The pixels of a unit box, clipped to the image (opacities are drawn only there)."""
        s = self.size
        x0, y0 = max(0, int(box[0] * s)), max(0, int(box[1] * s))
        x1, y1 = (
            min(s, int(np.ceil((box[0] + box[2]) * s))),
            min(s, int(np.ceil((box[1] + box[3]) * s))),
        )
        return slice(y0, max(y1, y0 + 1)), slice(x0, max(x1, x0 + 1))

    def _support_box(self, shape: np.ndarray, region: tuple[slice, slice]) -> tuple[int, ...]:
        """The label: the pixel box around every pixel the opacity changes."""
        rows, cols = np.nonzero(shape)
        x0, y0 = region[1].start + int(cols.min()), region[0].start + int(rows.min())
        return x0, y0, int(np.ptp(cols)) + 1, int(np.ptp(rows)) + 1

    def _easy_shape(self, box: tuple[float, ...], region: tuple[slice, slice]) -> np.ndarray:
        """A smooth ellipse whose soft edge fades out at the box's sides."""
        x, y, w, h = box
        return self._ellipse(_Lung(x + w / 2, y + h / 2, w / 2.3, h / 2.3), 0.3, region)

    def _hard_shape(self, rng, box: tuple[float, ...], region: tuple[slice, slice]) -> np.ndarray:
        """A patchy consolidation: overlapping blobs, thresholded softly, textured inside."""
        x, y, w, h = box
        xx, yy = self.xx[region], self.yy[region]
        field_ = np.zeros(xx.shape, np.float32)
        for _ in range(int(rng.integers(3, 7))):
            cx, cy = x + w * float(rng.uniform(0.2, 0.8)), y + h * float(rng.uniform(0.2, 0.8))
            rx, ry = w * float(rng.uniform(0.15, 0.35)), h * float(rng.uniform(0.15, 0.35))
            field_ += np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2))
        inside = self._ellipse(_Lung(x + w / 2, y + h / 2, w / 2, h / 2), 0.05, region)
        shape = np.clip((field_ - 0.3) / 0.5, 0, 1) * inside
        cells = max(2, round(float(rng.uniform(20, 40)) * max(w, h)))
        texture = 0.3 + 1.4 * self._smooth_noise(rng, cells, 1.0, shape.shape)
        shape *= texture
        return shape if shape.max() > 0.2 else inside  # the rare all-faint draw: plain patch

    # distractors

    def _distractors(self, rng, lungs: list[_Lung], masks: np.ndarray) -> np.ndarray:
        """What makes an image abnormal without an opacity box: haze, devices, scar lines."""
        layer = np.zeros((self.size, self.size), np.float32)
        if rng.random() < 0.6:  # diffuse haze: broad, smooth, whole-lung
            sides = [int(rng.integers(2))] if rng.random() < 0.5 else [0, 1]
            haze = cv2.GaussianBlur(masks[sides].sum(0), (0, 0), self.size * 0.03)
            gradient = 0.5 + 0.5 * (self.yy - 0.2) / 0.6  # denser towards the bases
            layer += float(rng.uniform(8, 16)) * haze * np.clip(gradient, 0, 1)
        if rng.random() < 0.6:
            layer += self._devices(rng)
        if rng.random() < 0.35:  # linear atelectasis / scars: thin short bright lines
            canvas = np.zeros_like(layer)
            for _ in range(int(rng.integers(1, 4))):
                lung = lungs[int(rng.integers(2))]
                cx = lung.cx + float(rng.uniform(-0.6, 0.6)) * lung.ax
                cy = lung.cy + float(rng.uniform(0, 0.7)) * lung.ay
                angle, length = float(rng.uniform(-0.5, 0.5)), float(rng.uniform(0.05, 0.15))
                ends = np.array(
                    [[cx, cy], [cx + length * np.cos(angle), cy + length * np.sin(angle)]]
                )
                cv2.polylines(
                    canvas,
                    [(ends * self.size).round().astype(np.int32)],
                    False,
                    1.0,
                    max(1, round(self.size * 0.004)),
                    cv2.LINE_AA,
                )
            layer += float(rng.uniform(15, 30)) * canvas
        return layer

    def _devices(self, rng) -> np.ndarray:
        """ECG electrodes with their wires, and a tube or central line."""
        s = self.size
        canvas = np.zeros((s, s), np.float32)
        thin = max(1, round(s * 0.003))
        for _ in range(int(rng.integers(2, 6))):
            c = rng.uniform([0.15, 0.1], [0.85, 0.8])
            radius = max(2, round(s * float(rng.uniform(0.01, 0.016))))
            center = tuple(int(v) for v in (c * s).round())
            cv2.circle(canvas, center, radius, 1.0, -1, cv2.LINE_AA)
            wire = _curve(rng, start=c, end=rng.uniform([0.0, 0.0], [1.0, 0.2]))
            cv2.polylines(
                canvas, [(wire * s).round().astype(np.int32)], False, 0.6, thin, cv2.LINE_AA
            )
        if rng.random() < 0.6:
            tube = _curve(
                rng,
                start=np.array([0.5 + rng.normal(0, 0.03), 0.0]),
                end=rng.uniform([0.4, 0.35], [0.6, 0.6]),
            )
            cv2.polylines(
                canvas,
                [(tube * s).round().astype(np.int32)],
                False,
                0.8,
                max(2, round(s * 0.008)),
                cv2.LINE_AA,
            )
        return canvas * float(rng.uniform(80, 140))

    # helpers

    def _ellipse(
        self, e: _Lung, softness: float, region=(slice(None), slice(None)), power: float = 2.0
    ) -> np.ndarray:
        """1 inside the (super)ellipse, 0 outside, with an edge `softness` (in radii) wide."""
        xx, yy = self.xx[region], self.yy[region]
        r = (np.abs((xx - e.cx) / e.ax) ** power + np.abs((yy - e.cy) / e.ay) ** power) ** (
            1 / power
        )
        return np.clip((1 - r) / softness + 0.5, 0, 1)

    def _extent(self, mask: np.ndarray) -> _Lung:
        """The ellipse spanning a lung mask's bounding box (where boxes are placed)."""
        rows, cols = np.nonzero(mask > 0.5)
        if rows.size == 0:  # warped off the image: an empty token lung in the middle
            return _Lung(0.5, 0.5, 1 / self.size, 1 / self.size)
        x0, x1 = cols.min() / self.size, (cols.max() + 1) / self.size
        y0, y1 = rows.min() / self.size, (rows.max() + 1) / self.size
        return _Lung((x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2)

    def _dome(self, lung: _Lung) -> np.ndarray:
        """Flatten a lung's base like the diaphragm dome (the ellipse alone is too round)."""
        base = lung.cy + lung.ay * (0.75 - 0.6 * ((self.xx - lung.cx) / lung.ax) ** 2)
        return np.clip((base - self.yy) / 0.03, 0, 1)

    def _smooth_noise(
        self, rng, cells: int, amplitude: float, shape: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Band-limited noise in [0, amplitude]: a small random grid upsampled smoothly."""
        rows, cols = shape or (self.size, self.size)
        grid = rng.random((cells, cells), dtype=np.float32)
        up = cv2.resize(grid, (cols, rows), interpolation=cv2.INTER_CUBIC)
        return amplitude * np.clip(up, 0, 1)


def _curve(rng: np.random.Generator, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """A gently bent polyline (a quadratic Bézier) in unit coordinates."""
    mid = (start + end) / 2 + rng.normal(0, 0.08, size=2)
    t = np.linspace(0, 1, 32)[:, None]
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * mid + t**2 * end
