"""Training-loader throughput at 512 px with the full seed augmentation, per core.

Two loaders over the same synthetic 1024 px JPEG-Baseline DICOMs, both through a torch
DataLoader with `num_workers=0` and one thread (OpenCV, torch), so the figure is images per
CPU-second of one core (robust on a shared machine), best of --repeat passes taking turns:

- ours: `data.DetectionDataset` over the prepared cache (`prepare_dataset` at 512 px):
  memory-mapped uint8 rows, one `cv2.warpAffine`, imgaug photometric ops;
- baseline (seed-style): every item decodes its DICOM with pydicom (`pixel_array`, the Pillow
  plugin pinned as in `bench.bench_decode`: what a fresh install uses), warps it with
  `skimage.transform.warp` (1024 -> 512 folded into the same affine matrix: one warp, the
  cheapest a seed-style loader can do) and applies the same imgaug photometric ops;
- limit: the rate the `default` recipe's training step consumes images on one core with data
  in memory (`bench.bench_train`): a loader above it never makes training wait.

    .venv/bin/python -m bench.bench_loader [--n-images 48] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pydicom
import torch
from skimage.transform import AffineTransform, warp
from torch.utils.data import DataLoader, Dataset

from bench.bench_decode import BASELINE_PLUGIN
from bench.bench_train import fixed_batch, step_fn
from bench.record import emit
from bench.timing import best_of_turns, synthetic_dicoms
from pneumo_core import DEFAULT_DATASET
from pneumo_core.config.run import preset
from pneumo_core.data.augment import AugmentConfig, Augmenter, transform_boxes
from pneumo_core.data.dataset import DetectionDataset, Item, PreparedCache, collate, make_loader
from pneumo_core.data.ingest import ingest
from pneumo_core.data.prepare import prepare_dataset
from pneumo_core.storage.local import LocalStore

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
        ds = pydicom.dcmread(self.files[index])
        pixels = pydicom.pixels.pixel_array(ds, decoding_plugin=BASELINE_PLUGIN)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    config = AugmentConfig.seed_recipe()
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        folder = synthetic_dicoms(Path(tmp), args.n_images, 1024)
        store = LocalStore(Path(tmp) / "store")
        ingest(str(folder.parent), store, progress=False)
        prepare_dataset(store, image_size=SIZE, n_folds=2, workers=1, progress=False)
        cache = PreparedCache(store, DEFAULT_DATASET, SIZE)
        ids = cache.patient_ids("train")
        ours = make_loader(DetectionDataset(cache, ids, augmenter=Augmenter(config)), BATCH)
        files = [folder / f"{pid}.dcm" for pid in ids]
        seed_style = DataLoader(
            SeedStyleDataset(files, cache, config), batch_size=BATCH, collate_fn=collate
        )
        seconds = best_of_turns(
            {"ours": lambda: list(ours), "baseline": lambda: list(seed_style)}, args.repeat
        )
        images, targets, _ = next(iter(ours))
        model = preset("default", pretrained=False, image_size=SIZE, batch_size=BATCH)
        step = best_of_turns({"limit": step_fn(model, fixed_batch((images, targets)))}, 1)
    emit(
        f"training loader at {SIZE} px, seed augmentation, per core",
        len(ids) / seconds["ours"],
        "images/s",
        baseline=len(ids) / seconds["baseline"],
        limit=BATCH / step["limit"],
        note=f"{len(ids)} synthetic images; baseline pydicom ({BASELINE_PLUGIN} plugin) + skimage "
        "warp + imgaug; limit: the default recipe's training step (ResNet-50, data in memory) "
        "on one core, the rate a loader must exceed",
    )


if __name__ == "__main__":
    main()
