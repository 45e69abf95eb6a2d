"""The demo's training phase under two settings, with its OOF mAP, on one or more data seeds.

Builds the demo's data (`pneumo demo`: 200 train images of 256 px, the `ci` preset at 128 px,
2 folds), then for each data seed trains every variant's folds by calling the core functions
directly (no Prefect) and scores its out-of-fold predictions with `evaluate`. Variants take
turns within each seed, so a busy machine slows them alike. One JSON line per variant and
seed (training seconds, CPU seconds, images/s, OOF mAP), then the ratio of the first two
variants' CPU seconds.

    .venv/bin/python -m bench.demo_training [--seeds 0,1] [--out DIR]
    .venv/bin/python -m bench.demo_training --variant "name:threads=1,batch_size=8,val_every=2"
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from bench.record import emit
from flows.cli import DEMO_PIXELS, DEMO_TEST, DEMO_TRAIN
from pneumo_core import evaluate, kaggle, prepare, synthetic, train
from pneumo_core.config import preset
from pneumo_core.storage import open_store

# name -> (torch threads, config overrides). "today": the ci preset as `pneumo demo` trains
# it; "candidate": batch 8 and validation every 2nd epoch (1.45x less CPU per image in the
# step measured alone, fewer validations on top), whose OOF mAP this compares. One thread
# each: CPU time then measures the work, however busy the machine.
VARIANTS: dict[str, tuple[int | None, dict[str, str]]] = {
    "today": (1, {}),
    "candidate": (1, {"batch_size": "8", "val_every": "2"}),
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
            torch.set_num_threads(threads or default_threads)
            config = preset("ci", **overrides)
            run_id = f"{name}-{config.config_hash()}-{time.time_ns()}"
            train.create_run(store, config, run_id)
            started, cpu = time.perf_counter(), time.process_time()
            done = [train.train_fold(store, run_id, k) for k in range(config.n_folds)]
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            result = evaluate.evaluate_run(store, run_id)
            seconds[name].append(cpu)
            images = sum(d["n_train"] for d in done) * config.epochs
            emit(
                f"demo training phase, {name}",
                elapsed,
                "s",
                higher_is_better=False,
                note=json.dumps({"threads": threads or default_threads, **overrides}),
                data_seed=seed,
                oof_map=result["oof_map"],
                cpu_seconds=round(cpu, 1),
                train_images_per_s=round(images / elapsed, 2),
                validated_epochs=[d.get("validated_epochs") for d in done],
            )
    first, second, *_ = (*seconds, None)
    if second:
        emit(
            "demo training phase (2 folds x 10 epochs, 200 images, 128 px), CPU time",
            sum(seconds[second]),
            "CPU s",
            baseline=sum(seconds[first]),
            higher_is_better=False,
            note=f"{second} vs {first}, summed over data seeds {args.seeds}",
        )


def _demo_store(root: Path, seed: int):
    """The demo's dataset for one data seed, ingested and prepared once (re-runs reuse it)."""
    source = root / "data"
    if not (source / synthetic.TRAIN_LABELS).exists():
        synthetic.generate(source, DEMO_TRAIN, DEMO_TEST, DEMO_PIXELS, seed=seed)
    store = open_store((root / "store").as_uri())
    kaggle.ingest(str(source), store, progress=False)
    prepare.prepare_dataset(store, image_size=preset("ci").image_size, n_folds=2, workers=1)
    return store


if __name__ == "__main__":
    main()
