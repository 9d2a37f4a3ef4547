"""Built-in demo dataset in the MVTec AD folder layout.

Three real texture photographs ship inside scikit-image (``skimage.data.brick()``,
``grass()`` and ``gravel()``: grayscale, 512x512).  This module turns one of them
into a small anomaly-detection dataset with exactly the folder layout of MVTec AD,
so the whole toolchain (training, export, serving) can be exercised without
downloading anything::

    <root>/<category>/train/good/000.png ...
    <root>/<category>/validation/good/val_000.png ...
    <root>/<category>/validation/<defect>/val_000.png ...      defects: scratch, hole, stain, foreign
    <root>/<category>/test/good/000.png ...
    <root>/<category>/test/<defect>/000.png ...
    <root>/<category>/ground_truth/<defect>/000_mask.png ...      masks of test/<defect>/000.png ...
    <root>/<category>/ground_truth/<defect>/val_000_mask.png ...  masks of validation/<defect>/val_000.png ...
    <root>/<category>/demo_manifest.json                    (parameters it was written with)

Masks are uint8 0/255, the same size as their image.  The validation set is an explicit
``validation/`` folder (see :func:`training.data.make_splits`: when it exists, it *is* the
validation split and ``test/`` stays whole), so the test split is a folder on disk that
anyone (for example a serving client) can evaluate on and reproduce the recorded test
metrics.

``n_test_good`` and ``n_per_defect`` are the *total* numbers of good / per-defect
evaluation images (validation and test together).  Per folder (``good`` and each defect
type) with ``n`` images, the first ``n_val`` generated images (indices ``0 .. n_val-1``)
go to ``validation/`` and the rest to ``test/``, where ``n_val`` follows the rounding
rule of :func:`training.data.make_splits`: ``round(n * validation_fraction)`` (Python
rounding), then at least one image on each side when ``n >= 2`` and the fraction is
positive, and ``0`` when ``n == 1`` (a lone image goes to test).  Names are numbered
from zero within each folder: generated index ``k < n_val`` is ``validation/.../val_<k>.png``
and generated index ``k >= n_val`` is ``test/.../<k - n_val>.png`` (three digits, more when
needed).  The ``val_`` prefix keeps validation stems distinct from test stems, because
the masks of both share ``ground_truth/<defect>/``.  No empty folder is written: with
``validation_fraction=0`` (or only single-image folders) there is no ``validation/`` at
all, and :func:`training.data.make_splits` then splits ``test/`` itself as for any
category without a ``validation/`` folder.

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

Everything is drawn from ``numpy.random.Generator`` streams derived from ``seed``
(one independent stream per image), so the same seed gives byte-identical files.  The
stream of an evaluation image depends only on its generated index, not on whether it
lands in ``validation/`` or ``test/``: version 1 of this generator (no ``validation/``
folder, everything in ``test/``) wrote exactly the same images.
The dataset is written into a temporary sibling folder and renamed into place at the
end; an interrupted run never leaves a half-written ``<root>/<category>``.  A dataset
written by another generator version (its ``demo_manifest.json`` says so) is replaced
the same way, even without ``overwrite``.

Command line::

    python -m training.demo_data --root data/demo --category brick
    kd-demo-data --help
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

__all__ = ["DEFECT_TYPES", "DEMO_CATEGORIES", "main", "write_demo_dataset"]

logger = logging.getLogger(__name__)

DEMO_CATEGORIES: tuple[str, ...] = ("brick", "grass", "gravel")
"""Available demo categories; the name picks the scikit-image source texture."""

DEFECT_TYPES: tuple[str, ...] = ("scratch", "hole", "stain", "foreign")
"""Synthetic defect types, in the order their folders are written."""

MANIFEST_NAME = "demo_manifest.json"
_GENERATOR = "training.demo_data"
# Version 2: explicit validation/ folder (validation_fraction).  Any other version on disk
# is regenerated, because its layout would silently change what make_splits calls "test".
_GENERATOR_VERSION = 2

# Gradient-map tints: grayscale 0 maps to the first RGB colour, 255 to the second.
_TINTS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "brick": ((45.0, 18.0, 12.0), (238.0, 152.0, 116.0)),
    "grass": ((18.0, 40.0, 12.0), (178.0, 226.0, 108.0)),
    "gravel": ((40.0, 34.0, 28.0), (222.0, 206.0, 180.0)),
}

_SOURCE_CROP = 256.0  # side of the source-texture square one image shows (before jitter)
_SUPERSAMPLE = 4  # shapes are rasterised at this factor and area-averaged -> soft coverage
_SPLIT_IDS = {"train": 0, "test_good": 1, "defect": 2}

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
) -> np.ndarray:
    """Random rotated/flipped square crop of ``source`` resampled to ``out_size``.

    The crop is warped at roughly the source resolution and then area-resized to
    ``out_size`` so that small output sizes are not aliased.
    """
    height, width = source.shape
    side = _SOURCE_CROP * rng.uniform(*side_range)
    angle = math.radians(rng.uniform(-max_angle, max_angle))
    flip_x = -1.0 if rng.random() < 0.5 else 1.0
    flip_y = -1.0 if rng.random() < 0.5 else 1.0
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


def _good_image(category: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A defect-free image: jittered crop of the category texture, tinted, uint8 RGB."""
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


def _apply_defect(
    rng: np.random.Generator, good: np.ndarray, category: str, defect: str
) -> tuple[np.ndarray, np.ndarray]:
    """Return (uint8 RGB image with the defect, uint8 0/255 mask)."""
    base = good.astype(np.float32)
    low, high = _AREA_LIMITS[defect]
    alpha = target = None
    for _ in range(100):  # rejection sampling on the mask area; deterministic given rng
        alpha, target = _DEFECT_FUNCS[defect](rng, base, category)
        fraction = float((alpha >= 0.5).mean())
        if low <= fraction <= high:
            break
    assert alpha is not None and target is not None
    mask = alpha >= 0.5
    weight = (alpha * mask)[..., None]
    blended = base * (1.0 - weight) + np.clip(target, 0.0, 255.0) * weight
    out = np.where(mask[..., None], np.clip(np.rint(blended), 0, 255), base).astype(np.uint8)
    if not mask.any():  # cannot happen with the area limits above; never write an empty mask
        raise RuntimeError(f"failed to draw a {defect} defect")
    return out, mask.astype(np.uint8) * 255


# --------------------------------------------------------------------------- writing
def _rng(seed: int, category: str, split: str, defect_index: int, index: int) -> np.random.Generator:
    entropy = [seed, DEMO_CATEGORIES.index(category), _SPLIT_IDS[split], defect_index, index]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _write_png(path: Path, array: np.ndarray) -> None:
    if array.ndim == 3:
        array = np.ascontiguousarray(array[..., ::-1])  # RGB -> BGR for OpenCV
    if not cv2.imwrite(str(path), array, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"could not write {path}")


def _image_names(count: int) -> list[str]:
    width = max(3, len(str(max(count - 1, 0))))
    return [f"{i:0{width}d}" for i in range(count)]


def _count_images(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())


def _validation_count(n: int, fraction: float) -> int:
    """How many of the ``n`` evaluation images of one folder go to ``validation/``.

    Mirrors the per-folder rule of :func:`training.data.make_splits`, so a demo dataset
    has the same split sizes as the stratified split of a category without ``validation/``.
    """
    n_val = round(n * fraction)
    if n >= 2 and fraction > 0:
        n_val = min(max(n_val, 1), n - 1)
    elif n < 2:
        n_val = 0
    return n_val


def _placement(n: int, fraction: float) -> list[tuple[str, str]]:
    """``(split, stem)`` for generated evaluation indices ``0 .. n-1``: validation first, then test."""
    n_val = _validation_count(n, fraction)
    return [("validation", f"val_{name}") for name in _image_names(n_val)] + [
        ("test", name) for name in _image_names(n - n_val)
    ]


def _eval_folders(params: Mapping) -> list[tuple[str, int]]:
    """``(folder, total image count)`` for ``good`` and every defect type."""
    return [("good", int(params["n_test_good"]))] + [(d, int(params["n_per_defect"])) for d in DEFECT_TYPES]


def _looks_complete(category_dir: Path, params: Mapping) -> bool:
    """True when ``category_dir`` has every folder of the demo layout ``params`` describes.

    Every expected folder must be non-empty and every anomalous image must have its mask;
    ``validation/<folder>`` is expected exactly where ``params`` put images in it (so
    with a positive ``validation_fraction`` a dataset without ``validation/`` is
    incomplete).  Counts are not compared, as before: a complete dataset written with
    other sizes is kept (with a warning), not treated as broken.
    """
    if _count_images(category_dir / "train" / "good") == 0:
        return False
    fraction = float(params.get("validation_fraction", 0.0))
    for folder, n in _eval_folders(params):
        n_val = _validation_count(n, fraction)
        for split, expected in (("validation", n_val), ("test", n - n_val)):
            image_dir = category_dir / split / folder
            if expected == 0:
                continue
            if _count_images(image_dir) == 0:
                return False
            if folder == "good":
                continue
            for image in image_dir.iterdir():
                mask = category_dir / "ground_truth" / folder / f"{image.stem}_mask.png"
                if image.suffix.lower() == ".png" and not mask.is_file():
                    return False
    return True


def _counts(category_dir: Path) -> dict[str, int]:
    """Image counts per folder, ``validation/*`` only when the dataset has that folder."""
    counts = {"train/good": _count_images(category_dir / "train" / "good")}
    splits = ("validation", "test") if (category_dir / "validation").is_dir() else ("test",)
    for split in splits:
        for folder in ("good",) + DEFECT_TYPES:
            counts[f"{split}/{folder}"] = _count_images(category_dir / split / folder)
    return counts


def _generate(target: Path, params: dict) -> None:
    category, size, seed = params["category"], params["image_size"], params["seed"]
    fraction = params["validation_fraction"]
    train_dir = target / "train" / "good"
    train_dir.mkdir(parents=True)
    for i, name in enumerate(_image_names(params["n_train"])):
        _write_png(train_dir / f"{name}.png", _good_image(category, _rng(seed, category, "train", 0, i), size))
    # The random stream of evaluation image i is keyed by its generated index only, not by
    # where it is placed, so the images are the same as those of generator version 1.
    # Folders are created on first use: an empty validation/<folder> would make
    # training.data.scan_validation fail.
    for i, (split, stem) in enumerate(_placement(params["n_test_good"], fraction)):
        image_dir = target / split / "good"
        image_dir.mkdir(parents=True, exist_ok=True)
        _write_png(image_dir / f"{stem}.png", _good_image(category, _rng(seed, category, "test_good", 0, i), size))
    for d, defect in enumerate(DEFECT_TYPES):
        mask_dir = target / "ground_truth" / defect
        mask_dir.mkdir(parents=True)
        for i, (split, stem) in enumerate(_placement(params["n_per_defect"], fraction)):
            image_dir = target / split / defect
            image_dir.mkdir(parents=True, exist_ok=True)
            rng = _rng(seed, category, "defect", d + 1, i)
            good = _good_image(category, rng, size)
            image, mask = _apply_defect(rng, good, category, defect)
            _write_png(image_dir / f"{stem}.png", image)
            _write_png(mask_dir / f"{stem}_mask.png", mask)
    manifest = {"generator": _GENERATOR, "version": _GENERATOR_VERSION, **params}
    (target / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _read_manifest(category_dir: Path) -> dict | None:
    try:
        return json.loads((category_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_stale(manifest: dict | None) -> bool:
    """True when ``manifest`` was written by this generator, but by another version of it."""
    return (
        isinstance(manifest, dict)
        and manifest.get("generator") == _GENERATOR
        and manifest.get("version") != _GENERATOR_VERSION
    )


def _layout_params(manifest: dict | None, fallback: dict) -> Mapping:
    """Parameters that describe the layout on disk: a current manifest's, else ``fallback``.

    A complete dataset written with other sizes must be judged by its own layout (it is
    kept, with a warning), not by the caller's request.
    """
    if (
        isinstance(manifest, dict)
        and manifest.get("generator") == _GENERATOR
        and manifest.get("version") == _GENERATOR_VERSION
        and all(isinstance(manifest.get(k), int) for k in ("n_test_good", "n_per_defect"))
        and isinstance(manifest.get("validation_fraction"), (int, float))
    ):
        return manifest
    return fallback


def _write_demo_dataset(
    root: Path,
    category: str,
    *,
    seed: int,
    image_size: int,
    n_train: int,
    n_test_good: int,
    n_per_defect: int,
    validation_fraction: float,
    overwrite: bool,
) -> tuple[Path, bool]:
    """Implementation of :func:`write_demo_dataset`; also returns whether an existing dataset was kept."""
    if category not in DEMO_CATEGORIES:
        raise ValueError(f"unknown demo category {category!r}; choose one of {', '.join(DEMO_CATEGORIES)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    for name, value in (("n_train", n_train), ("n_test_good", n_test_good), ("n_per_defect", n_per_defect)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float, np.floating)):
        raise TypeError(f"validation_fraction must be a number in [0, 1), got {validation_fraction!r}")
    if not 0.0 <= validation_fraction < 1.0:  # also rejects NaN
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")

    root = Path(root)
    target = root / category
    params = {
        "category": category,
        "seed": int(seed),
        "image_size": int(image_size),
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_per_defect": int(n_per_defect),
        "validation_fraction": float(validation_fraction),
    }
    replace = overwrite
    if target.exists() and not overwrite:
        manifest = _read_manifest(target)
        if _is_stale(manifest):
            # Written by an older (or newer) generator, e.g. a data/ folder from before the
            # validation/ folder existed: its test/ is not the test split any more, so keeping
            # it would be wrong, and refusing would break `make demo`.  Replace it atomically.
            logger.info(
                "%s was written by demo generator version %s (current: %d); regenerating it in place",
                target,
                manifest.get("version"),
                _GENERATOR_VERSION,
            )
            replace = True
        elif _looks_complete(target, _layout_params(manifest, params)):
            if manifest is not None and any(manifest.get(k) != v for k, v in params.items()):
                logger.warning(
                    "%s was written with different parameters (%s); keeping it. Use overwrite=True "
                    "(--overwrite) to regenerate.",
                    target,
                    ", ".join(f"{k}={manifest.get(k)}" for k in params),
                )
            logger.info("kept existing complete dataset %s", target)
            return target, True
        else:
            raise FileExistsError(
                f"{target} exists but is not a complete demo dataset; pass overwrite=True (--overwrite) to replace it"
            )

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{category}.partial-", dir=root))
    try:
        os.chmod(tmp, 0o755)
        _generate(tmp, params)
        if replace and target.exists():  # overwrite or stale: move the old one aside, swap in, delete it
            old = Path(tempfile.mkdtemp(prefix=f".{category}.old-", dir=root))
            os.replace(target, old / category)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp, target)
            except OSError:
                if _looks_complete(target, _layout_params(_read_manifest(target), params)):  # a concurrent run won
                    shutil.rmtree(tmp, ignore_errors=True)
                    return target, True
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote demo dataset %s", target)
    return target, False


def write_demo_dataset(
    root: Path,
    category: str = "brick",
    *,
    seed: int = 0,
    image_size: int = 256,
    n_train: int = 80,
    n_test_good: int = 24,
    n_per_defect: int = 12,
    validation_fraction: float = 0.4,
    overwrite: bool = False,
) -> Path:
    """Write the demo dataset for ``category`` under ``root`` in the MVTec AD layout.

    Args:
        root: Folder that receives ``<category>/``; created if missing.
        category: One of :data:`DEMO_CATEGORIES`; picks the scikit-image source texture.
        seed: Non-negative seed; the same seed (and parameters) gives byte-identical files.
        image_size: Side of the square images in pixels (>= 32).
        n_train: Number of defect-free training images (``train/good``).
        n_test_good: Total number of defect-free evaluation images, ``validation/good``
            and ``test/good`` together.
        n_per_defect: Total number of evaluation images per defect type in
            :data:`DEFECT_TYPES`, ``validation/<defect>`` and ``test/<defect>`` together.
        validation_fraction: Share of each evaluation folder written to ``validation/``
            instead of ``test/``, in ``[0, 1)``; rounded per folder as in
            :func:`training.data.make_splits` (see the module docstring).  ``0`` writes
            no ``validation/`` folder.
        overwrite: Replace an existing ``<root>/<category>``.  Without it an existing
            complete dataset is kept unchanged (logged; a warning when it was written
            with other parameters), a dataset written by another version of this
            generator is regenerated in place (logged), and an existing incomplete or
            foreign folder raises :class:`FileExistsError`.

    Returns:
        The category folder ``<root>/<category>``.

    Raises:
        ValueError: An unknown category or an out-of-range parameter (including a
            ``validation_fraction`` outside ``[0, 1)``).
        TypeError: A ``validation_fraction`` that is not a number.
        FileExistsError: ``<root>/<category>`` exists but is not a complete demo dataset.

    The dataset is generated in a temporary sibling folder (``<root>/.<category>.partial-*``)
    and renamed into place only when complete, so an interrupted run never leaves a
    half-written dataset behind (a hard kill can leave the hidden temporary folder).
    """
    path, _ = _write_demo_dataset(
        root,
        category,
        seed=seed,
        image_size=image_size,
        n_train=n_train,
        n_test_good=n_test_good,
        n_per_defect=n_per_defect,
        validation_fraction=validation_fraction,
        overwrite=overwrite,
    )
    return path


# --------------------------------------------------------------------------- CLI
def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kd-demo-data",
        description=(
            "Write a small anomaly-detection dataset in the MVTec AD folder layout, made from a "
            "texture photo that ships with scikit-image (no download). Good images are jittered "
            "crops of the texture; evaluation images add synthetic scratches, holes, stains and "
            "foreign-material patches with exact ground-truth masks. Evaluation images are split "
            "per folder into validation/ (named val_000.png ...) and test/, so test/ is the test split."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--root", type=Path, default=Path("data/demo"),
        help="folder that receives <category>/ (train/, validation/, test/, ground_truth/)",
    )
    parser.add_argument(
        "--category", choices=DEMO_CATEGORIES, default="brick",
        help="which scikit-image texture to use; also the category folder name",
    )
    parser.add_argument(
        "--seed", type=int, default=0,
        help="non-negative random seed; the same seed and options give byte-identical files",
    )
    parser.add_argument("--image-size", type=int, default=256, help="side of the square images in pixels (>= 32)")
    parser.add_argument("--n-train", type=int, default=80, help="number of defect-free training images (train/good)")
    parser.add_argument(
        "--n-test-good", type=int, default=24,
        help="total number of defect-free evaluation images (validation/good + test/good)",
    )
    parser.add_argument(
        "--n-per-defect", type=int, default=12,
        help=f"total number of evaluation images per defect type ({', '.join(DEFECT_TYPES)}), validation + test",
    )
    parser.add_argument(
        "--validation-fraction", type=float, default=0.4,
        help="share of each evaluation folder written to validation/ instead of test/, in [0, 1); rounded per "
        "folder, at least one image on each side when a folder has two or more; 0 writes no validation/",
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing <root>/<category>; without it a complete existing dataset is kept as is",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``kd-demo-data`` / ``python -m training.demo_data``)."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    start = time.perf_counter()
    try:
        path, kept = _write_demo_dataset(
            args.root,
            args.category,
            seed=args.seed,
            image_size=args.image_size,
            n_train=args.n_train,
            n_test_good=args.n_test_good,
            n_per_defect=args.n_per_defect,
            validation_fraction=args.validation_fraction,
            overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    counts = _counts(path)
    if kept:
        print(f"Kept existing dataset {path} (complete; pass --overwrite to regenerate).")
    else:
        print(f"Wrote demo dataset '{args.category}' to {path} in {elapsed:.1f} s.")
    for folder, count in counts.items():
        print(f"  {folder:<19} {count:4d} images")
    print(f"  {'total':<19} {sum(counts.values()):4d} images, masks in {path / 'ground_truth'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
