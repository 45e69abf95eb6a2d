"""Torch datasets and loaders over the prepared cache `prepared/<dataset>/<size>/`.

Images come from memory-mapped `images-<split>.npy` arrays (decoded once by `prepare`), so an
item costs a page read, one warp and the photometric ops. Augmentation randomness is drawn
from `(seed, epoch, index)`, never from worker state: the same epoch gives the same images
whatever `num_workers` is, and a resumed run sees exactly what the interrupted one would have.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pneumo_core.boxes import xywh_to_xyxy
from pneumo_core.data.augment import Augmenter
from pneumo_core.data.labels import BOX_COLUMNS, CLASSES, group_boxes
from pneumo_core.errors import InputError, ObjectNotFound
from pneumo_core.layout import BOXES, FOLDS, LABELS, METADATA
from pneumo_core.storage.base import ObjectStore

SPLITS = ("train", "test")
Target = dict[str, torch.Tensor]
Item = tuple[torch.Tensor, Target, str]
Batch = tuple[list[torch.Tensor], list[Target], list[str]]

_COLUMNS = {
    METADATA: ("patientId", "split", "index"),
    LABELS: ("patientId", "class", "target", "n_boxes"),
    BOXES: ("patientId", "sx", "sy", "swidth", "sheight"),
    FOLDS: ("patientId", "class", "fold"),
}


class PreparedCache:
    """The tables and image arrays of one prepared cache, read from any object store.

    Pickles cheaply for DataLoader worker processes: it keeps small tables and the local paths
    of the arrays (`store.local_path`, a cached download on s3), and reopens the memory maps
    lazily in each process.

    Attributes: `metadata`, `labels`, `boxes`, `folds` (DataFrames as CONTRACT.md lists them).
    """

    def __init__(self, store: ObjectStore, dataset: str, image_size: int) -> None:
        self.dataset = dataset
        self.image_size = image_size
        self.prefix = f"prepared/{dataset}/{image_size}/"
        self._store: ObjectStore | None = store
        tables = {name: self._read_csv(store, name) for name in _COLUMNS}
        self.metadata = tables[METADATA]
        self.labels = tables[LABELS]
        self.boxes = tables[BOXES]
        self.folds = tables[FOLDS]
        self._rows = {
            split: dict(zip(frame["patientId"], frame["index"].astype(int), strict=True))
            for split, frame in self.metadata.groupby("split")
        }
        scaled = self.boxes[["patientId", "sx", "sy", "swidth", "sheight"]].set_axis(
            ["patientId", *BOX_COLUMNS], axis=1
        )
        self._boxes = {
            pid: xywh_to_xyxy(xywh, np.float32)
            for pid, xywh in group_boxes(self.labels["patientId"], scaled).items()
        }
        self._paths: dict[str, Path] = {}
        self._arrays: dict[str, np.ndarray] = {}

    def patient_ids(self, split: str = "train") -> list[str]:
        """Every patient of a split with an image in the cache, in array order."""
        _check_split(split)
        rows = self._rows.get(split, {})
        return sorted(rows, key=rows.__getitem__)

    def fold_ids(self, fold: int) -> tuple[list[str], list[str]]:
        """(training ids, validation ids) for one fold of folds.csv."""
        n_folds = int(self.folds["fold"].max()) + 1 if len(self.folds) else 0
        if not 0 <= fold < n_folds:
            raise InputError(f"fold {fold} out of range: {self.prefix}folds.csv has {n_folds}")
        held_out = self.folds["fold"] == fold
        return list(self.folds.loc[~held_out, "patientId"]), list(
            self.folds.loc[held_out, "patientId"]
        )

    def boxes_xyxy(self, patient_id: str) -> np.ndarray:
        """float32 [N, 4] x1y1x2y2 boxes in cache pixels; empty for negatives and test images."""
        return self._boxes.get(patient_id, np.zeros((0, 4), dtype=np.float32))

    def rows(self, patient_ids: Sequence[str], split: str) -> np.ndarray:
        """Array rows of these patients; unknown ids are an InputError that names them."""
        _check_split(split)
        index = self._rows.get(split, {})
        missing = [pid for pid in patient_ids if pid not in index]
        if missing:
            raise InputError(
                f"{len(missing)} patient(s) not in the {split} split of {self.prefix}: "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
            )
        return np.array([index[pid] for pid in patient_ids], dtype=np.int64)

    def images(self, split: str) -> np.ndarray:
        """uint8 [N, S, S] read-only memory map of one split (fetched once from s3)."""
        _check_split(split)
        if split not in self._arrays:
            key = f"{self.prefix}images-{split}.npy"
            if split not in self._paths:
                self._paths[split] = self._local_path(key)
            array = np.load(self._paths[split], mmap_mode="r")
            expected = (len(self._rows.get(split, {})), self.image_size, self.image_size)
            if array.dtype != np.uint8 or array.shape != expected:
                raise InputError(
                    f"{key}: expected uint8 {expected} (metadata.csv rows, image size), "
                    f"got {array.dtype} {array.shape}"
                )
            self._arrays[split] = array
        return self._arrays[split]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_store=None, _arrays={})
        return state

    def _local_path(self, key: str) -> Path:
        if self._store is None:
            raise InputError(f"{key} was not opened before this cache was pickled")
        try:
            return self._store.local_path(key)
        except ObjectNotFound as exc:
            raise InputError(f"prepared cache incomplete ({exc}); run `pneumo prepare`") from exc

    def _read_csv(self, store: ObjectStore, name: str) -> pd.DataFrame:
        key = self.prefix + name
        try:
            raw = store.get_bytes(key)
        except ObjectNotFound as exc:
            raise InputError(
                f"no prepared cache: {store.url(key)} is missing; "
                f"run `pneumo prepare --image-size {self.image_size}` first"
            ) from exc
        frame = pd.read_csv(io.BytesIO(raw), dtype={"patientId": str})
        missing = [c for c in _COLUMNS[name] if c not in frame.columns]
        if missing:
            raise InputError(f"{key}: missing column(s) {', '.join(missing)}")
        return frame


class DetectionDataset(Dataset):
    """Items `(image [1,S,S] float 0..1, {"boxes": float [N,4] x1y1x2y2 cache px, "labels":
    int64 [N] all ones, "image_class": int64 index into labels.CLASSES, -1 when unknown},
    patientId)`; N may be 0 (negatives train too).

    `split` is which image array the ids live in ("train" also serves validation: pass no
    augmenter). Call `set_epoch(e)` before iterating a loader to vary the augmentation
    (and, with `make_loader(shuffle=True)`, the order) per epoch.
    """

    def __init__(
        self,
        cache: PreparedCache,
        patient_ids: Sequence[str],
        split: str = "train",
        augmenter: Augmenter | None = None,
        seed: int = 0,
    ) -> None:
        if seed < 0:
            raise InputError(f"seed must be >= 0, got {seed}")
        self.cache = cache
        self.patient_ids = [str(pid) for pid in patient_ids]
        self.split = split
        self.augmenter = augmenter
        self.seed = seed
        self.epoch = 0
        self._rows = cache.rows(self.patient_ids, split)
        known = cache.labels.set_index("patientId")["class"].to_dict()
        index = {name: i for i, name in enumerate(CLASSES)}
        self._image_class = [index.get(known.get(pid), -1) for pid in self.patient_ids]
        cache.images(split)  # resolve (download) and validate now, in the main process

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.patient_ids)

    def __getitem__(self, index: int) -> Item:
        patient_id = self.patient_ids[index]
        image = self.cache.images(self.split)[self._rows[index]]
        boxes = self.cache.boxes_xyxy(patient_id)
        if self.augmenter is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            image, boxes = self.augmenter(np.asarray(image), boxes, rng)
        tensor = torch.tensor(image, dtype=torch.float32).div_(255.0).unsqueeze_(0)
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.ones(len(boxes), dtype=torch.int64),
            "image_class": torch.tensor(self._image_class[index], dtype=torch.int64),
        }
        return tensor, target, patient_id


class EpochShuffle(Sampler[int]):
    """A permutation drawn from (dataset.seed, dataset.epoch): reproducible on resume."""

    def __init__(self, dataset: DetectionDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.dataset.seed, self.dataset.epoch))
        return iter(rng.permutation(len(self.dataset)).tolist())


def collate(batch: Sequence[Item]) -> Batch:
    """Detection batches stay lists: torchvision's detectors take lists of images and targets."""
    images, targets, ids = zip(*batch, strict=True)
    return list(images), list(targets), list(ids)


def make_loader(
    dataset: DetectionDataset,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader yielding `(images, targets, patient_ids)` lists; pinned memory on CUDA.

    Workers are recreated every epoch (not persistent) so `dataset.set_epoch` reaches them.
    Do not call `cv2.setNumThreads` inside forked workers: once the parent has used OpenCV's
    thread pool, that call deadlocks the child.
    """
    if batch_size < 1 or num_workers < 0:
        raise InputError(
            f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffle(dataset) if shuffle else None,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
    )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
