"""Training-loader throughput at 512 px with full (seed-recipe) augmentation, per core.

Two loaders over the same synthetic 1024 px JPEG-Baseline DICOMs (`synthetic.generate`),
both through a torch DataLoader with `num_workers=0` and one thread (OpenCV, torch), so the
figure is images per second per core:

- ours: `data.DetectionDataset` over the prepared cache (`prepare_dataset` at 512 px):
  memory-mapped uint8 rows, one `cv2.warpAffine`, imgaug photometric ops;
- seed-style: every item decodes its DICOM with `pydicom.dcmread(...).pixel_array`, warps it
  with `skimage.transform.warp` (1024 -> 512 folded into the same affine matrix: one warp, the
  cheapest a seed-style loader can do) and applies the same imgaug photometric ops.

Rates are images per CPU-second of this process (robust on a shared machine); wall-clock
rates are printed beside them. Best of --repeat passes over the images.

    .venv/bin/python bench/bench_loader.py [--n-images 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
import torch
from skimage.transform import AffineTransform, warp
from torch.utils.data import DataLoader, Dataset

from pneumo_core import DEFAULT_DATASET, synthetic
from pneumo_core.augment import AugmentConfig, Augmenter, transform_boxes
from pneumo_core.data import DetectionDataset, Item, PreparedCache, collate, make_loader
from pneumo_core.kaggle import ingest
from pneumo_core.prepare import prepare_dataset
from pneumo_core.storage import LocalStore

SIZE = 512
BATCH = 6  # the seed's training batch


class SeedStyleDataset(Dataset):
    """The seed's way: decode the DICOM every time, warp with skimage, then photometric ops."""

    def __init__(self, files: list[Path], cache: PreparedCache, config: AugmentConfig) -> None:
        self.files = files
        self.cache = cache
        self.geometry = Augmenter(config)
        no_geometry = config.with_overrides(
            {"hflip_p": 0.0, "scale": 0.0, "rotation_deg": 0.0, "shear_deg": 0.0, "shift": 0.0}
        )
        self.photometric = Augmenter(no_geometry)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Item:
        rng = np.random.default_rng((0, 0, index))
        pixels = pydicom.dcmread(self.files[index]).pixel_array
        shrink = AffineTransform(scale=SIZE / pixels.shape[0]).params
        # 1024 px pixel centres to 512 px ones (x / 2 - 0.25), then the augmentation matrix.
        to_half = AffineTransform(translation=(-0.25, -0.25)).params
        matrix = self.geometry.sample_matrix(SIZE, SIZE, rng)
        warped = warp(
            pixels,
            AffineTransform(matrix=matrix @ to_half @ shrink).inverse,
            output_shape=(SIZE, SIZE),
            order=1,
            preserve_range=True,
        ).astype(np.uint8)
        patient_id = self.files[index].stem
        boxes = transform_boxes(self.cache.boxes_xyxy(patient_id), matrix, SIZE, SIZE, 4.0, 0.25)
        image, boxes = self.photometric(warped, boxes, rng)
        tensor = torch.tensor(image, dtype=torch.float32).div_(255.0).unsqueeze_(0)
        target = {
            "boxes": torch.as_tensor(boxes).reshape(-1, 4),
            "labels": torch.ones(len(boxes), dtype=torch.int64),
        }
        return tensor, target, patient_id


def rate(loader: DataLoader, repeat: int) -> tuple[float, float]:
    """(images per CPU-second, images per wall-second), best of `repeat` full passes."""
    best_cpu = best_wall = float("inf")
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        n = sum(len(ids) for _, _, ids in loader)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return n / best_cpu, n / best_wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    config = AugmentConfig.seed_recipe()
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        source = synthetic.generate(Path(tmp) / "src", n_train=args.n_images, n_test=0, seed=0)
        store = LocalStore(Path(tmp) / "store")
        ingest(str(source), store, progress=False)
        prepare_dataset(store, image_size=SIZE, n_folds=2, workers=1, progress=False)
        cache = PreparedCache(store, DEFAULT_DATASET, SIZE)
        ids = cache.patient_ids("train")
        ours = DetectionDataset(cache, ids, augmenter=Augmenter(config))
        files = [source / "stage_2_train_images" / f"{pid}.dcm" for pid in ids]
        seed_style = SeedStyleDataset(files, cache, config)
        our_cpu, our_wall = rate(make_loader(ours, BATCH, shuffle=True), args.repeat)
        seed_loader = DataLoader(seed_style, batch_size=BATCH, shuffle=True, collate_fn=collate)
        seed_cpu, seed_wall = rate(seed_loader, args.repeat)
    print(f"loader throughput at {SIZE} px, seed-recipe augmentation, {len(ids)} images, 1 core")
    print(f"{'loader':<44} {'img/s/core (CPU)':>17} {'img/s (wall)':>13}")
    print(f"{'ours: memmap cache + warpAffine + imgaug':<44} {our_cpu:>17.1f} {our_wall:>13.1f}")
    print(
        f"{'seed-style: pydicom + skimage warp + imgaug':<44} {seed_cpu:>17.1f} {seed_wall:>13.1f}"
    )
    ratio_cpu, ratio_wall = our_cpu / seed_cpu, our_wall / seed_wall
    print(f"ratio ours / seed-style: {ratio_cpu:.1f}x (CPU), {ratio_wall:.1f}x (wall)")


if __name__ == "__main__":
    main()
