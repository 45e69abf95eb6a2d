"""Ingest, prepare and a training epoch's loader at competition scale, against SeaweedFS.

`make bench-scale` (apart from `make bench`: at full size it needs about 25 GB of disk and
takes a while). Steps, each figure recorded by `bench.record.emit`:

1. A Kaggle-shaped archive folder of 26,684 train + 3,000 test real-sized DICOMs
   (`bench.scale_archive`, a few dozen painted JPEG payloads under new ids); its time.
2. SeaweedFS (`weed mini`, started as the tests start it). Ingest a subset (--small images)
   with one upload at a time (the baseline) and right after with the bounded pool
   (`ingest.UPLOAD_WORKERS`), then the whole archive, then the whole archive again
   unchanged: objects/s, MB/s, and the HEAD and PUT requests each sent (counted on the
   store's boto3 client).
3. `prepare_dataset` at 512 px from the S3 store, each in a fresh process measured with its
   workers (`bench.tree_memory`): the subset on one worker and on all cores, then the whole
   set on all cores: images/s, images per CPU-second, peak anonymous memory (the figure that
   must not grow with the data set), and the cache's size.
4. One training epoch's loader over the whole memory-mapped train cache with the `default`
   preset's augmentation, shuffled, batches of its batch size, one DataLoader worker per
   core; the seed-style loader of `bench.bench_loader` (decode each DICOM, skimage warp) on
   --baseline-images images with the same workers. Images/s per worker, images per
   CPU-second (the ratio), peak anonymous memory; the rate on a 16-core host is extrapolated.

Everything is written under one new folder inside --out and removed at the end (--keep
keeps it); the SeaweedFS server is stopped whatever happens. --measure records only some
stages (the figures keep their names, so a smaller run must not overwrite full-size ones).

    .venv/bin/python -m bench.bench_scale [--n-train 26684] [--n-test 3000] [--out DIR]
        [--small 3000] [--measure archive ingest prepare loader]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.bench_prepare import cpu_seconds
from bench.record import emit
from bench.scale_archive import write_archive
from bench.tree_memory import run_measured
from pneumo_core.data import ingest
from pneumo_core.data.decode import available_cores
from pneumo_core.data.prepare import SPLITS, prepare_dataset
from pneumo_core.layout import (
    CLASS_INFO,
    SAMPLE_SUBMISSION,
    TEST_IMAGES,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    prepared_prefix,
)
from pneumo_core.storage.s3 import S3Store
from tests import seaweedfs

SIZE = 512
MB = 1e6
GB = 1e9
BUCKET = "pneumo-scale"
GPU_HOST_CORES = 16
STAGES = ("archive", "ingest", "prepare", "loader")


@dataclass(frozen=True)
class StoreArgs:
    """What a fresh process needs to open the same S3 store (an S3Store does not pickle)."""

    bucket: str
    endpoint: str
    access_key: str
    secret_key: str
    cache_dir: str

    def open(self) -> S3Store:
        return S3Store(
            self.bucket,
            endpoint_url=self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            cache_dir=self.cache_dir,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=26684)
    parser.add_argument("--n-test", type=int, default=3000)
    parser.add_argument("--small", type=int, help="images in the subset (default 3000, or 1/5)")
    parser.add_argument("--baseline-images", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument(
        "--measure",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        help="stages to record (the others still run when later ones need them)",
    )
    args = parser.parse_args()
    total = args.n_train + args.n_test
    small = args.small or (3000 if total >= 15000 else max(2, total // 5))
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pneumo-bench-scale-", dir=args.out))
    os.environ["TMPDIR"] = str(work / "tmp")  # the S3 store's staging files, here and in workers
    (work / "tmp").mkdir()
    tempfile.tempdir = None
    started = time.perf_counter()
    try:
        archive = generate(work / "archive", args.n_train, args.n_test, "archive" in args.measure)
        subset = link_subset(archive, work / "subset", small * args.n_train // total, small)
        (work / "seaweedfs").mkdir()
        process, server = seaweedfs.start(work / "seaweedfs", BUCKET, "scale", "scale-secret")
        try:
            store_args = StoreArgs(
                BUCKET, server.endpoint, "scale", "scale-secret", str(work / "s3-cache")
            )
            if "ingest" in args.measure:
                measure_ingest(store_args.open(), archive, subset)
            else:
                for source, dataset in ((subset, "small"), (archive, "full")):
                    ingest.ingest(str(source), store_args.open(), dataset, progress=False)
            if "prepare" in args.measure:
                measure_prepare(store_args)
            if "loader" in args.measure:
                measure_loader(store_args, archive, args.baseline_images)
        finally:
            seaweedfs.stop(process)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work)
    print(f"bench-scale: {time.perf_counter() - started:.0f} s in all")


# --- archive --------------------------------------------------------------------------------


def generate(folder: Path, n_train: int, n_test: int, record: bool) -> Path:
    started = time.perf_counter()
    write_archive(folder, n_train, n_test)
    seconds = time.perf_counter() - started
    if not record:
        return folder
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    emit(
        "scale: generate the Kaggle-shaped archive",
        seconds,
        "s",
        higher_is_better=False,
        note=f"{n_train:,} train + {n_test:,} test 1024² JPEG-Baseline DICOMs, {size / GB:.2f} GB "
        f"({size / (n_train + n_test) / 1e3:.0f} KB per file with the tables); 32 painted "
        "payloads under new ids",
        images=n_train + n_test,
    )
    return folder


def link_subset(archive: Path, folder: Path, n_train: int, n_images: int) -> Path:
    """The first images of each split, hard-linked (no copy), with the archive's tables."""
    counts = {TRAIN_IMAGES: n_train, TEST_IMAGES: n_images - n_train}
    for name, count in counts.items():
        (folder / name).mkdir(parents=True)
        for path in sorted((archive / name).glob("*.dcm"))[:count]:
            os.link(path, folder / name / path.name)
    for name in (TRAIN_LABELS, CLASS_INFO, SAMPLE_SUBMISSION):
        os.link(archive / name, folder / name)
    return folder


# --- ingest ---------------------------------------------------------------------------------


def measure_ingest(store: S3Store, archive: Path, subset: Path) -> None:
    requests = {"HeadObject": 0, "PutObject": 0}

    def count(event_name: str, **_: object) -> None:
        requests[event_name.rsplit(".", 1)[1]] += 1

    for operation in requests:  # the store's one client; its pool threads share it
        store._client.meta.events.register(f"before-call.s3.{operation}", count)

    def run(source: Path, dataset: str, workers: int) -> tuple[ingest.IngestResult, float, str]:
        requests.update(dict.fromkeys(requests, 0))
        ingest.UPLOAD_WORKERS, default = workers, ingest.UPLOAD_WORKERS
        try:
            started = time.perf_counter()
            result = ingest.ingest(str(source), store, dataset, progress=False)
            seconds = time.perf_counter() - started
        finally:
            ingest.UPLOAD_WORKERS = default
        sent = f"{requests['HeadObject']:,} HEAD and {requests['PutObject']:,} PUT requests"
        return result, seconds, sent

    workers = ingest.UPLOAD_WORKERS
    one, one_s, _ = run(subset, "small-one-at-a-time", 1)
    pool, pool_s, _ = run(subset, "small", workers)  # right after: the same load, mostly
    first, first_s, first_sent = run(archive, "full", workers)
    again, again_s, again_sent = run(archive, "full", workers)
    emit(
        f"scale: ingest, {workers} uploads at a time against one, subset in turn",
        pool.members / pool_s,
        "objects/s",
        baseline=one.members / one_s,
        note=f"{pool.members:,} objects ({pool.bytes / GB:.2f} GB) into SeaweedFS on this "
        f"machine, each way into an empty dataset, one right after the other; "
        f"{pool.bytes / MB / pool_s:.1f} against {one.bytes / MB / one_s:.1f} MB/s. Reading "
        "and hashing each member and the server share the same cores, so the pool gains "
        "most where the store is far (each request a round trip)",
        objects=pool.members,
    )
    emit(
        "scale: ingest into SeaweedFS, first run",
        first.members / first_s,
        "objects/s",
        note=f"{first.members:,} objects, {first.bytes / GB:.2f} GB in {first_s:.0f} s "
        f"({first.bytes / MB / first_s:.1f} MB/s), {workers} uploads at a time; {first_sent}",
        megabytes_per_s=round(first.bytes / MB / first_s, 2),
        objects=first.members,
    )
    emit(
        "scale: ingest into SeaweedFS, unchanged re-run",
        again.members / again_s,
        "objects/s",
        baseline=first.members / first_s,
        note=f"{again.members:,} objects ({again.skipped:,} skipped, {again.uploaded} uploaded) "
        f"in {again_s:.1f} s; {again_sent} (the manifest and one listing prove the rest); "
        "every member is still read and hashed. Baseline: the first run",
        megabytes_per_s=round(again.bytes / MB / again_s, 2),
        objects=again.members,
    )


# --- prepare --------------------------------------------------------------------------------


def prepare_in_process(store_args: StoreArgs, dataset: str, workers: int) -> dict:
    """Runs in a fresh process (`run_measured`): one prepare, from nothing, and its cache size."""
    store = store_args.open()
    prefix = prepared_prefix(dataset, SIZE)
    store.delete_prefix(prefix)
    cpu = cpu_seconds()
    result = prepare_dataset(store, dataset, image_size=SIZE, workers=workers, progress=False)
    cpu = cpu_seconds() - cpu  # the pool's workers have been waited for: they count
    sizes = {split: store.size(f"{prefix}images-{split}.npy") for split in SPLITS}
    return {"images": result.n_train + result.n_test, "s": result.seconds, "cpu_s": cpu, **sizes}


def measure_prepare(store_args: StoreArgs) -> None:
    n = available_cores()
    one, one_use = run_measured(prepare_in_process, store_args, "small", 1)
    few, few_use = run_measured(prepare_in_process, store_args, "small", n)
    full, full_use = run_measured(prepare_in_process, store_args, "full", n)
    cache = full["train"] + full["test"]
    emit(
        f"scale: prepare at {SIZE} px from S3, {n} workers",
        full["images"] / full["s"],
        "images/s",
        baseline=one["images"] / one["s"],
        note=f"{full['images']:,} images in {full['s']:.0f} s, "
        f"{full['images'] / full['cpu_s']:.0f} images per CPU-second (process and workers); "
        f"cache {cache / GB:.2f} GB (.npy train {full['train'] / GB:.2f} + test "
        f"{full['test'] / GB:.2f}). Baseline: one worker on the {one['images']:,}-image subset "
        f"({one['images'] / one['cpu_s']:.0f} images per CPU-second); {n} workers on the "
        f"subset: {few['images'] / few['s']:.0f} images/s. Wall rates on a shared machine",
        images=full["images"],
        per_cpu_second=round(full["images"] / full["cpu_s"], 1),
        cache_bytes=cache,
    )
    emit(
        f"scale: prepare peak anonymous memory, {n} workers",
        full_use.peak_anon_bytes / MB,
        "MB",
        baseline=few_use.peak_anon_bytes / MB,
        higher_is_better=False,
        note=f"{full['images']:,} images: sum of Pss_Anon over the process and its workers, "
        f"sampled every 0.25 s (per process {_mb(full_use.peak_parts)}); baseline: the same on "
        f"the {few['images']:,}-image subset ({_mb(few_use.peak_parts)}), a ratio near 1 "
        f"means it does not grow with the data set; one worker on the subset: "
        f"{one_use.peak_anon_bytes / MB:.0f} MB",
        images=full["images"],
        subset_images=few["images"],
    )


def _mb(parts: tuple[int, ...]) -> str:
    return " + ".join(f"{part / MB:.0f}" for part in parts) + " MB"


# --- loader ---------------------------------------------------------------------------------


def loader_epoch(store_args: StoreArgs, workers: int) -> dict:
    """Runs in a fresh process: one shuffled epoch over the whole train cache."""
    from pneumo_core.config.run import preset
    from pneumo_core.data.augment import Augmenter
    from pneumo_core.data.dataset import DetectionDataset, PreparedCache, make_loader

    config = preset("default")
    cache = PreparedCache(store_args.open(), "full", SIZE)
    ids = cache.patient_ids("train")
    dataset = DetectionDataset(cache, ids, augmenter=Augmenter(config.augment))
    loader = make_loader(dataset, config.batch_size, shuffle=True, num_workers=workers)
    return timed_epoch(loader)


def seed_style_epoch(store_args: StoreArgs, folder: str, n: int, workers: int) -> dict:
    """Runs in a fresh process: the seed-style loader over the first `n` train DICOMs."""
    from torch.utils.data import DataLoader

    from bench.bench_loader import SeedStyleDataset
    from pneumo_core.config.run import preset
    from pneumo_core.data.dataset import PreparedCache, collate

    config = preset("default")
    cache = PreparedCache(store_args.open(), "full", SIZE)
    files = [Path(folder) / f"{pid}.dcm" for pid in cache.patient_ids("train")[:n]]
    dataset = SeedStyleDataset(files, cache, config.augment)
    loader = DataLoader(
        dataset, batch_size=config.batch_size, num_workers=workers, collate_fn=collate
    )
    return timed_epoch(loader)


def timed_epoch(loader: Iterable) -> dict:
    """One pass: images, wall and CPU seconds (the loader's workers end with the pass)."""
    started, cpu = time.perf_counter(), cpu_seconds()
    images = sum(len(batch[0]) for batch in loader)
    return {"images": images, "s": time.perf_counter() - started, "cpu_s": cpu_seconds() - cpu}


def measure_loader(store_args: StoreArgs, archive: Path, baseline_images: int) -> None:
    from pneumo_core.data.dataset import PreparedCache

    n = available_cores()
    PreparedCache(store_args.open(), "full", SIZE).images("train")  # the download, untimed
    ours, use = run_measured(loader_epoch, store_args, n)
    folder = str(archive / TRAIN_IMAGES)
    seed, seed_use = run_measured(seed_style_epoch, store_args, folder, baseline_images, n)
    per_cpu = ours["images"] / ours["cpu_s"]
    seed_per_cpu = seed["images"] / seed["cpu_s"]
    host = per_cpu * (GPU_HOST_CORES - 1)  # one core left to the training loop
    emit(
        f"scale: training loader epoch at {SIZE} px, per CPU-second",
        per_cpu,
        "images/s",
        baseline=seed_per_cpu,
        note=f"{ours['images']:,} images of the memory-mapped cache, default preset's "
        f"augmentation, shuffled, {n} workers: {ours['s']:.0f} s, "
        f"{ours['images'] / ours['s'] / n:.0f} images/s per worker on this shared machine; "
        f"images per CPU-second of the process and its workers. Baseline: the seed-style "
        f"loader (pydicom + skimage warp each item) on {seed['images']} DICOMs, same "
        f"workers. Extrapolation, not measured: {GPU_HOST_CORES - 1} workers on a "
        f"{GPU_HOST_CORES}-core GPU host at this rate each give {host:,.0f} images/s, "
        f"an epoch in {ours['images'] / host:.0f} s",
        images=ours["images"],
        per_worker_wall=round(ours["images"] / ours["s"] / n, 1),
        extrapolated_16_core=round(host),
    )
    emit(
        f"scale: training loader peak anonymous memory, {n} workers",
        use.peak_anon_bytes / MB,
        "MB",
        baseline=seed_use.peak_anon_bytes / MB,
        higher_is_better=False,
        note=f"sum of Pss_Anon over the loading process and its workers during the epoch over "
        f"a {ours['images']:,}-image cache of {ours['images'] * SIZE * SIZE / GB:.1f} GB "
        f"(memory-mapped, so file-backed and not counted); per process "
        f"{_mb(use.peak_parts)}. Baseline: the seed-style loader ({_mb(seed_use.peak_parts)})",
    )


if __name__ == "__main__":
    main()
