"""A high-resolution inspection category: large frames with defects a few dozen pixels across.

Inspection cameras take 4-20 megapixel frames in which a defect covers a few dozen pixels. ``panel`` imitates that
at a size this machine can train on: 1024 x 1024 frames of the demo's brick texture (a crop of the demo photo
scaled to the frame, each image its own crop, tilt and tint) with one of three small defects, 20-60 px across:

==========  ==============================================================================================
``spot``    a round stain of another colour, 20-60 px across
``scratch`` a thin bright line, 30-60 px long and 2-3 px wide
``chip``    an irregular patch of the wall's median colour (a chipped-off piece), 20-50 px across
==========  ==============================================================================================

Resized whole to a 256 px model input, a defect shrinks to 5-15 px (a scratch to under a pixel wide): that is
what patch training (``kd-train --patches-per-row 4 --patches-per-column 4``) is for.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from training.demo_data.defects import _blob_coverage, _blur, _coverage_from_drawing, draw_defect
from training.demo_data.defects import good_image as demo_good_image

#: ``name -> (kind, defects)``.
HIGHRES_CATEGORIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "panel": ("high-resolution texture", ("spot", "scratch", "chip")),
}
#: Frame side the category is meant for (``kd-demo-data --image-size``; the writer takes any size).
FRAME_SIDE = 1024


def good_image(category: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A defect-free frame: the demo's brick texture at ``size`` (uint8 RGB ``(size, size, 3)``)."""
    if category not in HIGHRES_CATEGORIES:
        raise ValueError(f"unknown high-resolution category {category!r}")
    return demo_good_image("brick", rng, size)


def _px(size: int) -> float:
    """Pixels of a 1024 px frame in a frame of ``size``: defects keep their share of the frame at other sizes."""
    return size / FRAME_SIDE


def _spot(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    radius = rng.uniform(10.0, 30.0) * _px(size)
    center = rng.uniform(0.1 * size, 0.9 * size, size=2)

    def draw(canvas: np.ndarray, scale: float) -> None:
        cv2.circle(canvas, tuple(int(v) for v in np.rint(center * scale)), max(1, round(radius * scale)), 255, -1)

    colour = np.array([[40.0, 40.0, 40.0], [200.0, 190.0, 60.0], [60.0, 90.0, 160.0]])[int(rng.integers(3))]
    return _coverage_from_drawing(size, draw), np.broadcast_to(colour.astype(np.float32), image.shape).copy()


def _scratch(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    length = rng.uniform(30.0, 60.0) * _px(size)
    angle = rng.uniform(0.0, math.pi)
    mid = rng.uniform(0.1 * size, 0.9 * size, size=2)
    half = 0.5 * length * np.array([math.cos(angle), math.sin(angle)])
    width = rng.uniform(2.0, 3.0) * _px(size)

    def draw(canvas: np.ndarray, scale: float) -> None:
        p0, p1 = np.rint((mid - half) * scale).astype(int), np.rint((mid + half) * scale).astype(int)
        cv2.line(canvas, tuple(map(int, p0)), tuple(map(int, p1)), 255, thickness=max(1, round(width * scale)))

    return _coverage_from_drawing(size, draw), image + (240.0 - image) * rng.uniform(0.75, 0.9)


def _chip(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    across = rng.uniform(20.0, 50.0) * _px(size)
    alpha = _blur(_blob_coverage(rng, size, math.pi * (across / 2) ** 2 / size**2, irregularity=0.35), 0.6 * _px(size))
    background = np.median(image.reshape(-1, 3), axis=0).astype(np.float32) * 1.15
    return alpha, background + rng.normal(0.0, 3.0, size=image.shape).astype(np.float32)


_DEFECTS = {"spot": _spot, "scratch": _scratch, "chip": _chip}
#: Accepted mask area per defect kind, as a fraction of a 1024 px frame (rejection sampling).
_AREA_LIMITS: dict[str, tuple[float, float]] = {
    "spot": (math.pi * 9**2 / FRAME_SIDE**2, math.pi * 31**2 / FRAME_SIDE**2),
    "scratch": (25 * 1.5 / FRAME_SIDE**2, 65 * 4 / FRAME_SIDE**2),
    "chip": (math.pi * 8**2 / FRAME_SIDE**2, math.pi * 27**2 / FRAME_SIDE**2),
}


def apply_defect(rng: np.random.Generator, good: np.ndarray, category: str, defect: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Draws one ``defect`` onto ``good``; returns the image and its 0/255 mask.

    Raises:
        ValueError: ``defect`` is not one of the category's.
    """
    if defect not in HIGHRES_CATEGORIES[category][1]:
        raise ValueError(f"category {category!r} has the defects {HIGHRES_CATEGORIES[category][1]}, not {defect!r}")
    return draw_defect(rng, good, _DEFECTS[defect], _AREA_LIMITS[defect], defect)
