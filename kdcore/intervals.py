"""Anomalous intervals of a time series: the runs of steps whose calibrated score reaches the decision line.

The scorer reports them for every served window (``intervals``, one JSON list per row) and the client's scoring
command for whole records; both call :func:`anomalous_intervals`, so an interval means one thing everywhere. An
interval is a maximal run of consecutive steps with calibrated score >= 0.5 (:data:`~kdcore.contract.DECISION`):
``start`` and ``end`` are its first and last step (inclusive), ``peak`` the step of its highest score (the first
one on ties) and ``score`` that highest score.

Standard library and numpy only: shipped into the scorer's model folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from kdcore.contract import DECISION


@dataclass(frozen=True)
class Interval:
    """One anomalous run of steps (``end`` inclusive)."""

    start: int
    end: int
    peak: int
    score: float

    def shifted(self, offset: int) -> Interval:
        """The same interval ``offset`` steps later (a window's interval placed in its record)."""
        return Interval(self.start + offset, self.end + offset, self.peak + offset, self.score)


def anomalous_intervals(scores: np.ndarray, decision: float = DECISION) -> list[Interval]:
    """The maximal runs of ``scores`` (1-D, calibrated) at or above ``decision``, in order.

    Raises:
        ValueError: ``scores`` is not 1-D.
    """
    s = np.asarray(scores, dtype=np.float32)
    if s.ndim != 1:
        raise ValueError(f"intervals are found on one series (1-D scores), got shape {s.shape}")
    above = np.concatenate([[False], s >= np.float32(decision), [False]])
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    out = []
    for start, stop in zip(edges[::2], edges[1::2]):
        peak = int(start + np.argmax(s[start:stop]))
        out.append(Interval(int(start), int(stop - 1), peak, float(s[peak])))
    return out


def intervals_to_json(intervals: list[Interval]) -> str:
    """The wire form: a compact JSON list of ``{"start", "end", "peak", "score"}`` objects."""
    return json.dumps([asdict(i) for i in intervals], separators=(",", ":"))


def intervals_from_json(text: bytes | str) -> list[Interval]:
    """Parse the wire form back (bytes as the server sends them, or text).

    Raises:
        ValueError: Not a JSON list of interval objects.
    """
    raw = json.loads(text.decode() if isinstance(text, bytes) else text)
    if not isinstance(raw, list):
        raise ValueError(f"intervals must be a JSON list, got {type(raw).__name__}")
    try:
        return [Interval(int(r["start"]), int(r["end"]), int(r["peak"]), float(r["score"])) for r in raw]
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed interval in {raw!r}: {e}") from e
