"""Rendering the demo images: textured good images and the four synthetic defects with their exact masks.

Three real texture photographs ship inside scikit-image (``skimage.data.brick()``, ``grass()`` and
``gravel()``: grayscale, 512x512); the category name picks one.

Every image is a random crop of the source texture (random position, small rotation,
random flips, scale jitter 0.9-1.1, mild brightness/contrast jitter), resized to
``image_size`` and colour-mapped with a fixed tint per category (brick: terracotta,
grass: green, gravel: greyish brown).  Good images contain only these nuisance
variations.  Anomalous images get one synthetic defect:

* ``scratch``: one to three thin (2-5 px) bright or dark curved strokes (cubic Bezier).
* ``hole``: a dark irregular blob whose core is darker than its rim (a pit).
* ``stain``: a smooth-edged blob with a colour shift (oil, rust or bleach).
* ``foreign``: an irregular patch cut from a *different* scikit-image texture.

Masks are exact: the defect is blended with a soft coverage alpha, the mask is
``alpha >= 0.5`` and the blend is applied *only* inside the mask, so the pixels
that differ from the defect-free image are exactly the mask pixels (up to the rare
pixel where the defect colour happens to round to the original value).  Defects
cover roughly 0.6-9 % of the image.

Everything is drawn from the ``numpy.random.Generator`` it is given, so the same stream gives the same pixels.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

DEMO_CATEGORIES: tuple[str, ...] = ("brick", "grass", "gravel")
"""Available demo categories; the name picks the scikit-image source texture."""

DEFECT_TYPES: tuple[str, ...] = ("scratch", "hole", "stain", "foreign")
"""Synthetic defect types, in the order their folders are written."""

# Gradient-map tints: grayscale 0 maps to the first RGB colour, 255 to the second.
_TINTS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "brick": ((45.0, 18.0, 12.0), (238.0, 152.0, 116.0)),
    "grass": ((18.0, 40.0, 12.0), (178.0, 226.0, 108.0)),
    "gravel": ((40.0, 34.0, 28.0), (222.0, 206.0, 180.0)),
}

_SOURCE_CROP = 256.0  # side of the source-texture square one image shows (before jitter)
_SUPERSAMPLE = 4  # shapes are rasterised at this factor and area-averaged -> soft coverage

# Accepted mask area (fraction of the image) per defect type; rejection sampling.
_AREA_LIMITS: dict[str, tuple[float, float]] = {
    "scratch": (0.006, 0.05),
    "hole": (0.008, 0.08),
    "stain": (0.01, 0.09),
    "foreign": (0.01, 0.09),
}


# --------------------------------------------------------------------------- sources
@functools.cache
def _source_texture(name: str) -> np.ndarray:
    """Return the grayscale source texture of a category as read-only float32 (H, W)."""
    import skimage.data  # local import: scikit-image is slow to import

    if name not in DEMO_CATEGORIES:
        raise ValueError(f"unknown demo category {name!r}; choose one of {', '.join(DEMO_CATEGORIES)}")
    image = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
    if image.ndim == 3:  # defensive: future scikit-image versions might ship RGB
        image = image[..., :3].mean(axis=2)
    image.setflags(write=False)
    return image


def _warp_crop(
    source: np.ndarray,
    rng: np.random.Generator,
    out_size: int,
    *,
    side_range: tuple[float, float],
    max_angle: float,
    base_side: float = _SOURCE_CROP,
    flips: bool = True,
) -> np.ndarray:
    """Random rotated/flipped square crop of ``source`` (grayscale or RGB) resampled to ``out_size``.

    The crop shows about ``base_side`` source pixels (times ``side_range``); it is warped at roughly the source
    resolution and then area-resized to ``out_size`` so that small output sizes are not aliased. ``flips=False``
    keeps the orientation (printed text must not be mirrored); the stream is consumed the same either way.
    """
    height, width = source.shape[:2]
    side = base_side * rng.uniform(*side_range)
    angle = math.radians(rng.uniform(-max_angle, max_angle))
    flip_x = -1.0 if rng.random() < 0.5 and flips else 1.0
    flip_y = -1.0 if rng.random() < 0.5 and flips else 1.0
    half_extent = 0.5 * side * (abs(math.cos(angle)) + abs(math.sin(angle)))
    half_extent = min(half_extent, 0.5 * min(height, width) - 1.0)
    cx = rng.uniform(half_extent, width - half_extent)
    cy = rng.uniform(half_extent, height - half_extent)

    work = max(out_size, round(side))
    step = side / work  # source pixels per work pixel
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    # dst (u, v) -> centred p = ((u + 0.5) - work / 2) * step, flipped, rotated, + centre.
    a11, a12 = cos_a * flip_x * step, -sin_a * flip_y * step
    a21, a22 = sin_a * flip_x * step, cos_a * flip_y * step
    offset_u = 0.5 - work / 2.0
    matrix = np.array(
        [
            [a11, a12, a11 * offset_u + a12 * offset_u + cx - 0.5],
            [a21, a22, a21 * offset_u + a22 * offset_u + cy - 0.5],
        ],
        dtype=np.float64,
    )
    crop = cv2.warpAffine(
        source,
        matrix,
        (work, work),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    if work != out_size:
        crop = cv2.resize(crop, (out_size, out_size), interpolation=cv2.INTER_AREA)
    return crop


def _tint(gray: np.ndarray, category: str, other: str | None = None, mix: float = 0.0) -> np.ndarray:
    """Gradient-map a grayscale float image (0..255) to float RGB with the category tint.

    With ``other`` the tint is interpolated towards that category's tint by ``mix`` (0..1).
    """
    dark, light = (np.asarray(c, dtype=np.float32) for c in _TINTS[category])
    if other is not None and mix > 0.0:
        other_dark, other_light = (np.asarray(c, dtype=np.float32) for c in _TINTS[other])
        dark = dark + (other_dark - dark) * mix
        light = light + (other_light - light) * mix
    t = np.clip(gray, 0.0, 255.0)[..., None] / 255.0
    return dark + (light - dark) * t


def good_image(category: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A defect-free image: a jittered crop of the category's texture, tinted.

    Args:
        category: One of :data:`DEMO_CATEGORIES`.
        rng: The image's own random stream (the same stream gives the same image).
        size: Side of the square image in pixels.

    Returns:
        uint8 RGB ``(size, size, 3)``.
    """
    gray = _warp_crop(_source_texture(category), rng, size, side_range=(0.9, 1.1), max_angle=5.0)
    contrast = rng.uniform(0.92, 1.08)
    brightness = rng.uniform(-8.0, 8.0)
    gray = (gray - 128.0) * contrast + 128.0 + brightness
    return np.clip(np.rint(_tint(gray, category)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- shapes
def _coverage_from_drawing(size: int, draw) -> np.ndarray:
    """Rasterise ``draw(canvas, scale)`` supersampled and return float32 coverage in [0, 1]."""
    big = size * _SUPERSAMPLE
    canvas = np.zeros((big, big), dtype=np.uint8)
    draw(canvas, float(_SUPERSAMPLE))
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _blob_polygon(
    rng: np.random.Generator, center: np.ndarray, radius: float, irregularity: float, n: int = 120
) -> np.ndarray:
    """Closed irregular blob outline (n, 2) in pixel coordinates (x, y)."""
    theta = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 7):
        r += rng.normal(0.0, irregularity / k) * np.cos(k * theta + rng.uniform(0.0, 2.0 * np.pi))
    r = np.clip(r, 0.35, None)
    aspect = rng.uniform(0.5, 1.0)
    x = r * np.cos(theta) * radius / math.sqrt(aspect)
    y = r * np.sin(theta) * radius * math.sqrt(aspect)
    phi = rng.uniform(0.0, np.pi)
    xr = x * math.cos(phi) - y * math.sin(phi)
    yr = x * math.sin(phi) + y * math.cos(phi)
    return np.stack([xr, yr], axis=1) + center


def _blob_coverage(rng: np.random.Generator, size: int, area_fraction: float, irregularity: float) -> np.ndarray:
    radius = math.sqrt(area_fraction * size * size / math.pi)
    center = rng.uniform(0.18 * size, 0.82 * size, size=2)
    polygon = _blob_polygon(rng, center, radius, irregularity)

    def draw(canvas: np.ndarray, scale: float) -> None:
        pts = np.rint(polygon * scale).astype(np.int32)
        cv2.fillPoly(canvas, [pts], 255, lineType=cv2.LINE_8)

    return _coverage_from_drawing(size, draw)


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray, n: int = 80) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _blur(alpha: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return alpha
    return cv2.GaussianBlur(alpha, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


# --------------------------------------------------------------------------- defects
def _scratch(rng: np.random.Generator, image: np.ndarray, category: str) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    px = max(1.0, size / 256.0)
    n_strokes = int(rng.choice([1, 1, 2, 3]))
    strokes = []
    anchor = rng.uniform(0.2 * size, 0.8 * size, size=2)
    base_angle = rng.uniform(0.0, np.pi)
    for _ in range(n_strokes):
        length = rng.uniform(0.3, 0.75) * size
        angle = base_angle + rng.normal(0.0, 0.25)
        direction = np.array([math.cos(angle), math.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        start = anchor + rng.normal(0.0, 0.06 * size, size=2) - 0.5 * length * direction
        p0, p3 = start, start + length * direction
        p1 = start + length / 3 * direction + rng.normal(0.0, 0.15 * length) * normal
        p2 = start + 2 * length / 3 * direction + rng.normal(0.0, 0.15 * length) * normal
        strokes.append((_bezier(p0, p1, p2, p3), rng.uniform(2.0, 5.0) * px))

    def draw(canvas: np.ndarray, scale: float) -> None:
        for curve, width in strokes:
            pts = np.rint(curve * scale).astype(np.int32)
            cv2.polylines(canvas, [pts], False, 255, thickness=max(1, round(width * scale)), lineType=cv2.LINE_8)

    alpha = _coverage_from_drawing(size, draw)
    if rng.random() < 0.5:  # bright scratch: exposed, reflective material
        target = image + (250.0 - image) * rng.uniform(0.65, 0.85)
    else:  # dark scratch: a groove
        target = image * rng.uniform(0.2, 0.35)
    return alpha, target


def _hole(rng: np.random.Generator, image: np.ndarray, category: str) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    alpha = _blob_coverage(rng, size, rng.uniform(0.01, 0.05), irregularity=0.35)
    alpha = _blur(alpha, max(0.6, 0.8 * size / 256.0))
    inside = (alpha >= 0.5).astype(np.uint8)
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    depth = depth / max(float(depth.max()), 1e-6)
    factor = (0.5 - 0.38 * depth**0.6)[..., None]
    smooth = _blur(image, max(1.0, 2.0 * size / 256.0))
    target = (0.5 * image + 0.5 * smooth) * factor * np.array([1.0, 0.96, 0.92], dtype=np.float32)
    return alpha, target


def _stain(rng: np.random.Generator, image: np.ndarray, category: str) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    area = rng.uniform(0.02, 0.08)
    coverage = _blob_coverage(rng, size, area, irregularity=0.25)
    radius = math.sqrt(area * size * size / math.pi)
    alpha = _blur(coverage, 0.25 * radius)
    alpha = alpha / max(float(alpha.max()), 1e-6)
    luminance = image.mean(axis=2, keepdims=True)
    kind = int(rng.integers(3))
    if kind == 0:  # oil: darker, slightly bluish
        target = image * np.array([0.42, 0.44, 0.52], dtype=np.float32)
    elif kind == 1:  # rust: orange-brown following the texture's shading
        rust = np.array([175.0, 82.0, 28.0], dtype=np.float32)
        target = 0.25 * image + 0.75 * rust * (luminance / max(float(luminance.mean()), 1.0))
    else:  # bleach / dried residue: pale and washed out
        target = 0.45 * image + 0.55 * np.array([238.0, 234.0, 220.0], dtype=np.float32)
    return alpha, target


def _foreign(rng: np.random.Generator, image: np.ndarray, category: str) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    others = [c for c in DEMO_CATEGORIES if c != category]
    other = others[int(rng.integers(len(others)))]
    gray = _warp_crop(_source_texture(other), rng, size, side_range=(0.7, 1.4), max_angle=180.0)
    gray = (gray - 128.0) * rng.uniform(0.9, 1.2) + 128.0 + rng.uniform(-15.0, 15.0)
    # Colour somewhere between this category's tint and the foreign texture's own tint:
    # the patch always differs in texture and at least moderately in colour.
    target = _tint(gray, category, other, mix=rng.uniform(0.4, 1.0))
    alpha = _blob_coverage(rng, size, rng.uniform(0.015, 0.08), irregularity=0.45)
    alpha = _blur(alpha, max(0.5, 0.6 * size / 256.0))
    return alpha, target


_DEFECT_FUNCS = {"scratch": _scratch, "hole": _hole, "stain": _stain, "foreign": _foreign}


def draw_defect(rng: np.random.Generator, good: np.ndarray, draw, limits: tuple[float, float],
                name: str) -> tuple[np.ndarray, np.ndarray]:
    """Draws a defect with ``draw(rng, base) -> (alpha, target)`` until its mask covers a fraction of the image in
    ``limits``, then blends ``target`` in only inside the mask (``alpha >= 0.5``), so the mask is exact.

    Returns:
        The uint8 RGB image with the defect and its uint8 0/255 mask ``(S, S)``.
    """
    base = good.astype(np.float32)
    low, high = limits
    alpha = target = None
    for _ in range(100):  # rejection sampling on the mask area; deterministic given rng
        alpha, target = draw(rng, base)
        fraction = float((alpha >= 0.5).mean())
        if low <= fraction <= high:
            break
    assert alpha is not None and target is not None
    mask = alpha >= 0.5
    weight = (alpha * mask)[..., None]
    blended = base * (1.0 - weight) + np.clip(target, 0.0, 255.0) * weight
    out = np.where(mask[..., None], np.clip(np.rint(blended), 0, 255), base).astype(np.uint8)
    if not mask.any():  # cannot happen with sensible area limits; never write an empty mask
        raise RuntimeError(f"failed to draw a {name} defect")
    return out, mask.astype(np.uint8) * 255


def apply_defect(
    rng: np.random.Generator, good: np.ndarray, category: str, defect: str
) -> tuple[np.ndarray, np.ndarray]:
    """Draws one ``defect`` onto ``good``.

    Args:
        rng: The random stream the good image was drawn from, continued.
        good: uint8 RGB ``(S, S, 3)`` from :func:`good_image`.
        category: The image's category (``foreign`` patches come from another one).
        defect: One of :data:`DEFECT_TYPES`.

    Returns:
        The uint8 RGB image with the defect and its uint8 0/255 mask ``(S, S)``.
    """
    return draw_defect(rng, good, lambda r, base: _DEFECT_FUNCS[defect](r, base, category), _AREA_LIMITS[defect],
                       defect)
