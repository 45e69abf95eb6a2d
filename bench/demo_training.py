"""The demo's training phase under two settings, with its OOF mAP, on one or more data seeds.

Builds the demo's data (`pneumo demo`: 200 train images of 256 px, the `ci` preset at 128 px,
2 folds), then for each data seed trains every variant's folds by calling the core functions
directly (no Prefect) as the pipeline's local runner does (`max_parallel_folds` folds at once
in threads, the cores shared between them with `train.share_cpu`), and scores its out-of-fold
predictions with `evaluate`. Variants take turns within each seed. One JSON line per variant
and seed (wall and CPU seconds, images/s, OOF mAP), then the ratio of the first two variants'
wall seconds summed over the seeds. Run it on an otherwise idle machine: wall time is the figure.

    .venv/bin/python -m bench.demo_training [--seeds 0,1] [--out DIR]
    .venv/bin/python -m bench.demo_training --variant "name:threads=1,batch_size=8,val_every=2"
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import torch

from bench.record import emit
from flows.cli.pipeline import DEMO_PIXELS, DEMO_TEST, DEMO_TRAIN
from pneumo_core.config.run import RunConfig, preset
from pneumo_core.data.ingest import ingest
from pneumo_core.data.prepare import prepare_dataset
from pneumo_core.data.synthetic import generate
from pneumo_core.evaluation import evaluate
from pneumo_core.layout import TRAIN_LABELS
from pneumo_core.runs.run import create_run
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.open import open_store
from pneumo_core.train.device import cpu_shared_by
from pneumo_core.train.fold import train_fold

# name -> (torch threads or None for the machine's default, config overrides).
# "before": the ci preset's training as `pneumo demo` ran it until this change (one fold at a
# time, all cores, batch 4, validation every epoch); "ci": the ci preset as it is now.
VARIANTS: dict[str, tuple[int | None, dict[str, str]]] = {
    "before": (None, {"batch_size": "4", "val_every": "1", "max_parallel_folds": "1"}),
    "ci": (None, {}),
}


def parse_variant(text: str) -> tuple[str, tuple[int | None, dict[str, str]]]:
    """`name:threads=1,amp=false` -> ("name", (1, {"amp": "false"}))."""
    name, _, spec = text.partition(":")
    overrides = dict(item.split("=", 1) for item in spec.split(",") if item)
    threads = overrides.pop("threads", None)
    return name, (int(threads) if threads else None, overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1", help="synthetic data seeds")
    parser.add_argument("--out", type=Path, default=Path("/tmp/pneumo-bench-demo-training"))
    parser.add_argument("--variant", action="append", default=[], help="name:k=v,... (repeat)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    variants = dict(map(parse_variant, args.variant)) if args.variant else VARIANTS
    default_threads = torch.get_num_threads()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for seed in (int(s) for s in args.seeds.split(",")):
        store = _demo_store(args.out / f"seed-{seed}", seed)
        for name, (threads, overrides) in variants.items():
            config = preset("ci", **overrides)
            torch.set_num_threads(threads or default_threads)
            run_id = f"{name}-{config.config_hash()}-{time.time_ns()}"
            create_run(store, config, run_id)
            started, cpu = time.perf_counter(), time.process_time()
            done = train_folds(store, run_id, config, share=not threads)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            result = evaluate.evaluate_run(store, run_id)
            seconds[name].append(elapsed)
            images = sum(d.n_train for d in done) * config.epochs
            emit(
                f"demo training phase, {name}",
                elapsed,
                "s",
                higher_is_better=False,
                note=json.dumps({"threads": threads or "default", **overrides}),
                data_seed=seed,
                oof_map=result.oof_map,
                oof_map_se=result.get("oof_map_se"),
                oof_map_in_sample=result.get("oof_map_in_sample"),
                cpu_seconds=round(cpu, 1),
                train_images_per_s=round(images / elapsed, 2),
                validated_epochs=[d.validated_epochs for d in done],
            )
    first, second, *_ = (*seconds, None)
    if second:
        emit(
            "demo training phase (2 folds x 10 epochs, 200 images, 128 px), wall time",
            sum(seconds[second]),
            "s",
            baseline=sum(seconds[first]),
            higher_is_better=False,
            note=f"{second} vs {first}, summed over data seeds {args.seeds}",
        )


def train_folds(store: ObjectStore, run_id: str, config: RunConfig, share: bool = True) -> list:
    """Every fold of the run as the pipeline's local runner trains them on CPU:
    `max_parallel_folds` at once in threads, the cores shared between them when `share`."""
    parallel = min(config.execution.max_parallel_folds, config.n_folds)
    shared = cpu_shared_by(parallel) if parallel > 1 and share else nullcontext()
    with shared, ThreadPoolExecutor(parallel) as pool:
        folds = range(config.n_folds)
        return list(pool.map(lambda k: train_fold(store, run_id, k), folds))


def _demo_store(root: Path, seed: int):
    """The demo's dataset for one data seed, ingested and prepared once (re-runs reuse it)."""
    source = root / "data"
    if not (source / TRAIN_LABELS).exists():
        generate(source, DEMO_TRAIN, DEMO_TEST, DEMO_PIXELS, seed=seed)
    store = open_store((root / "store").as_uri())
    ingest(str(source), store, progress=False)
    prepare_dataset(store, image_size=preset("ci").image_size, n_folds=2, workers=1)
    return store


if __name__ == "__main__":
    main()
