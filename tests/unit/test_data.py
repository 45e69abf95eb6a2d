"""Dataset and loaders over a prepared cache (the `tiny_prepared` fixture of tests/conftest.py)."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from pneumo_core import DEFAULT_DATASET
from pneumo_core.data.augment import AugmentConfig, Augmenter
from pneumo_core.data.dataset import DetectionDataset, PreparedCache, collate, make_loader
from pneumo_core.data.ingest import ingest
from pneumo_core.data.labels import CLASSES
from pneumo_core.data.prepare import prepare_dataset
from pneumo_core.data.synthetic import generate
from pneumo_core.errors import InputError
from pneumo_core.storage.local import LocalStore

GEOMETRY_ONLY = AugmentConfig(gamma=0.0, blur_p=0.0, noise_p=0.0, salt_pepper_p=0.0)


@pytest.fixture
def cache(tiny_prepared) -> PreparedCache:
    return PreparedCache(tiny_prepared.store, tiny_prepared.dataset, tiny_prepared.image_size)


def _train_array(tiny_prepared) -> np.ndarray:
    key = f"prepared/{tiny_prepared.dataset}/{tiny_prepared.image_size}/images-train.npy"
    return np.load(io.BytesIO(tiny_prepared.store.get_bytes(key)))


def test_cache_tables_ids_and_boxes(cache, tiny_prepared):
    assert cache.patient_ids("train") == [f"train-{i}" for i in range(8)]
    assert cache.patient_ids("test") == ["test-0", "test-1"]
    train_ids, val_ids = cache.fold_ids(1)
    assert sorted(train_ids + val_ids) == sorted(cache.patient_ids("train"))
    assert val_ids == ["train-1", "train-3", "train-5", "train-7"]
    for pid, expected in tiny_prepared.boxes.items():
        np.testing.assert_allclose(cache.boxes_xyxy(pid), expected)
    assert cache.boxes_xyxy("test-0").shape == (0, 4)
    with pytest.raises(InputError, match="fold 2 out of range"):
        cache.fold_ids(2)


def test_items_without_augmentation_are_the_cached_pixels(cache, tiny_prepared):
    pixels = _train_array(tiny_prepared)
    dataset = DetectionDataset(cache, ["train-5", "train-2"])
    image, target, pid = dataset[0]
    assert pid == "train-5" and image.dtype == torch.float32 and image.shape == (1, 64, 64)
    torch.testing.assert_close(image[0], torch.from_numpy(pixels[5] / 255.0).float())
    torch.testing.assert_close(target["boxes"], torch.from_numpy(tiny_prepared.boxes["train-5"]))
    assert target["boxes"].shape == (2, 4) and target["labels"].tolist() == [1, 1]
    _, negative, _ = dataset[1]
    assert negative["boxes"].shape == (0, 4) and negative["labels"].dtype == torch.int64
    assert len(negative["labels"]) == 0
    # the image class for the image head: index into labels.CLASSES
    assert CLASSES[int(target["image_class"])] == "Lung Opacity"
    assert CLASSES[int(negative["image_class"])] == "Normal"


def test_test_split_items_have_no_boxes(cache):
    image, target, pid = DetectionDataset(cache, ["test-1"], split="test")[0]
    assert pid == "test-1" and image.shape == (1, 64, 64) and len(target["boxes"]) == 0
    assert int(target["image_class"]) == -1  # no class known: the image head ignores it


def test_augmented_boxes_still_cover_the_bright_content(cache):
    positives = [pid for pid in cache.patient_ids("train") if len(cache.boxes_xyxy(pid))]
    dataset = DetectionDataset(cache, positives, augmenter=Augmenter(GEOMETRY_ONLY), seed=3)
    inside = []
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for image, target, _ in dataset:
            for x1, y1, x2, y2 in target["boxes"].round().int().tolist():
                inside.append(image[0, y1:y2, x1:x2].mean().item())
    assert len(inside) >= 12
    assert min(inside) > 0.6  # boxes are 220/255 = 0.86 on a background below 60/255 = 0.24


def test_augmentation_is_seeded_by_seed_epoch_and_index(cache):
    augmenter = Augmenter(AugmentConfig.seed_recipe())
    ids = cache.patient_ids("train")
    a = DetectionDataset(cache, ids, augmenter=augmenter, seed=1)
    b = DetectionDataset(cache, ids, augmenter=Augmenter(AugmentConfig.seed_recipe()), seed=1)
    for dataset in (a, b):
        dataset.set_epoch(2)
    torch.testing.assert_close(a[5][0], b[5][0])
    torch.testing.assert_close(a[5][1]["boxes"], b[5][1]["boxes"])
    a.set_epoch(3)
    assert not torch.equal(a[5][0], b[5][0])


def test_loader_batches_are_identical_whatever_the_worker_count(cache):
    torch.set_num_threads(1)
    dataset = DetectionDataset(
        cache, cache.patient_ids("train"), augmenter=Augmenter(AugmentConfig()), seed=7
    )
    dataset.set_epoch(4)
    runs = []
    for workers in (0, 2):
        loader = make_loader(dataset, batch_size=3, shuffle=True, num_workers=workers)
        runs.append(list(loader))
    assert [len(ids) for _, _, ids in runs[0]] == [3, 3, 2]
    for (images0, targets0, ids0), (images2, targets2, ids2) in zip(*runs, strict=True):
        assert ids0 == ids2
        for x, y in zip(images0, images2, strict=True):
            torch.testing.assert_close(x, y)
        for x, y in zip(targets0, targets2, strict=True):
            torch.testing.assert_close(x["boxes"], y["boxes"])


def test_shuffle_is_a_permutation_per_epoch(cache):
    dataset = DetectionDataset(cache, cache.patient_ids("train"), seed=0)
    loader = make_loader(dataset, batch_size=8, shuffle=True)
    orders = []
    for epoch in (0, 1, 0):
        dataset.set_epoch(epoch)
        orders.append(next(iter(loader))[2])
    assert sorted(orders[0]) == sorted(dataset.patient_ids)
    assert orders[0] == orders[2] and orders[0] != orders[1]
    unshuffled = make_loader(dataset, batch_size=8, shuffle=False)
    assert next(iter(unshuffled))[2] == dataset.patient_ids


def test_collate_keeps_lists_and_loader_does_not_pin_on_cpu(cache):
    dataset = DetectionDataset(cache, ["train-1", "train-2"])
    images, targets, ids = collate([dataset[0], dataset[1]])
    assert isinstance(images, list) and isinstance(targets, list) and ids == ["train-1", "train-2"]
    if not torch.cuda.is_available():
        assert make_loader(dataset, batch_size=2).pin_memory is False


def test_cache_pickles_small_and_reopens_its_arrays(cache):
    DetectionDataset(cache, ["train-0"])  # opens the train array
    data = pickle.dumps(cache)
    assert len(data) < 20_000  # tables and paths, not the pixels
    copy = pickle.loads(data)
    np.testing.assert_array_equal(copy.images("train"), cache.images("train"))


def test_unknown_patients_are_named(cache):
    with pytest.raises(InputError, match=r"not in the train split.*nobody"):
        DetectionDataset(cache, ["train-0", "nobody"])
    with pytest.raises(InputError, match=r"test split.*train-0"):
        DetectionDataset(cache, ["train-0"], split="test")


def test_missing_cache_points_at_prepare(tiny_prepared):
    with pytest.raises(InputError, match="pneumo prepare --image-size 32"):
        PreparedCache(tiny_prepared.store, tiny_prepared.dataset, 32)


def test_image_array_of_the_wrong_shape_is_rejected(tiny_prepared):
    key = f"prepared/{tiny_prepared.dataset}/{tiny_prepared.image_size}/images-train.npy"
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((8, 32, 32), dtype=np.uint8))
    tiny_prepared.store.put_bytes(key, buffer.getvalue())
    cache = PreparedCache(tiny_prepared.store, tiny_prepared.dataset, tiny_prepared.image_size)
    with pytest.raises(InputError, match=r"images-train.npy: expected uint8 \(8, 64, 64\)"):
        DetectionDataset(cache, ["train-0"])


def test_reads_what_prepare_writes(tmp_path):
    """The real pipeline's cache (synth -> ingest -> prepare), not only the fixture's copy."""
    source = generate(tmp_path / "src", n_train=30, n_test=2, image_size=128, seed=1)
    store = LocalStore(tmp_path / "store")
    ingest(str(source), store, progress=False)
    prepare_dataset(store, image_size=64, n_folds=2, workers=1, progress=False)
    cache = PreparedCache(store, DEFAULT_DATASET, 64)
    ids = cache.patient_ids("train")
    train_ids, val_ids = cache.fold_ids(0)
    assert len(ids) == 30 and sorted(train_ids + val_ids) == sorted(ids)
    assert len(cache.patient_ids("test")) == 2
    dataset = DetectionDataset(cache, ids)
    n_boxes = dict(zip(cache.labels["patientId"], cache.labels["n_boxes"], strict=True))
    for image, target, pid in dataset:
        assert image.shape == (1, 64, 64) and len(target["boxes"]) == n_boxes[pid]
        boxes = target["boxes"]
        assert ((boxes >= 0) & (boxes <= 64)).all() and (boxes[:, 2:] > boxes[:, :2]).all()
