"""Preparation throughput: images per second per core, with and without resizing.

Two measurements on each image set (synthetic 1024² JPEG-Baseline DICOMs from
`synthetic.generate`, and the 16 real DICOMs of ../shared/rsna-sample when present):

- per image, one process, CPU time: `prepare.decode_resized` from the file on disk, with no
  resize (the cache at the original 1024 px) and with an area resize to 512 and 256 px;
- `prepare_dataset` on a file:// store with one worker at 512 px: the rate of its image loop
  (read from the store, decode, resize, write into the .npy) and its total time, which also
  covers the labels (the full 30,227-row file for the real sample), folds and tables.

Best of --repeat runs (the machine is shared; the best run is the least disturbed one).

    .venv/bin/python bench/bench_prepare.py [--n-synthetic N] [--repeat R] [--sample DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import cv2

from pneumo_core import DEFAULT_DATASET, synthetic
from pneumo_core.kaggle import ingest
from pneumo_core.prepare import decode_resized, prepare_dataset, prepared_prefix
from pneumo_core.storage import LocalStore

DEFAULT_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "rsna-sample"
SIZES = (None, 512, 256)  # None: keep the original 1024 px (decode only)


def per_image_rate(files: list[Path], size: int | None, repeat: int) -> float:
    """Images per CPU-second in this one process: each image's fastest of `repeat` runs, so
    other programs on a shared machine disturb the figure as little as possible."""
    total = 0.0
    for path in files:
        best = float("inf")
        for _ in range(repeat):
            started = time.process_time()
            decode_resized(path, size or 1024)
            best = min(best, time.process_time() - started)
        total += best
    return len(files) / total


def prepare_rate(source: Path, repeat: int, tmp: Path) -> tuple[float, float]:
    """prepare_dataset with one worker at 512 px: images per second of its image loop (read,
    decode, resize, write into the .npy) and its total seconds (with labels, folds, tables)."""
    best_rate, best_seconds = 0.0, float("inf")
    for i in range(repeat):
        store = LocalStore(tmp / f"store-{i}")
        ingest(str(source), store, progress=False)
        prepare_dataset(store, image_size=512, workers=1, progress=False)
        summary = store.get_json(prepared_prefix(DEFAULT_DATASET, 512) + "summary.json")
        best_rate = max(best_rate, summary["images_per_second"])
        best_seconds = min(best_seconds, summary["seconds"])
        shutil.rmtree(store.root)
    return best_rate, best_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-synthetic", type=int, default=48, help="synthetic train images")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # per core: OpenCV would otherwise spread a resize over all cores

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp_name:
        tmp = Path(tmp_name)
        started = time.perf_counter()
        synth = synthetic.generate(
            tmp / "synthetic", n_train=args.n_synthetic, n_test=args.n_synthetic // 8, seed=0
        )
        seconds = time.perf_counter() - started
        print(f"generated {args.n_synthetic} synthetic 1024 px DICOMs in {seconds:.1f} s")
        sets = {"synthetic 1024 px": synth}
        if (args.sample / "stage_2_train_images").is_dir():
            sets["real RSNA sample (16)"] = args.sample
        else:
            print(f"(real sample not found at {args.sample}: synthetic only)")

        header = "images/s/core".rjust(14)
        print(f"\n{'image set':<24}{'step':<52}{header}")
        for name, source in sets.items():
            files = sorted(source.glob("stage_2_*_images/*.dcm"))
            for size in SIZES:
                step = (
                    "decode only (1024 px kept)" if size is None else f"decode + resize to {size}"
                )
                rate = per_image_rate(files, size, args.repeat)
                print(f"{name:<24}{step:<52}{rate:>14.1f}")
            rate, seconds = prepare_rate(source, args.repeat, tmp)
            step = f"prepare_dataset image loop, 512 px ({seconds:.1f} s in all)"
            print(f"{name:<24}{step:<52}{rate:>14.1f}")


if __name__ == "__main__":
    main()
