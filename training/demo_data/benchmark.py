"""Benchmark categories: other photos and other defect kinds than the demo's, to tell detectors apart.

The demo category (brick with scratches, holes, stains and foreign patches) is easy: every method reaches image
AUROC 1.0 on it. These categories are built the same way (photos that ship inside scikit-image, synthetic defects
with exact masks, the MVTec AD layout) but cover the kinds of data where detectors differ:

==========  =====================  ==========================================  ================================
category    kind                   source photo                                defects
==========  =====================  ==========================================  ================================
``stars``   sparse texture         ``hubble_deep_field``: a few small bright   ``streak`` (satellite trail),
                                   features on a dark, uniform ground          ``smudge`` (haze), ``spots``
``meadow``  stochastic texture     ``grass``                                   ``cutpaste``, ``blur``, ``tint``
``page``    periodic texture       ``page``: lines of printed text             ``cutpaste``, ``blur``, ``erased``
``coffee``  aligned object         ``coffee``: a cup on a saucer, centred      ``cutpaste``, ``erased``, ``tint``
``coins``   aligned object         ``coins``: a grid of coins                  ``cutpaste``, ``erased``, ``tint``
==========  =====================  ==========================================  ================================

Textures are random jittered crops (position, rotation, flips, scale, brightness; the page keeps its
orientation); objects are the whole photo
with a small jitter (a few percent of shift and scale, two degrees of rotation), as a camera over a fixture sees
them. None of the defect kinds is one the demo uses.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from training.demo_data.defects import _blob_coverage, _blur, _coverage_from_drawing, _warp_crop, draw_defect

#: ``name -> (kind, source photo, defects)``.
BENCHMARK_CATEGORIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "stars": ("sparse texture", "hubble_deep_field", ("streak", "smudge", "spots")),
    "meadow": ("stochastic texture", "grass", ("cutpaste", "blur", "tint")),
    "page": ("periodic texture", "page", ("cutpaste", "blur", "erased")),
    "coffee": ("aligned object", "coffee", ("cutpaste", "erased", "tint")),
    "coins": ("aligned object", "coins", ("cutpaste", "erased", "tint")),
}

# Source pixels one texture image shows (before jitter): the page photo is only 191 px tall.
_TEXTURE_SIDE = {"hubble_deep_field": 200.0, "grass": 256.0, "page": 120.0}

# Accepted mask area (fraction of the image) per defect kind; rejection sampling.
_AREA_LIMITS: dict[str, tuple[float, float]] = {
    "streak": (0.002, 0.04),
    "smudge": (0.01, 0.08),
    "spots": (0.001, 0.03),
    "cutpaste": (0.01, 0.09),
    "blur": (0.015, 0.09),
    "tint": (0.01, 0.09),
    "erased": (0.01, 0.09),
}


@functools.cache
def _source(name: str) -> np.ndarray:
    """The photo as read-only float32 RGB ``(H, W, 3)``."""
    import skimage.data  # local import: scikit-image is slow to import

    image = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = np.ascontiguousarray(image[..., :3])
    image.setflags(write=False)
    return image


def _object_crop(source: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """The whole photo (its central square, longer side cropped) with a small shift, scale and rotation."""
    height, width = source.shape[:2]
    side = min(height, width) * rng.uniform(0.97, 1.03)
    cx = width / 2 + rng.uniform(-0.03, 0.03) * side
    cy = height / 2 + rng.uniform(-0.03, 0.03) * side
    angle = rng.uniform(-2.0, 2.0)
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, size / side)
    matrix[:, 2] += (size / 2 - cx, size / 2 - cy)
    return cv2.warpAffine(source, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT_101)


def good_image(category: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A defect-free image of a benchmark category: uint8 RGB ``(size, size, 3)``."""
    kind, photo, _ = BENCHMARK_CATEGORIES[category]
    source = _source(photo)
    if kind == "aligned object":
        rgb = _object_crop(source, rng, size)
    else:
        # Printed text has an orientation: a mirrored or tilted line would be a defect, not a good page.
        upright = kind == "periodic texture"
        rgb = _warp_crop(source, rng, size, side_range=(0.9, 1.1), max_angle=1.5 if upright else 5.0,
                         base_side=_TEXTURE_SIDE[photo], flips=not upright)
    rgb = (rgb - 128.0) * rng.uniform(0.94, 1.06) + 128.0 + rng.uniform(-6.0, 6.0)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- defects
def _streak(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A straight thin bright trail across part of the image (a satellite, a hair, a light leak)."""
    size = image.shape[0]
    length = rng.uniform(0.3, 0.7) * size
    angle = rng.uniform(0.0, np.pi)
    mid = rng.uniform(0.25 * size, 0.75 * size, size=2)
    half = 0.5 * length * np.array([math.cos(angle), math.sin(angle)])
    width = rng.uniform(1.5, 3.0) * max(1.0, size / 256.0)

    def draw(canvas: np.ndarray, scale: float) -> None:
        p0, p1 = np.rint((mid - half) * scale).astype(int), np.rint((mid + half) * scale).astype(int)
        cv2.line(canvas, tuple(map(int, p0)), tuple(map(int, p1)), 255, thickness=max(1, round(width * scale)))

    target = image + (245.0 - image) * rng.uniform(0.7, 0.9)
    return _coverage_from_drawing(size, draw), target


def _smudge(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A soft bright haze (a fingerprint, condensation) over a blob."""
    size = image.shape[0]
    area = rng.uniform(0.015, 0.06)
    alpha = _blur(_blob_coverage(rng, size, area, irregularity=0.3), 0.15 * math.sqrt(area) * size)
    alpha = alpha / max(float(alpha.max()), 1e-6)
    haze = np.array([150.0, 140.0, 120.0], dtype=np.float32) * rng.uniform(0.6, 1.0)
    return alpha, image + haze


def _spots(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A tight cluster of small coloured dots (hot pixels, dust) where the ground should be plain."""
    size = image.shape[0]
    px = max(1.0, size / 256.0)
    center = rng.uniform(0.2 * size, 0.8 * size, size=2)
    dots = [(center + rng.normal(0.0, 0.05 * size, size=2), rng.uniform(2.0, 4.0) * px)
            for _ in range(int(rng.integers(4, 9)))]

    def draw(canvas: np.ndarray, scale: float) -> None:
        for p, r in dots:
            cv2.circle(canvas, tuple(int(v) for v in np.rint(p * scale)), max(1, round(r * scale)), 255, -1)

    colour = np.array([[255.0, 60.0, 40.0], [60.0, 255.0, 80.0], [70.0, 110.0, 255.0]])[int(rng.integers(3))]
    return _coverage_from_drawing(size, draw), np.broadcast_to(colour.astype(np.float32), image.shape).copy()


def _cutpaste(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A patch of the image itself, taken elsewhere, turned and rescaled (a misplaced or mis-assembled part)."""
    size = image.shape[0]
    angle = rng.uniform(60.0, 300.0)
    scale = rng.uniform(0.6, 0.85)
    shift = rng.uniform(-0.3, 0.3, size=2) * size
    matrix = cv2.getRotationMatrix2D((size / 2 + shift[0], size / 2 + shift[1]), angle, scale)
    target = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    alpha = _blur(_blob_coverage(rng, size, rng.uniform(0.02, 0.07), irregularity=0.3), 0.6 * max(1.0, size / 256))
    return alpha, target


def _defocus(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A region out of focus (a lifted part, a smear of grease on the lens)."""
    size = image.shape[0]
    target = _blur(image, rng.uniform(3.0, 5.0) * max(1.0, size / 256.0))
    alpha = _blur(_blob_coverage(rng, size, rng.uniform(0.025, 0.08), irregularity=0.25), max(0.6, size / 256.0))
    return alpha, target


def _tint(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A region of the wrong colour (a wrong material, discolouration): the channels rotated, brightness kept."""
    size = image.shape[0]
    order = [[1, 2, 0], [2, 0, 1]][int(rng.integers(2))]
    shift = np.array([40.0, -25.0, 35.0], dtype=np.float32) * rng.choice([-1.0, 1.0])
    target = 0.35 * image + 0.65 * image[..., order] + shift
    alpha = _blur(_blob_coverage(rng, size, rng.uniform(0.02, 0.07), irregularity=0.3), max(0.6, size / 256.0))
    return alpha, target


def _erased(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A region filled with the image's background colour (a missing part, missing print)."""
    size = image.shape[0]
    background = np.median(image.reshape(-1, 3), axis=0).astype(np.float32)
    noise = rng.normal(0.0, 2.0, size=image.shape).astype(np.float32)
    alpha = _blur(_blob_coverage(rng, size, rng.uniform(0.02, 0.07), irregularity=0.3), max(0.6, size / 256.0))
    return alpha, background + noise


_DEFECTS = {"streak": _streak, "smudge": _smudge, "spots": _spots, "cutpaste": _cutpaste, "blur": _defocus,
            "tint": _tint, "erased": _erased}


def apply_defect(rng: np.random.Generator, good: np.ndarray, category: str, defect: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Draws one of the category's ``defect`` kinds onto ``good`` (uint8 RGB); returns the image and its 0/255 mask.

    Raises:
        ValueError: ``defect`` is not one of the category's.
    """
    if defect not in BENCHMARK_CATEGORIES[category][2]:
        raise ValueError(f"category {category!r} has the defects {BENCHMARK_CATEGORIES[category][2]}, not {defect!r}")
    return draw_defect(rng, good, _DEFECTS[defect], _AREA_LIMITS[defect], defect)
