"""Turns a network's raw outputs into what operators read: a 0..1 score, a 0..1 map and a label.

Shipped into the model repository beside ``model.py`` (the Triton adapter) and ``stats.py`` (the schema and the
calibration formula, copied from :mod:`training.stats`), so it imports nothing from this project: the stats
object is handed in. It runs and is tested without Triton.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

ANOMALOUS = b"anomalous"
NORMAL = b"normal"


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
    """``(N, 1)`` object array of ``b"anomalous"`` / ``b"normal"``."""


class Scorer:
    """Applies a model's stats JSON to its raw outputs.

    Args:
        stats: A validated ``Stats`` object (``stats.py``'s schema).
    """

    def __init__(self, stats: Any) -> None:
        self.image_calibration = stats.image_calibration
        self.pixel_calibration = stats.pixel_calibration
        self.image_threshold = float(stats.image_threshold.value)
        size = int(stats.model.input_size)
        self.map_shape = (1, size, size) if stats.pixel_calibration is not None else None

    @property
    def has_map(self) -> bool:
        """Whether the model produces anomaly maps (image models) or only scores (vector models)."""
        return self.map_shape is not None

    def __call__(self, raw_score: np.ndarray, raw_map: np.ndarray | None = None) -> ScoredBatch:
        """Calibrate one batch.

        Args:
            raw_score: ``(N, 1)`` raw scores.
            raw_map: ``(N, 1, H, W)`` raw anomaly maps of an image model, or ``None`` (vector models, and image
                models asked for the score alone).

        Returns:
            The :class:`ScoredBatch`.

        Raises:
            ScorerInputError: Shapes that do not match the model, or NaN / infinite values.
        """
        raw_score = np.asarray(raw_score, dtype=np.float32)
        n = raw_score.shape[0] if raw_score.ndim else 0
        if raw_score.shape != (n, 1):
            raise ScorerInputError(f"expected pred_score (N, 1), got {raw_score.shape}")
        if raw_map is not None and self.map_shape is None:
            raise ScorerInputError("vector models have no anomaly_map")
        if raw_map is not None:
            raw_map = np.asarray(raw_map, dtype=np.float32)
            if raw_map.shape != (n, *self.map_shape):
                raise ScorerInputError(
                    f"expected anomaly_map (N, {', '.join(map(str, self.map_shape))}), got {raw_map.shape}"
                )
        if not (np.isfinite(raw_score).all() and (raw_map is None or np.isfinite(raw_map).all())):
            raise ScorerInputError("raw outputs contain NaN or infinite values")
        # The label compares raw scores: that is the definition, immune to float rounding near 0.5.
        label = np.where(raw_score >= self.image_threshold, ANOMALOUS, NORMAL).astype(object)
        return ScoredBatch(
            score=self.image_calibration.apply(raw_score),
            anomaly_map=None if raw_map is None else self.pixel_calibration.apply(raw_map),
            label=label,
        )
