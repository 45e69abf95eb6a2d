"""Test-set prediction on CPU: the fold ensemble with flip TTA by batch size, under
`torch.no_grad` and `torch.inference_mode`.

The `ci` recipe (the demo's) trains two folds for two epochs on generated data, so that the
models find boxes and post-processing (WBF of 2 folds x 2 flips, threshold, shrink) costs what
it does in a real run; then `predict.predict_test_set` predicts the test images at each batch
size, in wall seconds with the machine's threads, best of --repeat turns:

- ours: `predict.BATCH` images per forward, as predict runs them;
- baseline: one image per forward (a seed-style loop over the test folder), same models.

    .venv/bin/python -m bench.bench_inference [--repeat 2] [--n-test 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.demo_training import train_folds
from bench.record import emit
from bench.timing import best_of_turns
from pneumo_core.config.run import preset
from pneumo_core.data.ingest import ingest
from pneumo_core.data.prepare import prepare_dataset
from pneumo_core.data.synthetic import generate
from pneumo_core.evaluation import evaluate
from pneumo_core.model import predict
from pneumo_core.runs.run import create_run
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.local import LocalStore

# (batch, under inference_mode): the baseline, predict's setting (16) under both modes, and
# its neighbours (all five sizes under both modes measured on this CPU: docs/benchmarks.md)
SETTINGS = ((1, False), (8, True), (16, False), (16, True), (32, True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--n-test", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        store = LocalStore(Path(tmp) / "store")
        source = generate(Path(tmp) / "data", 64, args.n_test, image_size=256, seed=1)
        ingest(str(source), store, progress=False)
        config = preset("ci", epochs=2)
        prepare_dataset(store, image_size=config.image_size, n_folds=2, workers=1)
        run_id = create_run(store, config)
        train_folds(store, run_id, config, share=False)
        evaluate.evaluate_run(store, run_id)  # predict applies its tuned post-processing
        out = Path(tmp) / "submission.csv"
        runs: dict[str, Callable[[], object]] = {
            _setting(b, mode): _predict(store, run_id, out, b, mode) for b, mode in SETTINGS
        }
        seconds = best_of_turns(runs, args.repeat, clock=time.perf_counter)
    baseline = args.n_test / seconds[_setting(*SETTINGS[0])]
    for name, value in seconds.items():
        if name != _setting(*SETTINGS[0]):
            emit(
                f"predict {args.n_test} test images, ci recipe, 2 folds + flip TTA, {name}",
                args.n_test / value,
                "images/s",
                baseline=baseline,
                note="whole predict_test_set (cache read, 2 models x 2 flips, WBF, "
                "post-processing, checked CSV), wall time; baseline: one image per forward, "
                "no_grad",
            )


def _setting(batch: int, inference_mode: bool) -> str:
    return f"batch {batch}, {'inference_mode' if inference_mode else 'no_grad'}"


def _predict(
    store: ObjectStore, run_id: str, out: Path, batch: int, inference_mode: bool
) -> Callable[[], object]:
    def run() -> object:
        predict.BATCH = batch
        with torch.inference_mode(inference_mode):
            return predict.predict_test_set(store, run_id, out)

    return run


if __name__ == "__main__":
    main()
