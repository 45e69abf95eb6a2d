"""The GPU check: the `default` recipe on a real accelerator, in one script of under five
minutes, whose figures docs/benchmarks.md's "Measured on a GPU" section quotes.

1. generates a Kaggle-shaped data set at the real size (1024² JPEG DICOMs) and prepares
   it at 512² as the pipeline does;
2. precision: one batch's loss and gradients in float32 with TF32 off (the reference), and
   in the default float32 (TF32 convolutions), bf16 autocast and bf16 + channels-last; the
   anatomy of a step on a batch already on the GPU (kernel time over wall time);
3. trains fold 0 of the `default` recipe (ResNet-50-FPN, random weights) with the real
   training loop (`train.train_fold`) for a fixed number of steps in each row of ROWS (the
   CUDA default, then one change each), then the fastest with torch.compile (its compile
   time apart): images/s, peak GPU memory and the share of step time spent waiting for
   data, with the loader's workers set for the host's cores;
4. kills a fold's training process after its first checkpoint and resumes it, checking that
   it continues from the checkpoint and that the weights after the next epoch differ from an
   uninterrupted run no more than two uninterrupted runs differ from each other;
5. inference of a four-model ensemble with flip TTA (`model.detect_batch`, as predict runs
   it) by batch size;
6. one JSON line per figure (bench.record's format) in --out, and a summary table.

    python -m bench.gpu_check --out "$OUT"                       # on the GPU host
    python -m bench.gpu_check --device cpu --images 48 --epochs 2 --size 64 \
        --backbone resnet18 --workers 0 --out /tmp/g                # a smoke test on a CPU
    --skip PART,... and --rows "ROW;ROW" run a part of it (a rerun within the GPU budget)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import record
from pneumo_core import DEFAULT_DATASET
from pneumo_core.config.run import RunConfig, preset
from pneumo_core.data.dataset import DetectionDataset, PreparedCache, collate
from pneumo_core.data.ingest import ingest
from pneumo_core.data.prepare import prepare_dataset
from pneumo_core.data.synthetic import generate
from pneumo_core.layout import fold_key
from pneumo_core.model.build import build_model, detect_batch
from pneumo_core.model.detector import training_losses
from pneumo_core.model.predict import load_fold_models
from pneumo_core.runs.run import create_run
from pneumo_core.storage.base import ObjectStore
from pneumo_core.storage.open import open_store
from pneumo_core.train import device as train_device
from pneumo_core.train import engine as train_engine
from pneumo_core.train.checkpoint import load_checkpoint
from pneumo_core.train.fold import train_fold
from pneumo_core.train.optim import create_optimizer

# Kaggle's stage 2: 26,684 training images (3/4 train a fold, 1/4 validate it), 3,000 test.
REAL_TRAIN, REAL_TEST = 26_684, 3_000
FP32 = {"amp": False, "channels_last": False}
BF16 = {"amp": True, "channels_last": False}
BF16_CL = {"amp": True, "channels_last": True}
# name: (configuration overrides, pneumo_core.train module settings, see SETTING_OWNERS); the
# first is the default recipe's CUDA setting, each other row changes one thing against it
ROWS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "fp32": (FP32, {}),
    "fp32, host reads losses every step": (FP32, {"SYNC_EVERY": 1}),
    "fp32, cuDNN search": (FP32, {"CUDNN_BENCHMARK": True}),
    "fp32, 2 loader workers": (FP32 | {"num_workers": 2}, {}),
    "bf16": (BF16, {}),
    "bf16+channels-last": (BF16_CL, {}),
    "fp32, batch 16": (FP32 | {"batch_size": 16}, {}),
}
# The pneumo_core.train module that owns (and reads) each setting a row may change.
SETTING_OWNERS = {"SYNC_EVERY": train_engine, "CUDNN_BENCHMARK": train_device}
RESUME_ROW = "fp32"  # the setting the resume check trains with
INFERENCE_BATCHES = (1, 4, 8, 16, 32)

figures: list[dict[str, Any]] = []
SKIP: set[str] = set()


def emit(name: str, value: float, unit: str, **kwargs: Any) -> None:
    figures.append(record.emit(f"gpu: {name}", value, unit, **kwargs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=record.RESULTS)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=256, help="training images to generate")
    parser.add_argument("--epochs", type=int, default=3, help="per setting; epoch 0 warms up")
    parser.add_argument("--workers", type=int, default=loader_workers())
    parser.add_argument("--budget-s", type=float, default=285, help="skip compile past this")
    parser.add_argument("--size", type=int, default=512, help="smaller for a CPU smoke test")
    parser.add_argument("--backbone", default="resnet50", help="smaller for a CPU smoke test")
    parser.add_argument("--skip", default="", help="comma-separated parts not to run")
    parser.add_argument("--rows", default=";".join(ROWS), help="training rows, ;-separated")
    parser.add_argument("--train-fold", nargs=2, metavar=("STORE", "RUN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("pneumo_core.progress").setLevel(logging.WARNING)
    if args.train_fold:  # the child process of the resume check
        train_fold(open_store(args.train_fold[0]), args.train_fold[1], 0)
        return
    started = time.monotonic()
    SKIP.update(args.skip.split(","))
    record.RESULTS = args.out  # emit appends to <out>/<date>-<host>.jsonl
    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    print(f"torch {torch.__version__}, device {record.machine()['device']}", flush=True)
    store = section("data", lambda: make_data(root, args.images, args.size))
    if store is None:
        return
    base = preset(
        "default",
        pretrained=False,
        device=args.device,
        num_workers=args.workers,
        image_size=args.size,
        backbone=args.backbone,
    )
    section("precision", lambda: precision(store, base, torch.device(args.device)))
    section("anatomy", lambda: step_anatomy(store, base, torch.device(args.device)))
    names = [n.strip() for n in args.rows.split(";") if n.strip()]
    rows = section("training", lambda: training_rows(store, base, args.epochs, names)) or {}
    resumed = section("resume", lambda: resume_check(root, store, base))
    if resumed:
        section("inference", lambda: inference(store, base, resumed, torch.device(args.device)))
        section("extrapolation", lambda: extrapolate(rows, resumed))
    left = args.budget_s - (time.monotonic() - started)
    if args.device.startswith("cuda") and rows and left > 100:
        section("compile", lambda: compile_row(store, base, args.epochs, rows))
    else:
        print(f"compile skipped: {left:.0f} s of the budget left", flush=True)
    summary(time.monotonic() - started)


def loader_workers() -> int:
    """Loader processes for this host: its cores less the trainer's main thread and the
    pin-memory thread, at most 12 (the default recipe's augmentation needs far fewer)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(12, (cores or 1) - 2))


def section(name: str, run: Callable[[], Any]) -> Any:
    """Run one part; a failure is printed and recorded, and the other parts still run."""
    if name in SKIP:
        return None
    began = time.monotonic()
    print(f"--- {name}", flush=True)
    try:
        return run()
    except Exception as exc:  # every part's figures are worth keeping
        traceback.print_exc()
        emit(f"{name} failed", 0, "", note=f"{type(exc).__name__}: {exc}"[:300])
        return None
    finally:
        print(f"--- {name}: {time.monotonic() - began:.1f} s", flush=True)


def make_data(root: Path, n_train: int, size: int) -> ObjectStore:
    began = time.monotonic()
    source = generate(root / "source", n_train=n_train, n_test=16, image_size=1024)
    generated = time.monotonic()
    store = open_store(str(root / "store"))
    ingest(str(source), store, progress=False)
    result = prepare_dataset(store, image_size=size, progress=False)
    emit("generate 1024² DICOMs", n_train + 16, "images", seconds=round(generated - began, 1))
    emit(f"prepare at {size}²", result.images_per_second, "images/s", n=result.n_train)
    return store


def _fixed_batch(store: ObjectStore, base: RunConfig, device: torch.device) -> tuple[list, list]:
    """The first training batch, unaugmented, already on the device."""
    cache = PreparedCache(store, DEFAULT_DATASET, base.image_size)
    dataset = DetectionDataset(cache, cache.patient_ids("train")[: base.batch_size])
    images, targets, _ = collate([dataset[i] for i in range(len(dataset))])
    images = [i.to(device) for i in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    return images, targets


def _random_model(base: RunConfig, device: torch.device) -> torch.nn.Module:
    """The recipe's detector from seed 0's random weights, in training mode on the device."""
    torch.manual_seed(0)
    model, _ = build_model(base)
    return model.to(device).train()


def precision(store: ObjectStore, base: RunConfig, device: torch.device) -> None:
    """Relative loss and gradient error of each setting against float32 with TF32 off."""
    images, targets = _fixed_batch(store, base, device)
    model = _random_model(base, device)

    def loss_and_grad(amp: bool, channels_last: bool, tf32: bool) -> tuple[float, list]:
        torch.backends.cudnn.allow_tf32 = tf32
        copy = deepcopy(model)
        if channels_last:
            copy.to(memory_format=torch.channels_last)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
        with autocast:
            losses = training_losses(copy, images, targets)
        loss = sum(losses.values())
        loss.backward()
        grads = [p.grad.flatten().double() for p in copy.parameters() if p.grad is not None]
        return float(loss.detach()), grads

    try:
        ref_loss, ref_grad = loss_and_grad(amp=False, channels_last=False, tf32=False)
        for name, amp, cl in (
            ("fp32 (TF32)", False, False),
            ("bf16", True, False),
            ("bf16+channels-last", True, True),
        ):
            loss, grad = loss_and_grad(amp, cl, tf32=True)
            whole, ref = torch.cat(grad), torch.cat(ref_grad)
            per_tensor = [
                float((g - r).norm() / r.norm()) for g, r in zip(grad, ref_grad, strict=True)
            ]
            emit(
                f"precision {name}: gradient error",
                float((whole - ref).norm() / ref.norm()),
                "rel",
                higher_is_better=False,
                loss_error=abs(loss - ref_loss) / abs(ref_loss),
                median_tensor_error=float(np.median(per_tensor)),
                cosine=float(whole @ ref / (whole.norm() * ref.norm())),
                note="‖g − g_fp32‖/‖g_fp32‖ on one batch (whole, and the median tensor's), "
                "float32 with TF32 off as the reference",
            )
    finally:
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default


def step_anatomy(store: ObjectStore, base: RunConfig, device: torch.device) -> None:
    """Where a training step's time goes, on a batch already on the device: the kernels'
    own time (profiler) over the wall time of ten steps. Far below 1, the GPU waits for the
    host (Python and launch overhead), and only fewer, larger steps or compiled ones help."""
    from torch.profiler import ProfilerActivity, profile

    images, targets = _fixed_batch(store, base, device)
    for name, amp in (("fp32", False), ("bf16", True)):
        model = _random_model(base, device)
        optimizer = create_optimizer(model, base)

        for repeat in (3, 10):  # warm-up, then the unprofiled wall time
            began = time.monotonic()
            for _ in range(repeat):
                training_step(model, optimizer, images, targets, amp, device)
            _sync(device)
        wall = (time.monotonic() - began) / 10
        cuda = [ProfilerActivity.CUDA] if device.type == "cuda" else []
        with profile(activities=[ProfilerActivity.CPU, *cuda]) as prof:
            for _ in range(10):
                training_step(model, optimizer, images, targets, amp, device)
            _sync(device)
        kernels = sum(e.self_device_time_total for e in prof.key_averages()) / 1e6 / 10
        emit(
            f"step anatomy {name}, batch {base.batch_size}",
            kernels / wall,
            "busy",
            step_ms=round(wall * 1000, 1),
            kernel_ms=round(kernels * 1000, 1),
            note="GPU kernel time over wall time per step (profiled), batch on the device",
        )


def training_step(model, optimizer, images, targets, amp: bool, device: torch.device) -> None:
    """One optimiser step as train.py takes it, without the loader and the loss reads."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
    with autocast:
        loss = sum(training_losses(model, images, targets).values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
    optimizer.step()


def train_setting(store: ObjectStore, config: RunConfig, name: str) -> dict[str, Any]:
    """Fold 0 trained by the real loop; figures from its metrics.jsonl (epoch 0 warms up)."""
    run_id = create_run(store, config, f"gpu-check-{slug(name)}")
    began = time.monotonic()
    done = train_fold(store, run_id, 0)
    wall = time.monotonic() - began
    history = [
        json.loads(x) for x in store.get_text(fold_key(run_id, 0, "metrics.jsonl")).splitlines()
    ]
    steady = history[1:] or history
    # images per second of steady state: the workers' start, once an epoch, left out
    rates = [
        r["train_images_per_s"]
        * r["train_seconds"]
        / (r["train_seconds"] - r["train_first_batch_s"])
        for r in steady
    ]
    epoch_s = np.mean([r["train_seconds"] for r in steady])
    out = {
        "run_id": run_id,
        "images_per_s": float(np.mean(rates)),
        "wait": float(np.mean([r["train_data_wait_fraction"] for r in steady])),
        "first_batch_s": float(np.mean([r["train_first_batch_s"] for r in steady])),
        "peak_gib": max(r.get("gpu_peak_memory_gib", 0.0) for r in history),
        "warmup_s": history[0]["train_seconds"] - epoch_s,
        "wall_s": wall,
        "steps": done.n_train // config.batch_size * config.epochs,
        "history": history,
    }
    emit(
        f"train {name}",
        out["images_per_s"],
        "images/s",
        note=f"default recipe, 512², batch {config.batch_size}, "
        f"{config.execution.num_workers} workers",
        data_wait_fraction=round(out["wait"], 4),
        first_batch_s=round(out["first_batch_s"], 2),
        peak_gpu_memory_gib=round(out["peak_gib"], 2),
        warmup_s=round(out["warmup_s"], 1),
        steps=out["steps"],
        # same seed and data order in every setting: losses that track fp32's are the check
        # that matters for a setting's correctness over many steps
        last_train_loss=round(history[-1]["train_cls_loss"] + history[-1]["train_box_loss"], 4),
        last_val_loss=round(history[-1]["val_cls_loss"] + history[-1]["val_box_loss"], 4),
    )
    return out


def training_rows(
    store: ObjectStore, base: RunConfig, epochs: int, names: list[str]
) -> dict[str, dict]:
    rows = {}
    for name in names:
        overrides, module = ROWS[name]
        config = base.with_overrides({"epochs": epochs, "val_every": epochs} | overrides)
        with module_settings(module):
            rows[name] = train_setting(store, config, name)
    return rows


@contextmanager
def module_settings(settings: dict[str, Any]) -> Iterator[None]:
    """pneumo_core.train's execution constants set for one row, restored after it: each on
    the module that owns it and reads it at run time."""
    saved = {k: getattr(SETTING_OWNERS[k], k) for k in settings}
    for key, value in settings.items():
        setattr(SETTING_OWNERS[key], key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(SETTING_OWNERS[key], key, value)


def best_execution_row(rows: dict[str, dict]) -> str:
    """The fastest row that keeps the recipe (batch size and workers as configured)."""
    same_recipe = [n for n in rows if "batch" not in n and "workers" not in n]
    return max(same_recipe, key=lambda n: rows[n]["images_per_s"])


def compile_row(store: ObjectStore, base: RunConfig, epochs: int, rows: dict) -> None:
    """torch.compile on top of the fastest eager setting measured in this run."""
    best = best_execution_row(rows)
    overrides, module = ROWS[best]
    config = base.with_overrides(
        {"epochs": epochs, "val_every": epochs, "torch_compile": True} | overrides
    )
    name = f"{best} + torch.compile"
    with module_settings(module):
        row = train_setting(store, config, name)
    eager = rows[best]
    emit(
        "torch.compile speed-up",
        row["images_per_s"] / eager["images_per_s"],
        "x",
        compile_s=round(row["warmup_s"] - eager["warmup_s"], 1),
        note=f"steady images/s against {best}; compile_s: extra time of its first epoch",
    )


def resume_check(root: Path, store: ObjectStore, base: RunConfig) -> dict[str, Any]:
    """Runs A and B uninterrupted and C killed after its first checkpoint, each in its own
    process (as fold jobs run), then C resumed in a fourth; all of the same seed."""
    config = base.with_overrides({"epochs": 2, "val_every": 1, "num_workers": 4})
    config = config.with_overrides(ROWS[RESUME_ROW][0])
    runs = {name: create_run(store, config, f"gpu-check-resume-{name}") for name in "ABC"}
    logs = {name: root / f"train-{name}.log" for name in ("A", "B", "C", "C-resumed")}

    def start(name: str, run_id: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "bench.gpu_check", "--train-fold", store.uri, run_id]
        return subprocess.Popen(command, stderr=logs[name].open("w"), stdout=subprocess.DEVNULL)

    children = {name: start(name, run_id) for name, run_id in runs.items()}
    first = fold_key(runs["C"], 0, "checkpoint-last.pt")
    while not store.exists(first) and children["C"].poll() is None:
        time.sleep(0.02)
    os.kill(children["C"].pid, signal.SIGKILL)
    children["C"].wait()
    for name in "AB":
        if children[name].wait() != 0:
            raise RuntimeError(f"run {name} failed: {logs[name].read_text()[-2000:]}")
    checkpoint = load_checkpoint(store, first)
    killed_at, before = checkpoint["epoch"], checkpoint["history"][0]
    if killed_at != 0 or store.exists(fold_key(runs["C"], 0, "done.json")):
        raise RuntimeError(f"the kill came too late: checkpoint of epoch {killed_at}")
    resumed = start("C-resumed", runs["C"])
    if resumed.wait() != 0:
        raise RuntimeError(f"the resume failed: {logs['C-resumed'].read_text()[-2000:]}")
    log_text = logs["C-resumed"].read_text()
    after = store.get_text(fold_key(runs["C"], 0, "metrics.jsonl")).splitlines()
    continued = "resuming after epoch 0" in log_text and after[0] == before and len(after) >= 2
    params = {name: _weights(store, run_id) for name, run_id in runs.items()}
    scale = float(params["A"].norm())
    d_ba = float((params["B"] - params["A"]).norm()) / scale
    d_ca = float((params["C"] - params["A"]).norm()) / scale
    d_cb = float((params["C"] - params["B"]).norm()) / scale
    # Runs that differ only by CUDA's non-deterministic kernels sit at about one distance from
    # each other (millions of weights average the noise out); a resume that lost state (the
    # optimizer's moments, the schedule, the data order) lands much further away.
    within = max(d_ca, d_cb) <= 1.5 * d_ba if d_ba > 0 else d_ca == d_cb == 0
    metrics = {name: _epoch(store, run_id, 1) for name, run_id in runs.items()}
    emit(
        "resume: weight distance resumed-uninterrupted over uninterrupted pair",
        d_ca / d_ba if d_ba else float(d_ca > 0),
        "x",
        higher_is_better=False,
        passed=bool(continued and within),
        continued_from_checkpoint=continued,
        d_B_A=d_ba,
        d_C_A=d_ca,
        d_C_B=d_cb,
        epoch1={name: {k: m.get(k) for k in _COMPARED} for name, m in metrics.items()},
        note="‖θ_C − θ_A‖ / ‖θ_B − θ_A‖ after epoch 1; C was SIGKILLed after epoch 0's checkpoint",
    )
    n_val = store.get_json(fold_key(runs["A"], 0, "done.json"))["n_val"]
    return {"config": config, "runs": runs, "epoch1": metrics["A"], "n_val": n_val}


_COMPARED = ("train_cls_loss", "train_box_loss", "val_cls_loss", "val_box_loss", "val_map")


def _weights(store: ObjectStore, run_id: str) -> torch.Tensor:
    state = load_checkpoint(store, fold_key(run_id, 0, "checkpoint-last.pt"))["model"]
    return torch.cat([v.flatten().double() for v in state.values() if v.is_floating_point()])


def _epoch(store: ObjectStore, run_id: str, epoch: int) -> dict[str, Any]:
    lines = store.get_text(fold_key(run_id, 0, "metrics.jsonl")).splitlines()
    return json.loads(lines[epoch])


def inference(store: ObjectStore, base: RunConfig, resumed: dict, device: torch.device) -> None:
    """Four fold models (the resume runs' checkpoints), flip TTA, as predict runs them."""
    config: RunConfig = resumed["config"]
    runs = resumed["runs"]
    models = [  # each run trained fold 0 only: one model per run
        m for r in ("A", "B", "C", "A") for m in load_fold_models(store, runs[r], config, device)
    ]
    cache = PreparedCache(store, DEFAULT_DATASET, config.image_size)
    pixels = cache.images("train")[:64]
    images = [
        torch.from_numpy(np.array(p)).float().div_(255).unsqueeze_(0).to(device) for p in pixels
    ]
    best = (0.0, 0)
    for search in (False, True):
        torch.backends.cudnn.benchmark = search
        for batch in INFERENCE_BATCHES if search else (8,):
            detect_batch(models, images[:batch], config)  # warm-up (and cuDNN's search)
            _sync(device)
            began = time.monotonic()
            for i in range(0, len(images), batch):
                detect_batch(models, images[i : i + batch], config)
            _sync(device)
            rate = len(images) / (time.monotonic() - began)
            label = f"batch {batch}" + ("" if search else ", no cuDNN search")
            emit(f"predict 4 folds + flip TTA, {label}", rate, "images/s")
            if search and rate > best[0]:
                best = (rate, batch)
    resumed["predict_images_per_s"], resumed["predict_batch"] = best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def extrapolate(rows: dict[str, dict], resumed: dict) -> None:
    """A full four-fold run of the default recipe on Kaggle's data, from the figures above:
    per fold 16 epochs over 3/4 of the images, validation of the other quarter each epoch,
    then the test images through the four-fold ensemble."""
    config: RunConfig = preset("default")
    best = best_execution_row(rows)
    train_rate = rows[best]["images_per_s"]
    epoch1 = resumed["epoch1"]
    val_rate = resumed["n_val"] / epoch1["val_seconds"]
    per_fold = config.epochs * (REAL_TRAIN * 3 / 4 / train_rate + REAL_TRAIN / 4 / val_rate)
    predict_s = REAL_TEST / resumed["predict_images_per_s"]
    hours = (config.n_folds * per_fold + predict_s) / 3600
    emit(
        "full 4-fold run on Kaggle's data, one GPU (extrapolated)",
        hours,
        "h",
        higher_is_better=False,
        hours_per_fold=round(per_fold / 3600, 2),
        train_images_per_s=round(train_rate, 1),
        val_images_per_s=round(val_rate, 1),
        predict_s=round(predict_s),
        note=f"{config.epochs} epochs x 20,013 train + 6,671 val images per fold, "
        f"{REAL_TEST} test images; measured rates above ({best})",
    )


def summary(seconds: float) -> None:
    print(f"\n{'figure':<72} {'value':>10}  unit  extra")
    for f in figures:
        extra = {
            k: v
            for k, v in f.items()
            if k
            not in {
                "name",
                "value",
                "unit",
                "baseline",
                "ratio",
                "limit",
                "higher_is_better",
                "note",
                "machine",
                "time",
                "epoch1",
            }
        }
        value = f["value"] if not math.isnan(f["value"]) else "nan"
        print(f"{f['name']:<72} {value:>10}  {f['unit']:<4}  {extra}")
    print(f"total {seconds:.0f} s", flush=True)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()


if __name__ == "__main__":
    main()
