"""Turns a network's raw outputs into what operators read: a 0..1 score, a 0..1 map and a label.

The exporter computes the validation references with it and ships it into the repository (with
:mod:`kdcore.stats`, :mod:`kdcore.contract`, :mod:`kdcore.intervals` and :mod:`kdcore.regions`) for the Triton adapter ``export/scorer/model.py``, so the
server calibrates with the very code the references came from. It runs and is tested without Triton.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdcore.contract import ANOMALOUS, NORMAL, RAW_MAP, RAW_PRED
from kdcore.intervals import anomalous_intervals, intervals_to_json
from kdcore.regions import anomalous_regions, regions_to_json
from kdcore.stats import Stats

#: The label words as the scorer sends them (a Triton BYTES tensor).
ANOMALOUS_BYTES, NORMAL_BYTES = ANOMALOUS.encode(), NORMAL.encode()


def map_to_uint8(anomaly_map: np.ndarray) -> np.ndarray:
    """A 0..1 map as uint8 0..255 (rounded): a quarter of the bytes, resolution 1/255; ``v / 255`` reads it back."""
    return np.rint(np.clip(anomaly_map, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


class ScorerInputError(ValueError):
    """A request whose raw outputs cannot be scored (wrong shape, non-finite values)."""


@dataclass(frozen=True)
class ScoredBatch:
    """Calibrated outputs for ``N`` images."""

    score: np.ndarray
    """``(N, 1)`` float32 in [0, 1]; 0.5 is the decision threshold."""
    anomaly_map: np.ndarray | None
    """``(N, 1, H, W)`` float32 in [0, 1]; 0.5 is the pixel threshold. ``None`` when no raw map was given."""
    label: np.ndarray
    """``(N, 1)`` object array of :data:`ANOMALOUS_BYTES` / :data:`NORMAL_BYTES`."""


class Scorer:
    """Applies a model's stats JSON to its raw outputs.

    Args:
        stats: The model's validated stats JSON.
    """

    def __init__(self, stats: Stats) -> None:
        self.image_calibration = stats.image_calibration
        self.pixel_calibration = stats.pixel_calibration
        size = int(stats.model.input_size)
        self.series = stats.model.input_kind == "signal"
        self.map_shape = None if stats.pixel_calibration is None else (size,) if self.series else (1, size, size)

    @property
    def has_map(self) -> bool:
        """Whether the model produces anomaly maps (image models) or only scores (vector models)."""
        return self.map_shape is not None

    def __call__(self, raw_score: np.ndarray, raw_map: np.ndarray | None = None) -> ScoredBatch:
        """Calibrate one batch.

        Args:
            raw_score: ``(N, 1)`` raw scores.
            raw_map: ``(N, 1, H, W)`` raw anomaly maps of an image model, ``(N, T)`` raw per-step scores of a
                time-series model, or ``None`` (vector models, and the others asked for the score alone).

        Returns:
            The :class:`ScoredBatch`.

        Raises:
            ScorerInputError: Shapes that do not match the model, or NaN / infinite values.
        """
        raw_score = np.asarray(raw_score, dtype=np.float32)
        n = raw_score.shape[0] if raw_score.ndim else 0
        if raw_score.shape != (n, 1):
            raise ScorerInputError(f"expected {RAW_PRED} (N, 1), got {raw_score.shape}")
        if raw_map is not None and self.map_shape is None:
            raise ScorerInputError(f"vector models have no {RAW_MAP}")
        if raw_map is not None:
            raw_map = np.asarray(raw_map, dtype=np.float32)
            if raw_map.shape != (n, *self.map_shape):
                raise ScorerInputError(
                    f"expected {RAW_MAP} (N, {', '.join(map(str, self.map_shape))}), got {raw_map.shape}"
                )
        if not (np.isfinite(raw_score).all() and (raw_map is None or np.isfinite(raw_map).all())):
            raise ScorerInputError("a window holds NaN or infinite values (its raw scores are not finite)" if self.series
                                   else "raw outputs contain NaN or infinite values")
        # The label compares raw scores: that is the definition, immune to float rounding near 0.5.
        label = np.where(self.image_calibration.decide(raw_score), ANOMALOUS_BYTES, NORMAL_BYTES).astype(object)
        return ScoredBatch(
            score=self.image_calibration.apply(raw_score),
            anomaly_map=None if raw_map is None else self.pixel_calibration.apply(raw_map),
            label=label,
        )

    def intervals(self, anomaly_map: np.ndarray) -> np.ndarray:
        """The anomalous intervals of calibrated per-step scores ``(N, T)`` as ``(N, 1)`` JSON bytes (time-series
        models; :mod:`kdcore.intervals`)."""
        return np.array([[intervals_to_json(anomalous_intervals(row)).encode()] for row in anomaly_map], dtype=object)

    def regions(self, anomaly_map: np.ndarray) -> np.ndarray:
        """The anomalous regions of calibrated maps ``(N, 1, H, W)`` as ``(N, 1)`` JSON bytes (image models;
        :mod:`kdcore.regions`: boxes in pixels of the map, the model's input size)."""
        return np.array([[regions_to_json(anomalous_regions(m)).encode()] for m in anomaly_map], dtype=object)
