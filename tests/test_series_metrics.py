"""MSP/MSR (kdcore.series_metrics) on worked examples, the source's rules and the two cases it left undefined."""

from __future__ import annotations

import numpy as np
import pytest

from kdcore.series_metrics import predicted_points, squeezed_precision_recall, true_intervals, window_precision_recall


def test_points_are_run_peaks_above_the_window_mean_with_close_runs_merged_and_single_steps_dropped() -> None:
    p = np.zeros(60)
    p[5:9] = [0.6, 0.9, 0.7, 0.6]  # a run, peak at 6
    p[14] = 0.8                    # a second run 6 steps later (< 10): merges with the first, peak still 6
    p[30] = 0.95                   # a lone step 16 steps away: its own run of one step, dropped
    p[45:48] = [0.5, 0.7, 0.7]     # a run whose first highest step is 46
    assert predicted_points(p).tolist() == [6, 46]
    assert predicted_points(p, level=0.65).tolist() == [6, 46]  # 45 and 47 fall out; 46-47 is still two steps
    assert predicted_points(p, level=0.99).tolist() == []
    assert predicted_points(np.full(20, 0.3)).tolist() == []   # a constant window: nothing above its mean


def test_true_points_become_merged_intervals_counted_once() -> None:
    labels = np.zeros(40)
    labels[[10, 11, 12]] = 1  # a labelled segment: one interval [8, 14]
    labels[17] = 1            # [15, 19] touches [8, 14]: merged (the source counted both)
    labels[30] = 1            # its own interval
    assert true_intervals(labels) == [(8, 19), (28, 32)]
    assert true_intervals(np.zeros(5)) == []


def test_window_precision_and_recall_by_hand() -> None:
    labels = np.zeros(80)
    labels[20] = labels[60] = 1       # intervals [18, 22] and [58, 62]
    p = np.zeros(80)
    p[19:22] = [0.5, 0.9, 0.5]        # point 20: a hit
    p[40:43] = [0.5, 0.8, 0.5]        # point 41: a false alarm
    precision, recall = window_precision_recall(p, labels)
    assert precision == pytest.approx(1 / 2) and recall == pytest.approx(1 / 2)


def test_windows_without_points_or_anomalies_leave_that_mean_and_are_counted() -> None:
    """The source crashed on a window without a true point: here it has no recall and stays out of MSR."""
    labels = np.zeros((3, 50))
    labels[0, 25] = 1
    p = np.zeros((3, 50))
    p[0, 24:27] = [0.4, 0.9, 0.4]     # window 0: hit, precision 1, recall 1
    p[1, 10:13] = [0.4, 0.9, 0.4]     # window 1: clean, one false alarm: precision 0, no recall
    # window 2: clean and flat: neither
    result = squeezed_precision_recall(p, labels)
    assert result.msp == pytest.approx(0.5) and result.msr == pytest.approx(1.0)
    assert (result.windows_with_points, result.windows_with_anomalies, result.windows) == (2, 1, 3)
    assert squeezed_precision_recall(np.zeros((2, 5)), np.zeros((2, 5))).msp is None
    with pytest.raises(ValueError, match="both be"):
        squeezed_precision_recall(np.zeros((2, 5)), np.zeros((2, 6)))
