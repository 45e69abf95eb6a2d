"""The run report: fold table, threshold curve, plots and report.md from stored objects."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from pneumo_core import DEFAULT_DATASET
from pneumo_core.evaluation.postprocess import PostprocessConfig
from pneumo_core.reports import plots, report
from pneumo_core.runs import champion
from pneumo_core.runs.records import Evaluation, FoldResult
from pneumo_core.storage.open import open_store

SIZE = 64  # cache px; originals are 1024 px, so boxes scale by 1/16
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN = "20260101-000000-abcdef"


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    pd.DataFrame(rows).to_csv(buffer, index=False)
    return buffer.getvalue()


@pytest.fixture
def store(tmp_path):
    """A prepared cache of 4 patients and a 2-fold run with metrics and OOF predictions."""
    store = open_store(tmp_path.as_uri())
    config = {"preset": "ci", "dataset": DEFAULT_DATASET, "image_size": SIZE, "epochs": 3}
    prefix = f"prepared/{DEFAULT_DATASET}/{SIZE}"
    pids = ["p0", "p1", "p2", "p3"]
    store.put_text(
        f"{prefix}/metadata.csv",
        csv_text([{"patientId": p, "split": "train", "index": i, "rows": 1024, "cols": 1024}
                  for i, p in enumerate(pids)]),
    )  # fmt: skip
    store.put_text(
        f"{prefix}/labels.csv",
        csv_text([{"patientId": p, "class": "c", "target": int(p in ("p0", "p2")),
                   "n_boxes": int(p in ("p0", "p2"))} for p in pids]),
    )  # fmt: skip
    store.put_text(
        f"{prefix}/boxes.csv",
        csv_text([{"patientId": p, "x": 160.0, "y": 320.0, "width": 320.0, "height": 160.0,
                   "sx": 10.0, "sy": 20.0, "swidth": 20.0, "sheight": 10.0} for p in ("p0", "p2")]),
    )  # fmt: skip
    store.put_text(
        f"{prefix}/folds.csv",
        csv_text([{"patientId": p, "class": "c", "fold": i % 2} for i, p in enumerate(pids)]),
    )
    images = np.random.default_rng(0).integers(0, 255, (4, SIZE, SIZE), dtype=np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, images)
    store.put_bytes(f"{prefix}/images-train.npy", buffer.getvalue())

    store.put_json(f"runs/{RUN}/config.json", config)
    for fold in (0, 1):
        history = [
            {"epoch": e, "fold": fold, "train_cls_loss": 1.0 - 0.1 * e, "train_box_loss": 0.5,
             "val_cls_loss": 0.9 - 0.1 * e, "val_box_loss": 0.4, "val_map": 0.1 * e}
            for e in range(3)
        ]  # fmt: skip
        store.put_text(
            f"runs/{RUN}/fold-{fold}/metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history)
        )
        store.put_json(
            f"runs/{RUN}/fold-{fold}/done.json",
            {"epochs": 3, "best_epoch": 2, "best_val_map": 0.2, "fold": fold},
        )
    # fold 0 holds p0 (positive, found with score 0.9) and p2 (positive, found with 0.3);
    # fold 1 holds p1 (negative, a false box at 0.5) and p3 (negative, nothing predicted).
    box = {"x": 160.0, "y": 320.0, "width": 320.0, "height": 160.0}
    oof0 = [{"patientId": "p0", "fold": 0, "score": 0.9, **box},
            {"patientId": "p2", "fold": 0, "score": 0.3, **box}]  # fmt: skip
    oof1 = [{"patientId": "p1", "fold": 1, "score": 0.5, **box},
            {"patientId": "p3", "fold": 1, "score": None, "x": None, "y": None,
             "width": None, "height": None}]  # fmt: skip
    store.put_text(f"runs/{RUN}/fold-0/oof_predictions.csv", csv_text(oof0))
    store.put_text(f"runs/{RUN}/fold-1/oof_predictions.csv", csv_text(oof1))
    return store


def test_fold_row_takes_best_epoch_losses_and_totals():
    history = [
        {"epoch": 0, "train_cls_loss": 2.0, "train_box_loss": 1.0, "val_cls_loss": 1.5,
         "val_box_loss": 0.5},
        {"epoch": 1, "train_cls_loss": 1.0, "train_box_loss": 0.5, "val_cls_loss": 1.0,
         "val_box_loss": 0.25, "val_map": 0.3},
    ]  # fmt: skip
    info = {"weights": "/s/models/weights/resnet18-f37072fd.pth", "weights_sha256": "ab" * 32,
            "tensors_loaded": 102, "tensors_skipped": 2}  # fmt: skip
    done = FoldResult(fold=3, epochs=2, best_epoch=0, best_val_map=0.4, model_info=info)
    row = report.fold_row(3, done, history, 0.35)
    assert row == {
        "fold": 3, "epochs": 2, "best_epoch": 0, "best_val_map": 0.4, "last_val_map": 0.3,
        "val_box_loss": 0.5, "val_cls_loss": 1.5, "last_train_loss": 1.5,
        "last_val_loss": 1.25, "oof_map": 0.35,
        "weights": "resnet18-f37072fd.pth sha256 abababababab: 102 loaded, 2 skipped",
    }  # fmt: skip


def test_a_fold_below_half_its_siblings_median_is_flagged():
    rows = [{"fold": f, "best_val_map": v} for f, v in enumerate([0.30, 0.11, 0.40, 0.20])]
    flags = [r["flag"] for r in report.flag_weak_folds(rows)]
    assert flags == ["", "weak", "", ""]  # 0.11 < 0.5 * median(0.3, 0.4, 0.2) = 0.15
    notes = report.render_markdown("r", {}, None, rows, None, [])
    assert "Weak fold(s) 1" in notes


def test_write_report_stores_plots_and_markdown(store):
    evaluation = Evaluation.model_validate(
        {
            "oof_map": 0.6667,
            "oof_map_se": 0.1,
            "oof_map_in_sample": 0.7,
            "tuning": "cross-fitted",
            "threshold": 0.1,
            "per_fold": [{"fold": 0, "map": 1.0}, {"fold": 1, "map": 0.0}],
            "curve": [{"threshold": 0.1, "map": 0.6667}, {"threshold": 0.95, "map": None}],
        }
    )
    decision = champion.decide(champion.candidate(RUN, 0.6667, "h"), None)
    built = report.write_report(
        store, RUN, evaluation, [0, 1], decision, plot_link=lambda key: f"https://x/{key}"
    )
    assert built.key == f"runs/{RUN}/report.md"
    assert sorted(built.plot_keys) == [
        f"runs/{RUN}/plots/{name}"
        for name in ("curves.png", "map-vs-threshold.png", "validation-grid.png")
    ]
    for key in built.plot_keys:
        assert store.get_bytes(key).startswith(PNG_MAGIC)
    stored = store.get_text(built.key)
    assert stored == built.markdown
    assert "promoted" in stored and decision.reason in stored
    assert "OOF mAP: **0.6667** (standard error 0.1000), post-processing cross-fitted" in stored
    assert "optimistic): 0.7000" in stored and "last_val_map" in stored
    assert "![validation-grid.png](plots/validation-grid.png)" in stored
    assert f"(https://x/runs/{RUN}/plots/curves.png)" in built.linked_markdown
    assert '"image_size": 64' in stored  # the resolved configuration
    assert [row["oof_map"] for row in built.fold_rows] == [1.0, 0.0]
    assert [row["best_epoch"] for row in built.fold_rows] == [2, 2]


def test_validation_panels_scale_boxes_to_cache_pixels(store):
    from pneumo_core.data.dataset import PreparedCache

    cache = PreparedCache(store, DEFAULT_DATASET, SIZE)
    oof = pd.read_csv(io.StringIO(store.get_text(f"runs/{RUN}/fold-0/oof_predictions.csv")))
    gt = {p: np.array([[160.0, 320.0, 320.0, 160.0]]) for p in ("p0", "p2")}
    post = PostprocessConfig(score_threshold=0.5)
    panels = plots.validation_panels(cache, oof, gt, post)
    assert [p[4].split()[0] for p in panels] == ["p0", "p2"]
    image, truth, boxes, scores, _ = panels[0]
    assert image.shape == (SIZE, SIZE)
    np.testing.assert_allclose(truth, [[10.0, 20.0, 20.0, 10.0]])
    np.testing.assert_allclose(boxes, [[10.0, 20.0, 20.0, 10.0]])
    assert list(scores) == [0.9]
    assert len(panels[1][2]) == 0  # p2's box (0.3) is below the threshold


def test_report_without_decision_says_so(store):
    evaluation = Evaluation(oof_map=0.5, threshold=0.3)
    built = report.write_report(store, RUN, evaluation, [0], None)
    assert "No promotion decision" in built.markdown
