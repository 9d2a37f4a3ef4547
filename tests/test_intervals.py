"""Anomalous intervals of a series: the runs at or above the decision line, and their wire form."""

from __future__ import annotations

import numpy as np
import pytest

from kdcore.intervals import Interval, anomalous_intervals, intervals_from_json, intervals_to_json


def test_runs_at_or_above_the_line_with_their_first_highest_step() -> None:
    scores = np.array([0.1, 0.5, 0.7, 0.7, 0.2, 0.49, 0.9, 0.3, 0.6], np.float32)
    assert anomalous_intervals(scores) == [
        Interval(1, 3, 2, float(np.float32(0.7))),  # 0.5 counts (>= 0.5); the first of two equal peaks
        Interval(6, 6, 6, float(np.float32(0.9))),
        Interval(8, 8, 8, float(np.float32(0.6))),  # a run reaching the last step is closed there
    ]


def test_no_interval_below_the_line_and_one_over_everything() -> None:
    assert anomalous_intervals(np.full(5, 0.499, np.float32)) == []
    assert anomalous_intervals(np.full(5, 0.8, np.float32)) == [Interval(0, 4, 0, float(np.float32(0.8)))]
    assert anomalous_intervals(np.zeros(0, np.float32)) == []


def test_wire_form_round_trips_and_bad_text_is_refused() -> None:
    intervals = anomalous_intervals(np.array([0.9, 0.1, 0.6, 0.7], np.float32))
    text = intervals_to_json(intervals)
    assert intervals_from_json(text) == intervals == intervals_from_json(text.encode())
    assert intervals[1].shifted(100) == Interval(102, 103, 103, intervals[1].score)
    with pytest.raises(ValueError, match="list"):
        intervals_from_json('{"start": 1}')
    with pytest.raises(ValueError, match="malformed"):
        intervals_from_json('[{"start": 1}]')
    with pytest.raises(ValueError, match="1-D"):
        anomalous_intervals(np.zeros((2, 3)))
