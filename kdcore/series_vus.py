"""VUS-PR: the Volume Under the Surface of the range precision-recall curve, for per-time-step anomaly scores.

VUS-PR is the threshold-free measure of Paparrizos, Boniol, Palpanas, Tsay, Elmore and Franklin, "Volume Under the
Surface: A New Accuracy Evaluation Measure for Time-Series Anomaly Detection" (PVLDB 15(11), 2022), which Liu and
Paparrizos, "The Elephant in the Room: Towards A Reliable Time-Series Anomaly Detection Benchmark" (TSB-AD,
NeurIPS 2024 Datasets and Benchmarks) found the most reliable measure for time-series anomaly detection. Where the
paper leaves a detail open, this module follows the code that produced the published numbers,
``RangeAUC_volume_opt`` (the same function in the ``vus`` package 0.0.6, ``vus/utils/metrics.py``, and in TSB-AD,
``TSB_AD/evaluation/basic_metrics.py``); the tests check this module against numbers computed with that code.

**Range-AUC-PR at buffer length** ``w`` (:func:`range_pr_auc`). ``h = w // 2``. Let ``P`` be the number of
anomalous steps and ``[s, e]`` each maximal run of them (an *anomalous range*).

* *Soft buffer*: a normal step at distance ``d`` (1 ≤ d ≤ h) before a range's start or after its end gets the label
  ``sqrt(1 - d / w)``; contributions of neighbouring ranges add up and the label is capped at 1. Anomalous steps keep
  label 1. ``w = 0`` and ``w = 1`` have no buffer.
* *Extended ranges*: each ``[s - h, e + h]`` (clipped to the series), overlapping ones merged (touching ones are not).
* *Thresholds*: the scores sorted descending, taken at ``numpy.linspace(0, n - 1, 250).astype(int)`` (250 quantile
  positions; with ``n ≤ 250`` that is every distinct score); step ``t`` is predicted at threshold ``τ`` when
  ``score[t] ≥ τ``.
* At each threshold: ``B`` = sum of the buffer labels of the predicted buffer steps (a buffer step counts only where
  it is predicted), ``A`` = predicted anomalous steps, ``TP = A + B``, ``P' = P + B / 2``,
  ``recall = min(TP / P', 1)``, ``existence`` = fraction of extended ranges holding a predicted step,
  ``TPR = recall · existence``, ``precision = TP / predicted steps``.
* The area is the step (right-endpoint) sum ``Σ_k (TPR_k - TPR_{k-1}) · precision_k`` from ``TPR_0 = 0`` over the
  threshold grid, as ``RangeAUC_volume_opt`` sums it (not the trapezoid rule). At ``w = 0`` with a single anomalous
  range and ``n ≤ 250`` this is exactly the point-wise average precision (scikit-learn's ``average_precision_score``);
  with several ranges, the existence factor makes it lower unless every range is hit.

Note: the reference's separate single-buffer ``RangeAUC`` (its "R_AUC_PR") differs from the VUS slice in three
details (a fixed ``P'`` from all buffer labels whether predicted or not, the trapezoid rule, an end buffer shifted by
one step); VUS-PR is built from the slice above, and :func:`range_pr_auc` is that slice, so that
``vus_pr(y, s, W) == mean(range_pr_auc(y, s, w) for w in 0..W)``.

**VUS-PR** (:func:`vus_pr`): the mean of the range-AUC-PR over buffer lengths ``w = 0, 1, ..., max_window``.
The default ``max_window`` is :data:`MAX_WINDOW` = 100: the ``slidingWindow`` of the reference's README example and
the default of TSB-AD's ``get_metrics``; the reference's advice is the period of the series or the median anomaly
length, and for ECG at 128 Hz one beat (60-100 bpm) is 77-128 steps, so 100 steps (0.78 s, a buffer of at most
50 steps, 0.39 s, on each side) is one beat.

**Many windows** (:func:`vus_pr_windows`): ``(N, T)`` windows are concatenated in order into one series of
``N * T`` steps and scored as one series, the way TSB-AD scores one long recording: the thresholds are shared by all
windows and a buffer may reach into the neighbouring window. The windows of this repository's ECG datasets are
consecutive cuts of records, so their concatenation is the record again (up to record boundaries); a per-window
mean would be undefined for the many windows without an anomalous step.

**Undefined and invalid inputs**: a series without an anomalous step has no VUS-PR (the reference crashes on it);
the functions return ``None``, as :mod:`kdcore.series_metrics` leaves an undefined mean out. Labels other than 0/1,
shapes that differ, an empty series, NaN scores, a negative ``max_window`` / ``window`` or fewer than one threshold
raise ``ValueError``. Infinite scores are allowed (they are ordered like any other).

Standard library and numpy only, like the rest of ``kdcore``. Cost: one sort, then ``O(n + ranges · w)`` per buffer
length.
"""

from __future__ import annotations

import numpy as np

#: Largest buffer length of VUS-PR by default (the reference's example ``slidingWindow``; one ECG beat at 128 Hz).
MAX_WINDOW = 100
#: Thresholds on the score (the reference's ``thre``).
THRESHOLDS = 250


def _validate(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-D 0/1 labels (as bool) and float scores of the same length; ``ValueError`` otherwise."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"labels and scores must have the same length, got {y.shape[0]} and {s.shape[0]}")
    if y.size == 0:
        raise ValueError("labels and scores are empty")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return y.astype(bool), s


def _check_window(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _anomalous_ranges(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last step (inclusive) of each maximal run of anomalous steps."""
    edges = np.flatnonzero(np.diff(np.concatenate([[False], y, [False]]).astype(np.int8)))
    return edges[::2], edges[1::2] - 1


class _Curves:
    """What every buffer length shares: the threshold grid and the scores' order."""

    def __init__(self, y: np.ndarray, s: np.ndarray, thresholds: int) -> None:
        if isinstance(thresholds, bool) or int(thresholds) != thresholds or thresholds < 1:
            raise ValueError(f"thresholds must be a positive integer, got {thresholds!r}")
        n = s.size
        self.n, self.y, self.s = n, y, s
        self.positives = float(y.sum())
        self.starts, self.ends = _anomalous_ranges(y)
        self.order = np.argsort(-s, kind="stable")  # descending; ties in any order (a threshold takes a whole tie)
        descending = s[self.order]
        self.tau = descending[np.linspace(0, n - 1, int(thresholds)).astype(int)]
        # Steps predicted at each threshold: the first `count` of the descending order.
        self.count = n - np.searchsorted(np.sort(s), self.tau, side="left")
        self.hits = np.cumsum(y[self.order])[self.count - 1]  # predicted anomalous steps (A)

    def buffer_labels(self, window: int) -> np.ndarray:
        """Soft labels of the normal steps around the anomalous ranges (0 elsewhere and on anomalous steps)."""
        half = window // 2
        soft = np.zeros(self.n)
        if half == 0:
            return soft
        d = np.arange(1, half + 1)
        weight = np.sqrt(1.0 - d / window)
        where = np.concatenate([(self.ends[:, None] + d).ravel(), (self.starts[:, None] - d).ravel()])
        weights = np.tile(weight, 2 * self.starts.size)
        inside = (where >= 0) & (where < self.n)
        soft = np.minimum(np.bincount(where[inside], weights[inside], minlength=self.n), 1.0)
        soft[self.y] = 0.0
        return soft

    def range_maxima(self, window: int) -> np.ndarray:
        """Highest score in each extended range ``[s - h, e + h]`` after overlapping ones merge."""
        half = window // 2
        lo = np.maximum(self.starts - half, 0)
        hi = np.minimum(self.ends + half, self.n - 1)
        new = np.concatenate([[True], lo[1:] > hi[:-1]])
        lo, hi = lo[new], hi[np.concatenate([new[1:], [True]])]
        bounds = np.stack([lo, hi + 1], axis=1).ravel()
        padded = np.concatenate([self.s, [-np.inf]])  # reduceat needs every bound < len
        return np.maximum.reduceat(padded, bounds)[::2]

    def area(self, window: int) -> float:
        """Range-AUC-PR at one buffer length (step sum over the threshold grid)."""
        buffered = np.cumsum(self.buffer_labels(window)[self.order])[self.count - 1]  # B
        tp = self.hits + buffered
        recall = np.minimum(tp / (self.positives + buffered / 2.0), 1.0)
        maxima = np.sort(self.range_maxima(window))
        existence = (maxima.size - np.searchsorted(maxima, self.tau, side="left")) / maxima.size
        tpr = recall * existence
        precision = tp / self.count
        return float(np.diff(tpr, prepend=0.0) @ precision)


def range_pr_auc(labels: np.ndarray, scores: np.ndarray, window: int, *,
                 thresholds: int = THRESHOLDS) -> float | None:
    """Range-AUC-PR of one series at buffer length ``window`` (Paparrizos et al., PVLDB 2022).

    The labels are extended by a soft buffer of ``window // 2`` steps on each side of every anomalous range
    (label ``sqrt(1 - d / window)`` at distance ``d``); the range precision-recall curve over 250 score thresholds
    (recall weighted by the fraction of ranges detected) is summed by the step rule. The full definition is in the
    module docstring; it is the per-buffer slice of the reference's ``RangeAUC_volume_opt``.

    Args:
        labels: ``(n,)`` 0/1 per step (1: anomalous).
        scores: ``(n,)`` per-step scores, higher is more anomalous; no NaN.
        window: Buffer length ``w ≥ 0`` (``0`` and ``1``: no buffer).
        thresholds: Number of score thresholds (the reference: 250).

    Returns:
        The area in ``[0, 1]``, or ``None`` when no step is anomalous.

    Raises:
        ValueError: On labels other than 0/1, different or non-1-D shapes, an empty series, NaN scores, a negative
            ``window`` or fewer than one threshold.
    """
    y, s = _validate(labels, scores)
    window = _check_window("window", window)
    if not y.any():
        return None
    return _Curves(y, s, thresholds).area(window)


def vus_pr(labels: np.ndarray, scores: np.ndarray, max_window: int = MAX_WINDOW, *,
           thresholds: int = THRESHOLDS) -> float | None:
    """VUS-PR of one series: the mean range-AUC-PR over buffer lengths ``0, 1, ..., max_window``.

    Paparrizos et al., "Volume Under the Surface: A New Accuracy Evaluation Measure for Time-Series Anomaly
    Detection", PVLDB 2022; the measure TSB-AD (Liu and Paparrizos, NeurIPS 2024) ranks detectors by. Equal to the
    reference's ``RangeAUC_volume_opt(labels, scores, max_window, thre=250)`` VUS-PR; see the module docstring.

    Args:
        labels: ``(n,)`` 0/1 per step (1: anomalous).
        scores: ``(n,)`` per-step scores, higher is more anomalous; no NaN.
        max_window: The largest buffer length (default :data:`MAX_WINDOW` = 100, the reference's ``slidingWindow``
            example and TSB-AD's default; about one ECG beat at 128 Hz).
        thresholds: Number of score thresholds (the reference: 250).

    Returns:
        VUS-PR in ``[0, 1]``, or ``None`` when no step is anomalous.

    Raises:
        ValueError: As :func:`range_pr_auc`.
    """
    y, s = _validate(labels, scores)
    max_window = _check_window("max_window", max_window)
    if not y.any():
        return None
    curves = _Curves(y, s, thresholds)
    return float(np.mean([curves.area(w) for w in range(max_window + 1)]))


def vus_pr_windows(labels: np.ndarray, scores: np.ndarray, max_window: int = MAX_WINDOW, *,
                   thresholds: int = THRESHOLDS) -> float | None:
    """VUS-PR of ``N`` windows of ``T`` steps, concatenated in order into one series of ``N * T`` steps.

    One long series is what TSB-AD scores; for consecutive windows of a record the concatenation is the record
    again. Thresholds are shared by all windows and a buffer may reach into the neighbouring window.

    Args:
        labels: ``(N, T)`` 0/1 per step.
        scores: ``(N, T)`` per-step scores; no NaN.
        max_window: As :func:`vus_pr`.
        thresholds: As :func:`vus_pr`.

    Returns:
        VUS-PR of the concatenation, or ``None`` when no step of any window is anomalous.

    Raises:
        ValueError: When the arrays are not both ``(N, T)`` of one shape, or as :func:`vus_pr`.
    """
    y = np.asarray(labels)
    s = np.asarray(scores)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"labels and scores must both be (N, T) of one shape, got {y.shape} and {s.shape}")
    return vus_pr(y.reshape(-1), s.reshape(-1), max_window, thresholds=thresholds)
