"""The plot renderer of the time-series family: a signal window drawn as the image its vision teacher reads.

One renderer for training and serving (as :mod:`kdcore.imageio` is one image codec): the dataset writer draws the
plots with it and a server-side step will draw the served teacher's input with it, so the teacher sees exactly
what it was trained on. Deterministic (OpenCV's integer line drawing, no GUI backend, no fonts) and fast (0.5 ms a
256 px window of noise on this machine). Each lead gets a horizontal band of its own, the value axis fixed (not scaled
per window: a scaled plot would hide an amplitude drop or a flat line), values outside it clipped to the band.

Standard library, numpy and OpenCV only, like the rest of ``kdcore``'s shipped modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class PlotSpec:
    """How a window is drawn."""

    size: int = 256
    """Side of the square RGB image, pixels."""
    low: float = -2.0
    """Value at the bottom of each lead's band (mV)."""
    high: float = 2.0
    """Value at the top of each lead's band (mV)."""
    thickness: int = 1
    """Line width, pixels."""


#: Line colours (RGB) of the leads, in order; a third lead and beyond reuse them.
COLOURS = ((0, 0, 0), (200, 30, 30), (30, 30, 200))


def render_plot(signal: np.ndarray, spec: PlotSpec = PlotSpec()) -> np.ndarray:
    """One window ``(T, C)`` as a white ``(size, size, 3)`` uint8 RGB image with one line per lead.

    Raises:
        ValueError: Not ``(T, C)`` with ``T >= 2``, or non-finite values.
    """
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"a window is (steps >= 2, leads >= 1), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("the window holds NaN or infinite values")
    steps, leads = x.shape
    image = np.full((spec.size, spec.size, 3), 255, np.uint8)
    band = spec.size / leads
    columns = np.round(np.linspace(0, spec.size - 1, steps)).astype(np.int32)
    span = spec.high - spec.low
    for lead in range(leads):
        level = np.clip((x[:, lead] - spec.low) / span, 0.0, 1.0)
        top, bottom = lead * band, (lead + 1) * band - 1
        rows = np.round(bottom - level * (bottom - top)).astype(np.int32)
        points = np.stack([columns, rows], 1).reshape(-1, 1, 2)
        cv2.polylines(image, [points], False, COLOURS[lead % len(COLOURS)], spec.thickness, cv2.LINE_8)
    return image


def render_plots(signals: np.ndarray, spec: PlotSpec = PlotSpec()) -> np.ndarray:
    """Windows ``(N, T, C)`` as ``(N, size, size, 3)`` uint8 images."""
    return np.stack([render_plot(s, spec) for s in np.asarray(signals)]) if len(signals) else \
        np.zeros((0, spec.size, spec.size, 3), np.uint8)
