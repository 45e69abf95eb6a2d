"""One training step on CPU per core: our execution settings against the seed's, and the
step with data already in memory as the limit.

For the `default` recipe at 512 px (ResNet-50-FPN, batch 6, random weights: none are fetched)
and the `ci` recipe the demo trains (ResNet-18-FPN at 128 px), one torch thread, best of
--repeat steps taking turns, in CPU seconds (robust on a shared machine):

- ours: batches from `data.make_loader` over the prepared memmap cache with the recipe's
  augmentation, then forward, backward, clipping and AdamW as `train.py` runs them, with
  our CPU execution defaults (bfloat16 autocast where the CPU computes it natively);
- baseline: the seed's settings (the `seed` preset: float32, batch 6, Adam, its head and
  box loss) on the same backbone and image size, data in memory;
- limit: our step with the batch already in memory (what a perfect loader would allow).

    .venv/bin/python -m bench.bench_train [--repeat 2] [--recipes default,ci]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path

import torch

from bench.record import emit
from bench.timing import best_of_turns, synthetic_dicoms
from pneumo_core import DEFAULT_DATASET
from pneumo_core.config.run import RunConfig, preset
from pneumo_core.data.augment import Augmenter
from pneumo_core.data.dataset import DetectionDataset, PreparedCache, make_loader
from pneumo_core.data.ingest import ingest
from pneumo_core.data.prepare import prepare_dataset
from pneumo_core.model.build import build_model
from pneumo_core.model.detector import training_losses
from pneumo_core.storage.local import LocalStore
from pneumo_core.train.optim import amp_dtype, create_optimizer

Batch = tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]


def step_fn(config: RunConfig, batches: Callable[[], Batch]) -> Callable[[], None]:
    """One optimiser step of `config`'s model on the next batch, as train.py takes it."""
    torch.manual_seed(0)
    model, _ = build_model(config)
    model.train()
    optimizer = create_optimizer(model, config)
    amp = amp_dtype(config.execution, torch.device("cpu"))

    def step() -> None:
        images, targets = batches()
        with torch.autocast("cpu", dtype=amp) if amp else nullcontext():
            losses = training_losses(model, images, targets)
        loss = losses["classification"] + losses["bbox_regression"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()

    return step


def loader_batches(cache: PreparedCache, config: RunConfig) -> Callable[[], Batch]:
    ids = cache.patient_ids("train")
    dataset = DetectionDataset(cache, ids, augmenter=Augmenter(config.augment))
    loader = make_loader(dataset, config.batch_size, shuffle=True, drop_last=True)

    def endless() -> Iterator[Batch]:
        while True:
            for images, targets, _ in loader:
                yield images, targets

    batches = endless()
    return lambda: next(batches)


def fixed_batch(batch: Batch) -> Callable[[], Batch]:
    return lambda: batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--recipes", default="ci,default")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        folder = synthetic_dicoms(Path(tmp), 16, 512)
        store = LocalStore(Path(tmp) / "store")
        ingest(str(folder.parent), store, progress=False)
        for name in args.recipes.split(","):
            ours = preset(name, pretrained=False)
            seed = preset(
                "seed",
                pretrained=False,
                image_size=ours.image_size,
                backbone=ours.backbone,
                fpn_channels=ours.fpn_channels,
            )
            prepare_dataset(store, image_size=ours.image_size, n_folds=2, workers=1)
            cache = PreparedCache(store, DEFAULT_DATASET, ours.image_size)
            batches = loader_batches(cache, ours)
            in_memory = fixed_batch(batches())
            seed_batch = fixed_batch(loader_batches(cache, seed)())
            seconds = best_of_turns(
                {
                    "ours": step_fn(ours, batches),
                    "limit": step_fn(ours, in_memory),
                    "baseline": step_fn(seed, seed_batch),
                },
                args.repeat,
            )
            ours_amp = amp_dtype(ours.execution, torch.device("cpu"))
            emit(
                f"training step, {name} recipe ({ours.backbone}, {ours.image_size} px), per core",
                ours.batch_size / seconds["ours"],
                "images/s",
                baseline=seed.batch_size / seconds["baseline"],
                limit=ours.batch_size / seconds["limit"],
                note=f"batch {ours.batch_size}, amp {ours_amp}; "
                "baseline: the seed's settings (float32, batch 6, Adam, its head and loss) on "
                "the same backbone and size, data in memory; limit: our step with data in "
                "memory; CPU time of one thread",
            )


if __name__ == "__main__":
    main()
