"""Metrics of per-time-step anomaly detectors: Mean Squeezed Precision and Recall (MSP/MSR).

MSP and MSR are the measures of the time-series source document (../shared/seeds/003, "VLM Guided Knowledge
Distillation for TSAD"), computed per window and averaged over windows. Its code leaves two cases undefined (it
crashes on a window without a true point, and counts a hit twice when two true points' intervals overlap); they
are defined here, and every rule is one function below:

* **Predicted points** (:func:`predicted_points`): the steps whose probability exceeds a level (the source: the
  window's own mean) form runs; runs separated by fewer than ``merge_gap`` steps (10) merge; runs of a single step
  are dropped; each run's peak (its first highest step) is one predicted point.
* **True intervals** (:func:`true_intervals`): each labelled step ``t`` becomes ``[t - tolerance, t + tolerance]``
  (tolerance 2); overlapping or touching intervals merge into one, so a labelled segment is one interval and is
  counted once.
* **Per window**: precision = predicted points inside some true interval / predicted points; recall = true
  intervals holding at least one predicted point / true intervals. A window without predicted points has no
  precision, a window without true intervals no recall: each is left out of that average (and counted, so the
  report says how many windows each mean covers). MSP and MSR are the means over the windows that have them.

Standard library and numpy only, like the rest of ``kdcore``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Runs closer than this many steps merge (the source's value).
MERGE_GAP = 10
#: Half-width of the interval around each labelled step (the source's value).
TOLERANCE = 2


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of ``True`` in a 1-D boolean array."""
    padded = np.concatenate([[False], mask.astype(bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def predicted_points(probabilities: np.ndarray, level: float | None = None, *, merge_gap: int = MERGE_GAP) -> np.ndarray:
    """The predicted anomalous points of one window (step indices, ascending).

    Args:
        probabilities: ``(T,)`` per-step scores.
        level: Steps strictly above it form runs; ``None``: the window's mean (the source's rule).
        merge_gap: Runs whose gap (steps between them) is below this merge into one.
    """
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if p.size == 0:
        return np.zeros(0, dtype=np.int64)
    if level is None and np.ptp(p) <= 1e-12 * max(1.0, float(np.abs(p).max())):
        return np.zeros(0, dtype=np.int64)  # a flat window: its mean rounds below some of its own equal values
    runs = _runs(p > (p.mean() if level is None else level))
    merged: list[list[int]] = []
    for start, stop in runs:
        if merged and start - merged[-1][1] < merge_gap:
            merged[-1][1] = stop
        else:
            merged.append([start, stop])
    return np.array([start + int(np.argmax(p[start:stop])) for start, stop in merged if stop - start > 1],
                    dtype=np.int64)


def true_intervals(labels: np.ndarray, *, tolerance: int = TOLERANCE) -> list[tuple[int, int]]:
    """The merged true intervals ``[first, last]`` (inclusive) of one window's per-step labels."""
    steps = np.flatnonzero(np.asarray(labels).ravel() > 0)
    intervals: list[list[int]] = []
    for t in steps:
        lo, hi = int(t) - tolerance, int(t) + tolerance
        if intervals and lo <= intervals[-1][1] + 1:
            intervals[-1][1] = max(intervals[-1][1], hi)
        else:
            intervals.append([lo, hi])
    return [(lo, hi) for lo, hi in intervals]


def window_precision_recall(probabilities: np.ndarray, labels: np.ndarray, level: float | None = None, *,
                            merge_gap: int = MERGE_GAP, tolerance: int = TOLERANCE) -> tuple[float | None, float | None]:
    """Squeezed precision and recall of one window; ``None`` where undefined (no predicted point, no true step)."""
    points = predicted_points(probabilities, level, merge_gap=merge_gap)
    intervals = true_intervals(labels, tolerance=tolerance)
    inside = [any(lo <= p <= hi for lo, hi in intervals) for p in points]
    precision = sum(inside) / len(points) if len(points) else None
    recall = (sum(any(lo <= p <= hi for p in points) for lo, hi in intervals) / len(intervals)
              if intervals else None)
    return precision, recall


@dataclass(frozen=True)
class Squeezed:
    """MSP and MSR over a set of windows, with how many windows each mean covers."""

    msp: float | None
    msr: float | None
    windows_with_points: int
    windows_with_anomalies: int
    windows: int


def squeezed_precision_recall(probabilities: np.ndarray, labels: np.ndarray, level: float | None = None, *,
                              merge_gap: int = MERGE_GAP, tolerance: int = TOLERANCE) -> Squeezed:
    """MSP and MSR over windows.

    Args:
        probabilities: ``(N, T)`` per-step scores.
        labels: ``(N, T)`` per-step 0/1 labels.
        level: See :func:`predicted_points` (``None``: each window's mean).

    Raises:
        ValueError: Shapes that differ or are not ``(N, T)``.
    """
    p, y = np.asarray(probabilities), np.asarray(labels)
    if p.shape != y.shape or p.ndim != 2:
        raise ValueError(f"probabilities and labels must both be (N, T), got {p.shape} and {y.shape}")
    pairs = [window_precision_recall(pw, yw, level, merge_gap=merge_gap, tolerance=tolerance) for pw, yw in zip(p, y)]
    precisions = [pr for pr, _ in pairs if pr is not None]
    recalls = [rc for _, rc in pairs if rc is not None]
    return Squeezed(
        msp=float(np.mean(precisions)) if precisions else None,
        msr=float(np.mean(recalls)) if recalls else None,
        windows_with_points=len(precisions), windows_with_anomalies=len(recalls), windows=len(pairs),
    )
