"""Augmentation output against a reference captured before OpenCV became headless-only.

The geometric warp (cv2.warpAffine) and imgaug's photometric ops (blur, noise, gamma,
salt and pepper: OpenCV and numpy inside) run on a fixed image with fixed seeds; the output
must be byte for byte what the project's earlier install (both OpenCV builds) produced.
Needs numpy and pneumo_core only, so it also runs inside the worker image:

    python tests/docker/augment_reference.py --capture   # once, before the change
    python tests/docker/augment_reference.py             # exit 1 and the differences
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REFERENCE = Path(__file__).with_name("augment_reference.npz")
SEEDS = range(8)


def samples() -> dict[str, np.ndarray]:
    """Augmented image and boxes for each seed, with every photometric op switched on."""
    from pneumo_core.data.augment import AugmentConfig, Augmenter

    yy, xx = np.mgrid[0:96, 0:96]
    image = (128 + 60 * np.sin(xx / 7.0) * np.cos(yy / 11.0)).astype(np.uint8)
    boxes = np.array([[10, 12, 40, 50], [50, 30, 90, 70]], dtype=np.float32)
    augmenter = Augmenter(AugmentConfig(blur_p=1.0, noise_p=1.0, salt_pepper_p=1.0))
    out: dict[str, np.ndarray] = {}
    for seed in SEEDS:
        augmented, moved = augmenter(image, boxes, np.random.default_rng(seed))
        out[f"image-{seed}"], out[f"boxes-{seed}"] = augmented, moved
    return out


def differences(reference: Path = REFERENCE) -> list[str]:
    """Names of the samples that differ from the reference (empty: unchanged)."""
    expected = np.load(reference)
    got = samples()
    if set(got) != set(expected.files):
        return [f"sample names {sorted(got)} != {sorted(expected.files)}"]
    return [name for name in sorted(got) if not np.array_equal(got[name], expected[name])]


def main(argv: list[str]) -> int:
    if argv == ["--capture"]:
        np.savez_compressed(REFERENCE, **samples())
        return 0
    reference = Path(argv[0]) if argv else REFERENCE
    wrong = differences(reference)
    print("augmentation unchanged" if not wrong else f"augmentation differs: {wrong}")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
