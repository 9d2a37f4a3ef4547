"""Detection metrics against ground-truth masks: region precision, recall and F1, AP, segmentation F1.

Used by ``client.py score --evaluate`` for the served regions and, side by side, for another detector's boxes
(``--compare-boxes``), so both are measured by one rule. Everything is class-agnostic (one class, "defect"), so
the mean AP over classes is the AP of that class.

**What is matched.** Predictions are boxes with a score (:class:`Detection`; this project's regions become
boxes ranked by their peak score, :func:`region_detections`); the true regions are the 8-connected components of
each image's mask (the rule of :mod:`kdcore.regions` and of AUPRO), each with its bounding box. All coordinates are
pixels of one frame per image, box end exclusive (``x0 <= x < x1``); a pixel belongs to a box when its centre
``(x + 0.5, y + 0.5)`` lies inside it, so a whole-pixel box holds exactly its pixels.

**The overlap rule** (:data:`OverlapRule`):

- ``"iou"`` (the default): a prediction is a true positive when its box and a true region's box have an
  intersection over union of at least ``iou_threshold`` (0.5): the rule of PASCAL VOC and of COCO's AP50, so the
  figures mean what a detector's figures mean, and a box covering half the part around a small scratch does not
  count as finding it.
- ``"overlap"``: a prediction is a true positive when its box holds at least one pixel of a true region (the
  usual rule for anomaly regions, forgiving boxes that are too large or too small).

Matching is greedy and one-to-one, as in COCO: per image, predictions in descending score (ties in the order
given) each take the not yet matched true region they overlap most (by IoU, or by pixels held for ``"overlap"``;
the lower component label on ties) among those that pass the rule; a prediction that finds none is a false
positive, also when it only overlaps a true region another prediction took (a duplicate).

**Figures** (:class:`DetectionFigures`), over every image of the split together:

- ``precision = TP / predictions``, ``recall = matched true regions / true regions``,
  ``f1 = 2 TP / (2 TP + FP + FN)``, counting the predictions whose score is at least ``threshold`` (all of them
  when it is ``None``; the regions of a calibrated map all reach 0.5 by definition).
- ``ap``: the area under the precision-recall curve of all predictions ranked by score, evaluated at every
  distinct score (tied scores enter together, so their order does not matter), with precision made monotone
  (at each recall, the best precision at that recall or more). ``interpolation="all_points"`` (the default,
  PASCAL VOC 2010 onwards) sums it exactly over the recall steps; ``"coco101"`` averages it at the 101 recalls
  0, 0.01, ..., 1 as COCO does (0 at recalls never reached).
- ``segmentation_f1``: pixel F1 of a predicted mask against the ground truth over all pixels of the split
  (:func:`segmentation_f1`: the calibrated map >= 0.5, or the boxes filled, :func:`box_mask`).

Undefined figures are NaN as in :mod:`kdcore.metrics`: precision without predictions; recall, F1 and AP without
true regions.

Standard library, numpy and OpenCV only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import cv2
import numpy as np

from kdcore.contract import DECISION
from kdcore.metrics import f1_at_threshold
from kdcore.regions import Region, label_regions

OverlapRule = Literal["iou", "overlap"]
Interpolation = Literal["all_points", "coco101"]
RankBy = Literal["peak", "mean"]
#: The default overlap rule and IoU threshold (VOC / COCO AP50).
DEFAULT_RULE: OverlapRule = "iou"
IOU_THRESHOLD = 0.5
DEFAULT_INTERPOLATION: Interpolation = "all_points"

NAN = float("nan")


@dataclass(frozen=True)
class Detection:
    """A predicted box (``x0 <= x < x1``, ``y0 <= y < y1``, pixels of the evaluation frame) with its score."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @classmethod
    def from_xywh(cls, x: float, y: float, w: float, h: float, score: float) -> Detection:
        """From COCO's ``[x, y, width, height]``."""
        return cls(float(x), float(y), float(x) + float(w), float(y) + float(h), float(score))

    @property
    def area(self) -> float:
        """The box's area in pixels (0 for an empty box)."""
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)

    def scaled(self, sx: float, sy: float) -> Detection:
        """The same box in a frame ``sx`` times wider and ``sy`` times taller (e.g. image pixels to map pixels)."""
        return Detection(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy, self.score)

    def pixel_span(self, height: int, width: int) -> tuple[int, int, int, int]:
        """The rows ``r0:r1`` and columns ``c0:c1`` of a ``height`` x ``width`` frame whose pixel centres lie in
        the box."""
        def span(a: float, b: float, n: int) -> tuple[int, int]:
            lo, hi = min(max(math.ceil(a - 0.5), 0), n), min(max(math.ceil(b - 0.5), 0), n)
            return lo, max(lo, hi)

        (r0, r1), (c0, c1) = span(self.y0, self.y1, height), span(self.x0, self.x1, width)
        return r0, r1, c0, c1


def region_detections(regions: Sequence[Region], rank_by: RankBy = "peak") -> list[Detection]:
    """Regions as boxes scored by their ``peak`` (default) or ``mean`` score (same frame as the regions)."""
    if rank_by not in ("peak", "mean"):
        raise ValueError(f"rank_by must be 'peak' or 'mean', got {rank_by!r}")
    return [Detection(r.x0, r.y0, r.x1, r.y1, r.peak if rank_by == "peak" else r.mean) for r in regions]


def box_iou(a: Detection, b: Detection) -> float:
    """Intersection over union of two boxes (0 when either is empty)."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    inter = max(0.0, w) * max(0.0, h)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def box_mask(detections: Sequence[Detection], shape: tuple[int, int], threshold: float | None = None) -> np.ndarray:
    """A uint8 ``{0, 1}`` mask of ``shape`` with every box scoring at least ``threshold`` (all when ``None``) filled:
    the pixels whose centres lie in a box."""
    mask = np.zeros(shape, dtype=np.uint8)
    for d in detections:
        if threshold is None or d.score >= threshold:
            r0, r1, c0, c1 = d.pixel_span(*shape)
            mask[r0:r1, c0:c1] = 1
    return mask


@dataclass(frozen=True)
class ImageMatch:
    """One image's predictions, in descending score, with whether each is a true positive."""

    scores: np.ndarray
    true_positive: np.ndarray
    true_regions: int


def match_image(detections: Sequence[Detection], mask: np.ndarray, *, rule: OverlapRule = DEFAULT_RULE,
                iou_threshold: float = IOU_THRESHOLD) -> ImageMatch:
    """Match one image's predictions to the true regions of its ``mask`` (see the module docstring).

    Raises:
        ValueError: An unknown rule.
    """
    if rule not in ("iou", "overlap"):
        raise ValueError(f"the overlap rule is 'iou' or 'overlap', got {rule!r}")
    mask = np.asarray(mask)
    count, labels, stats = label_regions(mask) if mask.any() else (1, None, None)
    truths = [Detection(float(s[cv2.CC_STAT_LEFT]), float(s[cv2.CC_STAT_TOP]),
                        float(s[cv2.CC_STAT_LEFT] + s[cv2.CC_STAT_WIDTH]),
                        float(s[cv2.CC_STAT_TOP] + s[cv2.CC_STAT_HEIGHT]), 1.0) for s in (stats[1:] if count > 1 else [])]
    order = sorted(range(len(detections)), key=lambda i: -detections[i].score)  # stable: ties keep their order
    taken = np.zeros(len(truths), dtype=bool)
    hits = np.zeros(len(order), dtype=bool)
    for rank, i in enumerate(order):
        d = detections[i]
        if not truths:
            break
        if rule == "iou":
            quality = np.array([box_iou(d, t) for t in truths])
            passes = quality >= iou_threshold
        else:
            r0, r1, c0, c1 = d.pixel_span(*mask.shape)
            quality = np.bincount(labels[r0:r1, c0:c1].ravel(), minlength=count)[1:].astype(np.float64)
            passes = quality >= 1
        candidates = np.flatnonzero(passes & ~taken)
        if candidates.size:
            best = candidates[np.argmax(quality[candidates])]  # the first (lowest label) on ties
            taken[best] = hits[rank] = True
    scores = np.array([detections[i].score for i in order], dtype=np.float64)
    return ImageMatch(scores, hits, len(truths))


def average_precision(scores: np.ndarray, true_positive: np.ndarray, true_regions: int,
                      interpolation: Interpolation = DEFAULT_INTERPOLATION) -> float:
    """AP of matched predictions (any order) against ``true_regions`` (see the module docstring); NaN without
    true regions, 0 without predictions."""
    if interpolation not in ("all_points", "coco101"):
        raise ValueError(f"interpolation is 'all_points' or 'coco101', got {interpolation!r}")
    if true_regions <= 0:
        return NAN
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return 0.0
    order = np.argsort(-s, kind="stable")
    s, tp = s[order], np.asarray(true_positive, dtype=bool)[order]
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # the last prediction of each distinct score
    tps = np.cumsum(tp)[ends].astype(np.float64)
    recall = tps / true_regions
    precision = tps / (ends + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or more
    if interpolation == "all_points":
        return float(np.sum(np.diff(np.r_[0.0, recall]) * envelope))
    points = np.linspace(0.0, 1.0, 101)
    at = np.searchsorted(recall, points, side="left")  # the first threshold reaching each recall
    return float(np.mean(np.where(at < recall.size, envelope[np.minimum(at, recall.size - 1)], 0.0)))


@dataclass(frozen=True)
class DetectionFigures:
    """Region-level figures of one detector over a split (see the module docstring)."""

    precision: float
    recall: float
    f1: float
    ap: float
    true_positives: int
    predictions: int
    true_regions: int

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready (NaN as ``None``)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def detection_figures(
    images: Sequence[tuple[Sequence[Detection], np.ndarray]],
    *,
    rule: OverlapRule = DEFAULT_RULE,
    iou_threshold: float = IOU_THRESHOLD,
    threshold: float | None = None,
    interpolation: Interpolation = DEFAULT_INTERPOLATION,
) -> DetectionFigures:
    """Precision, recall, F1 (predictions scoring at least ``threshold``) and AP (all predictions) of
    ``(predictions, mask)`` pairs, one per image of the split."""
    matches = [match_image(d, m, rule=rule, iou_threshold=iou_threshold) for d, m in images]
    scores = np.concatenate([m.scores for m in matches]) if matches else np.zeros(0)
    hits = np.concatenate([m.true_positive for m in matches]) if matches else np.zeros(0, bool)
    truths = sum(m.true_regions for m in matches)
    kept = np.ones(scores.shape, bool) if threshold is None else scores >= threshold
    tp, predicted = int(np.count_nonzero(hits & kept)), int(np.count_nonzero(kept))
    fp, fn = predicted - tp, truths - tp
    return DetectionFigures(
        precision=tp / predicted if predicted else NAN,
        recall=tp / truths if truths else NAN,
        f1=2 * tp / (2 * tp + fp + fn) if truths else NAN,
        ap=average_precision(scores, hits, truths, interpolation),
        true_positives=tp, predictions=predicted, true_regions=truths,
    )


def segmentation_f1(masks: Sequence[np.ndarray], predicted: Sequence[np.ndarray], threshold: float = DECISION) -> float:
    """Pixel F1 of predicted maps (``>= threshold`` is anomalous: a calibrated map, or a filled box mask) against
    the ground-truth masks over every pixel of the split (:func:`kdcore.metrics.f1_at_threshold`; the images may
    differ in size, each prediction matching its mask). NaN without anomalous pixels."""
    if len(masks) != len(predicted):
        raise ValueError(f"{len(masks)} masks but {len(predicted)} predictions")
    for m, p in zip(masks, predicted):
        if np.shape(m) != np.shape(p)[-2:] or np.size(m) != np.size(p):
            raise ValueError(f"a prediction of shape {np.shape(p)} for a mask of shape {np.shape(m)}")
    if not masks:
        return NAN
    truth = np.concatenate([np.asarray(m).ravel() != 0 for m in masks])
    scores = np.concatenate([np.asarray(p, dtype=np.float32).ravel() for p in predicted])
    return f1_at_threshold(truth, scores, threshold)
