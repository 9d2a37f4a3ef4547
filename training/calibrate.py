"""Thresholds and 0..1 calibration, chosen on validation data only.

The decision threshold is F1-optimal on the validation split where it holds anomalous samples, otherwise a
documented quantile of held-out good scores. The calibration then maps that threshold to exactly 0.5, with its
scale taken from the held-out good scores (formula in :mod:`kdcore.stats`).
"""

from __future__ import annotations

import logging

import numpy as np

from kdcore.metrics import f1_optimal_threshold
from kdcore.stats import Calibration, ScoreStatistics, Threshold, ThresholdMethod

log = logging.getLogger(__name__)

#: Quantile of good image scores used as the image threshold when no anomalous validation image exists.
IMAGE_GOOD_QUANTILE = 0.99
#: The same for pixels: a map covers many pixels, so a stricter quantile keeps false-positive area small.
PIXEL_GOOD_QUANTILE = 0.999
#: Pixel-level threshold search is subsampled to at most this many pixels (deterministic stride).
MAX_PIXELS = 2_000_000


def choose_threshold(
    good_scores: np.ndarray,
    val_labels: np.ndarray,
    val_scores: np.ndarray,
    *,
    good_quantile: float,
) -> Threshold:
    """Pick a decision threshold on validation data.

    Args:
        good_scores: Raw scores of held-out good samples (never trained on).
        val_labels: 0/1 labels of the validation samples.
        val_scores: Their raw scores.
        good_quantile: Quantile of ``good_scores`` used when the validation split has no anomalies.

    Returns:
        The :class:`~kdcore.stats.Threshold`, recording how it was chosen.
    """
    labels = np.asarray(val_labels).ravel().astype(np.int64)
    scores = np.asarray(val_scores, dtype=np.float64).ravel()
    if labels.size > MAX_PIXELS:
        step = int(np.ceil(labels.size / MAX_PIXELS))
        labels, scores = labels[::step], scores[::step]
    if labels.any() and not labels.all():
        value, f1 = f1_optimal_threshold(labels, scores)
        # The optimum sits on an anomalous score; the midpoint to the next lower score gives the same
        # validation F1 with a margin on both sides.
        below = scores[scores < value]
        if below.size:
            value = 0.5 * (value + float(below.max()))
        return Threshold(
            value=float(value), method=ThresholdMethod.F1_OPTIMAL, validation_f1=float(f1), num_samples=int(labels.size)
        )
    log.warning("no anomalous validation samples: threshold = %.3g quantile of held-out good scores", good_quantile)
    good = np.asarray(good_scores, dtype=np.float64).ravel()
    return Threshold(
        value=float(np.quantile(good, good_quantile)),
        method=ThresholdMethod.GOOD_QUANTILE,
        quantile=good_quantile,
        num_samples=int(good.size),
    )


def fit_calibration(threshold: float, good: ScoreStatistics) -> Calibration:
    """Calibration whose 0.5 is ``threshold`` and whose median good score maps to 0.1.

    Args:
        threshold: Raw decision threshold.
        good: Statistics of held-out good scores.

    Returns:
        The :class:`~kdcore.stats.Calibration`. Its scale is ``threshold - median(good)``; where the
        threshold does not exceed the good median (a weak model), the good scores' std (or a tiny floor)
        stands in, so the map stays monotonic and defined.
    """
    scale = threshold - good.median
    if scale <= 0:
        log.warning("threshold %.4g is not above the median good score %.4g; using the good std as scale",
                    threshold, good.median)
        scale = good.std
    scale = max(scale, 1e-6 * max(1.0, abs(threshold)))
    return Calibration(threshold=float(threshold), scale=float(scale))
