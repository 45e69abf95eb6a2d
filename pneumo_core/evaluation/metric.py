"""The competition metric, built for threshold tuning.

Per image and IoU threshold t, predictions are taken in descending confidence; each claims
the unmatched ground-truth box with the highest IoU and is a true positive when that IoU is
strictly greater than t. precision(t) = TP / (TP + FP + FN); the image scores the mean over
t in 0.40, 0.45, ... 0.75. An image without ground truth and without predictions is not
scored; one without ground truth but with any prediction scores 0. The score is the mean
over scored images.

Because predictions are matched greedily in confidence order, the matches of the top k
predictions are the first k matches of all of them. `ScoreTable` therefore computes, once,
every image's precision for each prefix of its sorted predictions; a (score threshold,
max boxes) setting then only picks a prefix length per image, which costs one pass over the
scores instead of a new matching.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pneumo_core.boxes import Detections
from pneumo_core.errors import InputError

IOU_THRESHOLDS = np.array([0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75])
# Elements of one [images, predictions, ground truth, thresholds] working block.
_BLOCK_ELEMENTS = 2_000_000


def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a[..., N, 4] against b[..., M, 4] (x, y, width, height) -> [..., N, M]."""
    a = a[..., :, None, :]
    b = b[..., None, :, :]
    width = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(
        a[..., 0], b[..., 0]
    )
    height = np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(
        a[..., 1], b[..., 1]
    )
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


@dataclass(frozen=True)
class ScoreTable:
    """Precision of every prediction prefix of every image (see the module docstring).

    `prefix[prefix_start[i] + k]` is image i's score with its k most confident predictions
    (NaN: not scored); `scores[score_start[i]:score_start[i + 1]]` are its prediction scores,
    sorted descending.
    """

    patient_ids: tuple[str, ...]
    n_gt: np.ndarray
    scores: np.ndarray
    score_image: np.ndarray
    score_start: np.ndarray
    prefix: np.ndarray
    prefix_start: np.ndarray

    @classmethod
    def from_dicts(
        cls,
        gt_by_patient: Mapping[str, np.ndarray],
        preds_by_patient: Mapping[str, Detections],
        keep_top: int | None = None,
    ) -> ScoreTable:
        """Every patient of `gt_by_patient` is an image; one missing from the predictions has
        none. A prediction for a patient without a ground-truth entry cannot be scored."""
        unknown = [pid for pid in preds_by_patient if pid not in gt_by_patient]
        if unknown:
            raise InputError(
                f"{len(unknown)} predicted patient(s) have no ground truth, e.g. {unknown[0]}"
            )
        ids = list(gt_by_patient)
        index = {pid: i for i, pid in enumerate(ids)}
        gt = [np.asarray(gt_by_patient[pid], dtype=np.float64).reshape(-1, 4) for pid in ids]
        pred_ids = list(preds_by_patient)
        boxes = [np.asarray(preds_by_patient[p][0], np.float64).reshape(-1, 4) for p in pred_ids]
        scores = [np.asarray(preds_by_patient[p][1], np.float64).reshape(-1) for p in pred_ids]
        for pid, b, s in zip(pred_ids, boxes, scores, strict=True):
            if len(b) != len(s):
                raise InputError(f"patient {pid}: {len(b)} boxes but {len(s)} scores")
        return cls.build(
            ids,
            gt_image=np.repeat(np.arange(len(ids)), [len(g) for g in gt]),
            gt_boxes=_concat(gt, (0, 4)),
            pred_image=np.repeat([index[p] for p in pred_ids], [len(s) for s in scores]).astype(
                np.int64
            ),
            pred_boxes=_concat(boxes, (0, 4)),
            pred_scores=_concat(scores, (0,)),
            keep_top=keep_top,
        )

    @classmethod
    def build(
        cls,
        patient_ids: Sequence[str],
        gt_image: np.ndarray,
        gt_boxes: np.ndarray,
        pred_image: np.ndarray,
        pred_boxes: np.ndarray,
        pred_scores: np.ndarray,
        keep_top: int | None = None,
    ) -> ScoreTable:
        """From flat arrays: `gt_image[j]`/`pred_image[j]` index `patient_ids` for box j.

        keep_top: only each image's most confident predictions count (the table is then
        exact for every max_boxes <= keep_top), which keeps tuning fast on raw detector output.
        """
        n_images = len(patient_ids)
        gt_image = np.asarray(gt_image, dtype=np.int64)
        pred_image = np.asarray(pred_image, dtype=np.int64)
        gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        pred_boxes = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
        pred_scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)

        order = np.lexsort((-pred_scores, pred_image))  # by image, then descending confidence
        pred_image, pred_boxes, pred_scores = (
            pred_image[order],
            pred_boxes[order],
            pred_scores[order],
        )
        pred_rank = _rank_within(pred_image, n_images)
        if keep_top is not None:
            keep = pred_rank < keep_top
            pred_image, pred_boxes, pred_scores = (
                pred_image[keep],
                pred_boxes[keep],
                pred_scores[keep],
            )
            pred_rank = pred_rank[keep]
        gt_order = np.argsort(gt_image, kind="stable")
        gt_image, gt_boxes = gt_image[gt_order], gt_boxes[gt_order]
        gt_rank = _rank_within(gt_image, n_images)

        n_gt = np.bincount(gt_image, minlength=n_images)
        n_pred = np.bincount(pred_image, minlength=n_images)
        prefix_start = np.concatenate([[0], np.cumsum(n_pred + 1)])
        # Without ground truth: nothing predicted is not scored, anything predicted scores 0.
        prefix = np.zeros(prefix_start[-1])
        prefix[prefix_start[:-1][n_gt == 0]] = np.nan

        both = np.flatnonzero((n_gt > 0) & (n_pred > 0))
        buckets = np.ceil(np.log2(n_pred[both])).astype(np.int64)
        for bucket in np.unique(buckets):
            images = both[buckets == bucket]
            width = int(n_pred[images].max()) * int(n_gt[images].max()) * len(IOU_THRESHOLDS)
            step = max(1, _BLOCK_ELEMENTS // width)
            for begin in range(0, len(images), step):
                chunk = images[begin : begin + step]
                _fill_prefix(
                    chunk, n_images, n_gt, n_pred, prefix, prefix_start,
                    (gt_image, gt_rank, gt_boxes), (pred_image, pred_rank, pred_boxes),
                )  # fmt: skip

        return cls(
            patient_ids=tuple(patient_ids),
            n_gt=n_gt,
            scores=pred_scores,
            score_image=pred_image,
            score_start=np.concatenate([[0], np.cumsum(n_pred)]),
            prefix=prefix,
            prefix_start=prefix_start,
        )

    def kept(self, score_threshold: float = 0.0, max_boxes: int | None = None) -> np.ndarray:
        """How many predictions each image keeps: score >= threshold, at most max_boxes."""
        count = np.bincount(
            self.score_image[self.scores >= score_threshold], minlength=len(self.n_gt)
        )
        return count if max_boxes is None else np.minimum(count, max_boxes)

    def image_scores(
        self, score_threshold: float = 0.0, max_boxes: int | None = None
    ) -> np.ndarray:
        """Per image score at this setting; NaN where the image is not scored."""
        return self.prefix[self.prefix_start[:-1] + self.kept(score_threshold, max_boxes)]

    def score(
        self, score_threshold: float = 0.0, max_boxes: int | None = None
    ) -> tuple[float, int]:
        """(mean over scored images, images scored); NaN when no image is scored."""
        return mean_scored(self.image_scores(score_threshold, max_boxes))

    def score_grid(
        self, thresholds: Sequence[float], max_boxes: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`score` for many thresholds in one pass: (mAP [T], images scored [T]).

        Each prediction is counted once at the highest grid threshold it reaches; a reverse
        cumulative sum then gives every image's kept count at every threshold.
        """
        grid = np.asarray(thresholds, dtype=np.float64)
        order = np.argsort(grid)
        reached = np.searchsorted(grid[order], self.scores, side="right")  # 0..T
        n_images, n_grid = len(self.n_gt), len(grid)
        counts = np.bincount(
            self.score_image * (n_grid + 1) + reached, minlength=n_images * (n_grid + 1)
        ).reshape(n_images, n_grid + 1)
        kept = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1][:, 1:]  # [I, T] in sorted order
        if max_boxes is not None:
            kept = np.minimum(kept, max_boxes)
        values = self.prefix[self.prefix_start[:-1, None] + kept]
        scored = (~np.isnan(values)).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            maps = np.nansum(values, axis=0) / scored
        result_maps, result_scored = np.empty(n_grid), np.empty(n_grid, dtype=np.int64)
        result_maps[order], result_scored[order] = maps, scored
        return result_maps, result_scored


def mean_scored(values: np.ndarray) -> tuple[float, int]:
    """Mean of the scored (non-NaN) image scores and their count."""
    scored = values[~np.isnan(values)]
    return (float(scored.mean()) if len(scored) else float("nan")), len(scored)


def image_precision(gt: np.ndarray, pred: np.ndarray, scores: np.ndarray) -> float | None:
    """One image's score, or None when it is not scored."""
    table = ScoreTable.from_dicts({"image": gt}, {"image": (pred, scores)})
    value = float(table.image_scores()[0])
    return None if np.isnan(value) else value


def map_score(
    gt_by_patient: Mapping[str, np.ndarray], preds_by_patient: Mapping[str, Detections]
) -> tuple[float, int]:
    """(mAP, images scored) over the patients of `gt_by_patient`, with every prediction."""
    return ScoreTable.from_dicts(gt_by_patient, preds_by_patient).score()


def _fill_prefix(
    images: np.ndarray,
    n_images: int,
    n_gt: np.ndarray,
    n_pred: np.ndarray,
    prefix: np.ndarray,
    prefix_start: np.ndarray,
    gt: tuple[np.ndarray, np.ndarray, np.ndarray],
    pred: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Greedy matching of a block of images, all thresholds at once, one prediction rank at a
    time; writes each prefix's mean precision into `prefix`."""
    local = np.full(n_images, -1)
    local[images] = np.arange(len(images))
    n_box, n_det = int(n_gt[images].max()), int(n_pred[images].max())
    gt_pad = _pad(local, *gt, len(images), n_box)
    pred_pad = _pad(local, *pred, len(images), n_det)
    gt_valid = np.arange(n_box)[None, :] < n_gt[images][:, None]
    pred_valid = np.arange(n_det)[None, :] < n_pred[images][:, None]
    iou = np.where(gt_valid[:, None, :], iou_xywh(pred_pad, gt_pad), -1.0)  # [B, det, box]

    thresholds = IOU_THRESHOLDS[None, :]
    matched = np.zeros((len(images), len(IOU_THRESHOLDS), n_box), dtype=bool)
    hits = np.zeros((len(images), len(IOU_THRESHOLDS), n_det), dtype=np.int64)
    for rank in range(n_det):
        candidates = np.where(matched, -1.0, iou[:, None, rank, :])  # [B, T, box]
        best = candidates.argmax(axis=2)[..., None]
        hit = (np.take_along_axis(candidates, best, axis=2)[..., 0] > thresholds) & pred_valid[
            :, rank, None
        ]
        np.put_along_axis(
            matched, best, np.take_along_axis(matched, best, axis=2) | hit[..., None], axis=2
        )
        hits[:, :, rank] = hit

    tp = np.cumsum(hits, axis=2)
    k = np.arange(1, n_det + 1)[None, None, :]
    precision = (tp / (k + n_gt[images][:, None, None] - tp)).mean(axis=1)  # [B, det]
    rows, ranks = np.nonzero(pred_valid)
    prefix[prefix_start[images[rows]] + 1 + ranks] = precision[rows, ranks]


def _pad(
    local: np.ndarray,
    image: np.ndarray,
    rank: np.ndarray,
    boxes: np.ndarray,
    n_rows: int,
    width: int,
) -> np.ndarray:
    """Boxes of the block's images as a zero-padded [n_rows, width, 4] array."""
    out = np.zeros((n_rows, width, 4))
    where = local[image]
    mine = where >= 0
    out[where[mine], rank[mine]] = boxes[mine]
    return out


def _rank_within(image: np.ndarray, n_images: int) -> np.ndarray:
    """Position of each entry inside its image's run (entries sorted by image)."""
    start = np.concatenate([[0], np.cumsum(np.bincount(image, minlength=n_images))])
    return np.arange(len(image)) - start[image]


def _concat(parts: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty_shape)
