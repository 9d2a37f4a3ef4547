"""VUS-PR (kdcore.series_vus): worked examples, the reference implementation's numbers, sanity and invalid input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kdcore.series_vus import MAX_WINDOW, range_pr_auc, vus_pr, vus_pr_windows


def _lcg(n: int, seed: int) -> np.ndarray:
    """Deterministic scores in [0, 1) from an integer LCG: the same on every platform and numpy version."""
    x, out = seed, []
    for _ in range(n):
        x = (1103515245 * x + 12345) % 2**31
        out.append(x / 2**31)
    return np.array(out)


# --- worked examples --------------------------------------------------------------------------------------------


def test_a_perfect_detector_scores_one_at_every_buffer_length() -> None:
    y = np.zeros(60, int)
    y[10:14] = 1
    y[40] = 1
    s = y.astype(float)  # anomalies strictly above every normal step
    assert [range_pr_auc(y, s, w) for w in (0, 1, 5, 30)] == [pytest.approx(1.0)] * 4
    assert vus_pr(y, s, 30) == pytest.approx(1.0)


def test_window_zero_with_one_range_is_the_step_rule_average_precision() -> None:
    # Descending: 0.9 (anomalous), 0.6, 0.4 (anomalous), 0.3, 0.2, 0.1. Recall 1/2 at precision 1, then 1 at 2/3:
    # the step sum 1/2 * 1 + 1/2 * 2/3 = 5/6 (the trapezoid rule would give 1/2 + 1/2 * (2/3 + 1/2) / 2 = 19/24).
    y = np.array([0, 1, 1, 0, 0, 0])
    s = np.array([0.1, 0.9, 0.4, 0.6, 0.2, 0.3])
    assert range_pr_auc(y, s, 0) == pytest.approx(5 / 6)
    assert range_pr_auc(y, s, 1) == pytest.approx(5 / 6)  # buffer length 1 has no buffer steps (1 // 2 == 0)


def test_window_zero_matches_scikit_learns_average_precision_for_one_range() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    y = np.zeros(200, int)
    y[120:150] = 1
    s = _lcg(200, 5) + 0.3 * y
    assert range_pr_auc(y, s, 0) == pytest.approx(metrics.average_precision_score(y, s), abs=1e-12)


def test_existence_factor_with_two_ranges_at_window_zero() -> None:
    # Ranges {1} and {4}. Top score hits range 1: recall 1/2, one range of two -> TPR 1/4 at precision 1; both are
    # found only at the last threshold (TPR 1, precision 2/6). Area 1/4 + 3/4 * 1/3 = 1/2 (point-wise AP: 2/3).
    y = np.array([0, 1, 0, 0, 1, 0])
    s = np.array([0.2, 0.9, 0.5, 0.3, 0.1, 0.4])
    assert range_pr_auc(y, s, 0) == pytest.approx(1 / 2)


def test_a_constant_score_gives_the_extended_anomaly_ratio() -> None:
    y = np.zeros(20, int)
    y[8:10] = 1
    s = np.full(20, 0.5)
    # Buffer length 4: two buffer steps a side, labels sqrt(1 - 1/4) and sqrt(1 - 2/4); everything is predicted.
    soft = 2 * (math.sqrt(3 / 4) + math.sqrt(1 / 2))
    assert range_pr_auc(y, s, 0) == pytest.approx(2 / 20)
    assert range_pr_auc(y, s, 4) == pytest.approx((2 + soft) / 20)
    expected = [2 / 20, 2 / 20,                        # w = 0, 1: no buffer
                (2 + 2 * math.sqrt(1 / 2)) / 20,       # w = 2: one step a side, sqrt(1 - 1/2)
                (2 + 2 * math.sqrt(2 / 3)) / 20,       # w = 3: one step a side, sqrt(1 - 1/3)
                (2 + soft) / 20]                       # w = 4
    assert vus_pr(y, s, 4) == pytest.approx(sum(expected) / 5)


def test_neighbouring_buffers_add_up_and_are_capped_at_one() -> None:
    y = np.zeros(13, int)
    y[[4, 8]] = 1
    # Buffer length 6 (three steps a side): steps 5, 6, 7 get two contributions each, summing above 1 -> 1;
    # steps 1-3 and 9-11 get sqrt(1 - d/6) for d = 3, 2, 1. A constant score predicts all of it.
    outer = math.sqrt(1 / 2) + math.sqrt(2 / 3) + math.sqrt(5 / 6)
    assert range_pr_auc(y, np.zeros(13), 6) == pytest.approx((2 + 3 + 2 * outer) / 13)


def test_a_near_miss_earns_credit_from_the_buffer() -> None:
    y = np.zeros(11, int)
    y[5] = 1
    s = np.linspace(0.0, 0.5, 11)
    s[6], s[5] = 1.0, 0.9  # the step after the anomaly first, then the anomaly
    # Window 0: the first prediction is a false alarm, the second finds the anomaly: 1 * 1/2.
    assert range_pr_auc(y, s, 0) == pytest.approx(1 / 2)
    # Window 4: step 6 carries b = sqrt(3/4). First threshold TP = b, P' = 1 + b/2, TPR = b / P', precision b;
    # then TP = 1 + b >= P', TPR 1, precision (1 + b) / 2.
    b = math.sqrt(3 / 4)
    tpr = b / (1 + b / 2)
    assert range_pr_auc(y, s, 4) == pytest.approx(tpr * b + (1 - tpr) * (1 + b) / 2)


def test_vus_pr_is_the_mean_over_buffer_lengths_and_windows_concatenate_in_order() -> None:
    y = np.zeros((4, 50), int)
    y[1, 45:50] = 1
    y[2, 0:3] = 1  # one range across the boundary of windows 1 and 2
    y[3, 20] = 1
    s = _lcg(200, 9).reshape(4, 50) + 0.5 * y
    flat_y, flat_s = y.ravel(), s.ravel()
    per = [range_pr_auc(flat_y, flat_s, w) for w in range(13)]
    assert vus_pr(flat_y, flat_s, 12) == pytest.approx(float(np.mean(per)))
    assert vus_pr_windows(y, s, 12) == pytest.approx(vus_pr(flat_y, flat_s, 12))
    assert vus_pr(flat_y, flat_s) == pytest.approx(vus_pr(flat_y, flat_s, MAX_WINDOW))
    assert MAX_WINDOW == 100


# --- the reference implementation -------------------------------------------------------------------------------
# Expected values: RangeAUC_volume_opt(labels, scores, windowSize=W, thre=250) of the `vus` package 0.0.6
# (vus/utils/metrics.py, metricor) and of TSB-AD (TSB_AD/evaluation/basic_metrics.py, basic_metricor, at commit
# 87630099ea8d), run once in a scratch script on these exact series (both gave identical numbers); the VUS-PR is its
# last return value, a single buffer length's value is (tpr[w][1:-1] - tpr[w][:-2]) @ prec[w][1:] from its curves.
# On 300 further random series (1-5 ranges, ties, ranges at both ends, W up to 60) the largest difference was 6e-16.


def _case_a() -> tuple[np.ndarray, np.ndarray]:
    y = np.zeros(400, int)
    y[50:62] = 1
    y[180] = 1
    y[300:340] = 1
    return y, _lcg(400, 7) + 0.6 * y


def _case_b() -> tuple[np.ndarray, np.ndarray]:
    """1000 steps (thresholds subsample the scores), heavy ties, ranges at both ends, two ranges 3 steps apart."""
    y = np.zeros(1000, int)
    y[:15] = 1
    y[400:430] = 1
    y[433:440] = 1
    y[985:] = 1
    s = np.floor(_lcg(1000, 11) * 8) / 8 + 0.25 * np.convolve(y, np.ones(21) / 21, "same")
    return y, s


def test_agrees_with_the_reference_on_three_ranges() -> None:
    y, s = _case_a()
    assert vus_pr(y, s, 20) == pytest.approx(0.636315008441481, abs=1e-12)
    assert vus_pr(y, s, 100) == pytest.approx(0.7888216646645095, abs=1e-12)
    expected = {0: 0.5859192832562288, 7: 0.6353957951001541, 20: 0.6586722421943267, 100: 0.9455762164901306}
    for w, value in expected.items():
        assert range_pr_auc(y, s, w) == pytest.approx(value, abs=1e-12)


def test_agrees_with_the_reference_with_ties_and_ranges_at_the_ends() -> None:
    y, s = _case_b()
    assert vus_pr(y, s) == pytest.approx(0.3870178395062411, abs=1e-12)  # the default max_window, 100
    expected = {0: 0.21374669624446227, 1: 0.21374669624446227, 2: 0.26229932966300085, 55: 0.4034828182801561,
                100: 0.4482876258140857}
    for w, value in expected.items():
        assert range_pr_auc(y, s, w) == pytest.approx(value, abs=1e-12)


def test_agrees_with_the_reference_on_concatenated_windows() -> None:
    y = np.zeros((8, 64), int)
    y[1, 10:20] = 1
    y[4, 60:64] = 1
    y[5, 0:3] = 1
    y[6, 30] = 1
    s = _lcg(8 * 64, 3).reshape(8, 64) + 0.4 * y
    assert vus_pr_windows(y, s, 30) == pytest.approx(0.2991030278888394, abs=1e-12)  # reference on y.ravel()


# --- sanity -----------------------------------------------------------------------------------------------------


def test_a_detector_that_ranks_anomalies_higher_scores_higher() -> None:
    y, _ = _case_a()
    noise = _lcg(400, 21)
    values = [vus_pr(y, noise + strength * y, 50) for strength in (0.0, 0.3, 0.6, 0.9, 1.0)]
    assert (np.diff(values) > 0).all()  # 0.297, 0.619, 0.819, 0.982, 1.0
    assert values[-1] == pytest.approx(1.0)  # noise < 1: every anomalous step above every normal one


def test_a_detection_close_to_the_range_beats_one_far_away() -> None:
    y = np.zeros(300, int)
    y[100:110] = 1
    base = _lcg(300, 4) * 0.1
    base[112:118] = base[200:206] = 0.0
    near, far = base.copy(), base.copy()
    near[112:118] += 1.0  # just after the range: inside the buffer of the larger buffer lengths
    far[200:206] += 1.0
    assert vus_pr(y, near, 40) > vus_pr(y, far, 40)
    assert range_pr_auc(y, near, 0) == pytest.approx(range_pr_auc(y, far, 0))  # no buffer: both equally wrong


def test_scale_and_shift_of_the_scores_change_nothing() -> None:
    y, s = _case_a()
    assert vus_pr(y, 3.0 * s - 7.0, 20) == pytest.approx(vus_pr(y, s, 20), abs=1e-12)


# --- undefined and invalid input --------------------------------------------------------------------------------


def test_no_anomalous_step_has_no_value() -> None:
    s = np.arange(10.0)
    assert range_pr_auc(np.zeros(10, int), s, 4) is None
    assert vus_pr(np.zeros(10, int), s) is None
    assert vus_pr_windows(np.zeros((2, 5), int), s.reshape(2, 5)) is None


def test_an_all_anomalous_series_scores_one() -> None:
    assert vus_pr(np.ones(10, int), _lcg(10, 1), 4) == pytest.approx(1.0)


@pytest.mark.parametrize(("labels", "scores", "message"), [
    (np.zeros(5), np.zeros(6), "same length"),
    (np.zeros((2, 3)), np.zeros((2, 3)), "1-D"),
    (np.array([0, 1, 2]), np.zeros(3), "0 or 1"),
    (np.array([0, 1, 0]), np.array([0.1, np.nan, 0.2]), "NaN"),
    (np.zeros(0), np.zeros(0), "empty"),
])
def test_invalid_series_raise(labels: np.ndarray, scores: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        vus_pr(labels, scores)
    with pytest.raises(ValueError, match=message):
        range_pr_auc(labels, scores, 3)


def test_invalid_windows_and_shapes_raise() -> None:
    y, s = np.array([0, 1, 0]), np.array([0.1, 0.9, 0.2])
    with pytest.raises(ValueError, match="window"):
        range_pr_auc(y, s, -1)
    with pytest.raises(ValueError, match="max_window"):
        vus_pr(y, s, -2)
    with pytest.raises(ValueError, match="thresholds"):
        vus_pr(y, s, 2, thresholds=0)
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        vus_pr_windows(y, s)
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        vus_pr_windows(np.zeros((2, 3)), np.zeros((3, 2)))
