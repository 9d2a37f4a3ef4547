"""Anomaly heatmaps for the scoring client: overlays at the image's own resolution and contact sheets.

Needs only numpy, OpenCV (``opencv-python-headless``) and the core's contract and regions (:mod:`kdcore.contract`:
the label words and the decision line; :mod:`kdcore.regions`: numpy and OpenCV), so it runs in the slim client
image beside ``tritonclient``; it never imports torch, matplotlib or the training code.

An overlay (:func:`render_heatmap`) is the image with the anomaly map blended over it, the outline of the region
at or above the pixel threshold, the box of every anomalous region (:mod:`kdcore.regions`) with its peak score, a
box with the image score and label, and a colour scale bar in a strip below the image. Colours use a fixed 0..1 range, so the same colour means the same calibrated score on every image.
A contact sheet (:func:`contact_sheet`) tiles rendered overlays with captions, e.g. the most anomalous images.

Example:
    >>> overlay = render_heatmap(image, anomaly_map, score=0.93, label="anomalous", name="img_012.png")
    >>> overlay.shape == (image.shape[0] + legend_height(*image.shape[:2]), image.shape[1], 3)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kdcore.contract import ANOMALOUS, DECISION, LABELS
from kdcore.regions import Region, anomalous_regions, regions_in_image

__all__ = [
    "ANOMALOUS_RGB",
    "CONTOUR_RGB",
    "NORMAL_RGB",
    "PIXEL_THRESHOLD",
    "REGION_RGB",
    "SheetLayout",
    "contact_sheet",
    "contact_sheet_layout",
    "legend_height",
    "render_heatmap",
    "write_contact_sheet",
    "write_heatmap",
]

PIXEL_THRESHOLD = DECISION
"""The calibrated pixel decision threshold: map values at or above it are anomalous."""

# Turbo is perceptually smoother than Jet and, like it, never produces magenta, so the outline stays distinct.
COLORMAP = cv2.COLORMAP_TURBO
CONTOUR_RGB = (255, 0, 255)
#: The regions' boxes and their score labels: white, which neither the colour map nor the label boxes use.
REGION_RGB = (255, 255, 255)
#: Regions whose peak score is written beside their box, strongest first (the others get the box alone).
MAX_REGION_LABELS = 10
ANOMALOUS_RGB = (200, 30, 30)
NORMAL_RGB = (20, 130, 50)
_TEXT_RGB = (255, 255, 255)
_STRIP_RGB = (24, 24, 24)
_STRIP_TEXT_RGB = (235, 235, 235)
_SHEET_RGB = (48, 48, 48)
_TILE_RGB = (12, 12, 12)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
# Below about 9 px Hershey glyphs blur together; 6 px is the floor when a tiny image leaves no other choice.
_MIN_TEXT_PX = 9
_FLOOR_TEXT_PX = 6
_LINE_GAP = 0.6  # Space between lines, as a fraction of the text height.
_JPEG_QUALITY = 95
_MIN_CELL = 32

# --------------------------------------------------------------------------------------------------- validation


def _as_rgb(image: Any, what: str = "input image") -> np.ndarray:
    """Checks an image and returns it as a C-contiguous RGB uint8 array (grayscale is expanded)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (0..255), got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        rgb = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2RGB) if image.size else image
    elif image.ndim == 3 and image.shape[2] == 3:
        rgb = image
    else:
        raise ValueError(f"{what} must be RGB (H, W, 3) or grayscale (H, W), got shape {image.shape}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {image.shape})")
    return np.ascontiguousarray(rgb)


def _as_map(anomaly_map: Any) -> np.ndarray:
    """Checks an anomaly map and returns it as a 2-D float32 array; a leading channel/batch axis of 1 is dropped."""
    if not isinstance(anomaly_map, np.ndarray):
        raise TypeError(f"anomaly_map must be a numpy array, got {type(anomaly_map).__name__}")
    if not (np.issubdtype(anomaly_map.dtype, np.floating) or np.issubdtype(anomaly_map.dtype, np.integer)
            or anomaly_map.dtype == np.bool_):
        raise ValueError(f"anomaly_map must be real-valued, got dtype {anomaly_map.dtype}")
    original_shape = anomaly_map.shape
    while anomaly_map.ndim > 2 and anomaly_map.shape[0] == 1:
        anomaly_map = anomaly_map[0]
    if anomaly_map.ndim != 2:
        raise ValueError(f"anomaly_map must be (h, w) or (1, h, w), got shape {original_shape}")
    if anomaly_map.size == 0:
        raise ValueError(f"anomaly_map is empty (shape {original_shape})")
    # Always a copy: the map is clipped in place later, which must not touch the caller's array; and float32
    # because cv2.resize takes no float16.
    result = np.array(anomaly_map, dtype=np.float32, order="C")
    if not np.isfinite(result).all():
        bad = int(np.count_nonzero(~np.isfinite(result)))
        raise ValueError(f"anomaly_map has {bad} NaN or infinite value(s); the model output is broken")
    return result


def _unit_float(value: Any, what: str) -> float:
    """Returns ``value`` as a float; raises TypeError for a non-number, ValueError outside [0, 1] or NaN."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number in [0, 1], got {value!r}")
    result = float(value)
    if not (math.isfinite(result) and 0.0 <= result <= 1.0):
        raise ValueError(f"{what} must be in [0, 1], got {result}")
    return result


def _as_label(label: Any) -> str:
    if not isinstance(label, str) or label.strip().lower() not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    return label.strip().lower()


# -------------------------------------------------------------------------------------------------------- text


def _font_scale(text_px: float) -> float:
    """The Hershey font scale whose capital letters are ``text_px`` pixels tall."""
    (_, height), _ = cv2.getTextSize("A", _FONT, 1.0, 1)
    return text_px / height


def _thickness(text_px: float) -> int:
    return max(1, round(text_px / 12))


def _text_size(text: str, text_px: float) -> tuple[int, int]:
    """Width and cap height in pixels of ``text`` drawn ``text_px`` tall."""
    (width, height), _ = cv2.getTextSize(text, _FONT, _font_scale(text_px), _thickness(text_px))
    return width, height


def _fit_text_px(lines: Sequence[str], text_px: float, max_width: int) -> float:
    """The largest size up to ``text_px`` at which every line fits in ``max_width``."""
    widest = max(_text_size(line, text_px)[0] for line in lines)
    if widest <= max_width:
        return text_px
    return text_px * max_width / widest


def _truncate(text: str, text_px: float, max_width: int) -> str:
    """``text`` shortened with '...' so it fits ``max_width`` at ``text_px`` (Hershey fonts have no ellipsis)."""
    if _text_size(text, text_px)[0] <= max_width:
        return text
    for end in range(len(text) - 1, 0, -1):
        candidate = text[:end].rstrip() + "..."
        if _text_size(candidate, text_px)[0] <= max_width:
            return candidate
    return ""


def _put_text(canvas: np.ndarray, text: str, left: int, baseline: int, text_px: float, rgb: tuple[int, ...]) -> None:
    cv2.putText(canvas, text, (left, baseline), _FONT, _font_scale(text_px), rgb, _thickness(text_px), cv2.LINE_AA)


def _image_text_px(height: int, width: int) -> float:
    """Text height for an image: ~2.5% of its geometric mean size, so a 4000x3000 photo and a 64 px crop both read."""
    text_px = round(0.025 * math.sqrt(height * width))
    # The cap keeps text on small or very thin images from covering most of them.
    cap = max(_MIN_TEXT_PX, round(0.12 * min(height, width)))
    return float(min(max(text_px, _MIN_TEXT_PX), cap))


# ----------------------------------------------------------------------------------------------------- overlay


def _colorize(values: np.ndarray) -> np.ndarray:
    """RGB colours of uint8 values (0 = 0.0, 255 = 1.0) under :data:`COLORMAP`."""
    return cv2.cvtColor(cv2.applyColorMap(values, COLORMAP), cv2.COLOR_BGR2RGB)


def _contour_thickness(height: int, width: int) -> int:
    """2 px on small images, growing with size so the outline stays visible when a large photo is viewed whole."""
    return max(2, round(min(height, width) / 400))


def legend_height(height: int, width: int) -> int:
    """Height in pixels of the colour-scale strip that :func:`render_heatmap` appends below an image.

    Args:
        height: Image height in pixels.
        width: Image width in pixels.

    Returns:
        The strip height; the overlay is ``(height + legend_height(height, width), width, 3)``.
    """
    text_px = _image_text_px(height, width)
    pad, bar, tick = _legend_metrics(text_px)
    return int(pad + bar + tick + pad // 2 + math.ceil(text_px) + pad)


def _legend_metrics(text_px: float) -> tuple[int, int, int]:
    """Padding, bar height and tick length of the legend strip."""
    return max(3, round(text_px / 3)), max(6, round(text_px)), max(2, round(text_px / 3))


def _render_legend(width: int, strip_height: int, text_px: float, threshold: float, thickness: int) -> np.ndarray:
    """The colour scale 0..1 as a strip, with ticks at 0, the threshold and 1."""
    strip = np.empty((strip_height, width, 3), np.uint8)
    strip[:] = _STRIP_RGB
    pad, bar_h, tick = _legend_metrics(text_px)
    labels = ("0", f"{threshold:g}", "1")
    # Tick labels are centred on their ticks, so the bar is inset by half the end labels' width.
    label_px = _fit_text_px(labels, text_px, max(1, width // 4))
    inset_left = max(pad, _text_size(labels[0], label_px)[0] // 2 + 2)
    inset_right = max(pad, _text_size(labels[2], label_px)[0] // 2 + 2)
    x0, x1 = inset_left, max(inset_left + 1, width - 1 - inset_right)
    y0, y1 = pad, pad + bar_h

    gradient = np.linspace(0, 255, x1 - x0 + 1).round().astype(np.uint8)[None, :]
    strip[y0:y1, x0 : x1 + 1] = _colorize(gradient)
    cv2.rectangle(strip, (x0 - 1, y0 - 1), (x1 + 1, y1), _STRIP_TEXT_RGB, 1)

    baseline = y1 + tick + pad // 2 + round(label_px)
    spans: list[tuple[int, int]] = []
    # The threshold label goes first so an end label that would collide with it is the one dropped.
    ticks = ((threshold, labels[1], True), (0.0, labels[0], False), (1.0, labels[2], False))
    for value, text, is_threshold in ticks:
        x = round(x0 + value * (x1 - x0))
        colour = CONTOUR_RGB if is_threshold else _STRIP_TEXT_RGB
        if is_threshold:
            # Across the bar as well, so the decision point is visible on the gradient itself.
            cv2.line(strip, (x, y0), (x, y1 + tick), colour, max(1, thickness // 2))
        else:
            cv2.line(strip, (x, y1), (x, y1 + tick), colour, 1)
        text_w = _text_size(text, label_px)[0]
        left = min(max(0, x - text_w // 2), width - text_w)
        span = (left - 2, left + text_w + 2)
        if any(span[0] < other[1] and other[0] < span[1] for other in spans):
            continue
        spans.append(span)
        _put_text(strip, text, left, baseline, label_px, colour)
    return strip


def _draw_regions(canvas: np.ndarray, regions: Sequence[Region], thickness: int) -> None:
    """Each region's box as a frame of ``thickness`` (t) pixels, t pixels outside its box (columns
    ``x0 - 2t .. x0 - t - 1`` and ``x1 + t .. x1 + 2t - 1``, rows alike; clipped at the image's edges): the region
    and the outline around it (t pixels, drawn later) stay in view inside. For the strongest
    :data:`MAX_REGION_LABELS`, the peak score in a small white tab on the frame's top left corner (below the frame
    when there is no room above)."""
    height, width = canvas.shape[:2]
    text_px = max(_FLOOR_TEXT_PX, 0.7 * _image_text_px(height, width))
    pad = max(1, round(text_px / 4))
    t = thickness
    for rank, r in enumerate(sorted(regions, key=lambda r: -r.peak)):
        x0, y0, x1, y1 = max(r.x0 - t, 0), max(r.y0 - t, 0), max(r.x1 + t, 0), max(r.y1 + t, 0)  # inside edges
        top, bottom, left, right = max(y0 - t, 0), y1 + t, max(x0 - t, 0), x1 + t
        canvas[top:y0, left:right] = REGION_RGB
        canvas[y1:bottom, left:right] = REGION_RGB
        canvas[top:bottom, left:x0] = REGION_RGB
        canvas[top:bottom, x1:right] = REGION_RGB
        if rank >= MAX_REGION_LABELS:
            continue
        text = f"{r.peak:.2f}"
        text_w, text_h = _text_size(text, text_px)
        tab_w, tab_h = text_w + 2 * pad, text_h + 2 * pad
        left = min(left, max(0, width - tab_w))
        top = top - tab_h if top - tab_h >= 0 else min(bottom, max(0, height - tab_h))
        cv2.rectangle(canvas, (left, top), (left + tab_w - 1, top + tab_h - 1), REGION_RGB, cv2.FILLED)
        _put_text(canvas, text, left + pad, top + pad + text_h, text_px, _STRIP_RGB)


def _block_height(n_lines: int, text_px: float) -> int:
    return n_lines * round(text_px) + (n_lines - 1) * max(2, round(text_px * _LINE_GAP))


def _draw_score_box(canvas: np.ndarray, values: np.ndarray, score: float, label: str, name: str) -> None:
    """Name, score and label in a box, red for anomalous and green for normal, in the least anomalous corner."""
    height, width = canvas.shape[:2]
    text_px = _image_text_px(height, width)
    margin = pad = max(2, round(text_px / 3))
    max_text_w = max(1, width - 2 * margin - 2 * pad)
    max_text_h = max(1, height - 2 * margin - 2 * pad)

    def fitted(lines: list[str]) -> float:
        by_height = max_text_h / (len(lines) + (len(lines) - 1) * _LINE_GAP)
        return min(_fit_text_px(lines, text_px, max_text_w), by_height)

    # Two short lines keep the text large on narrow images, where one long line would have to shrink.
    one_line, two_lines = [f"{score:.2f} {label}"], [f"{score:.2f}", label]
    lines = one_line if fitted(one_line) >= fitted(two_lines) else two_lines
    size = fitted(lines)
    if name and size == text_px and _block_height(len(lines) + 1, text_px) <= max_text_h:
        # Only where the score has room to spare; a long name is cut rather than allowed to shrink the score.
        shortened = _truncate(name, text_px, max_text_w)
        lines = [shortened, *lines] if shortened else lines
    text_px = max(_FLOOR_TEXT_PX, size)

    text_w = max(_text_size(line, text_px)[0] for line in lines)
    box_w, box_h = text_w + 2 * pad, _block_height(len(lines), text_px) + 2 * pad
    # The box must not hide the defect it reports on; ties go to the top left, where readers look first.
    corners = [
        (margin, margin),
        (width - margin - box_w, margin),
        (margin, height - margin - box_h),
        (width - margin - box_w, height - margin - box_h),
    ]
    corners = [(max(0, x), max(0, y)) for x, y in corners]
    covered = [float(values[y : y + box_h + 1, x : x + box_w + 1].mean()) for x, y in corners]
    left, top = corners[int(np.argmin(np.round(covered, 6)))]

    colour = ANOMALOUS_RGB if label == ANOMALOUS else NORMAL_RGB
    cv2.rectangle(canvas, (left, top), (left + box_w, top + box_h), colour, cv2.FILLED)
    # A light rim separates a red box from the red of a strong anomaly under it.
    cv2.rectangle(canvas, (left, top), (left + box_w, top + box_h), _TEXT_RGB, max(1, _thickness(text_px) // 2))
    baseline = top + pad + round(text_px)
    for line in lines:
        _put_text(canvas, line, left + pad, baseline, text_px, _TEXT_RGB)
        baseline += round(text_px) + max(2, round(text_px * _LINE_GAP))


def render_heatmap(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    *,
    score: float,
    label: str,
    name: str = "",
    alpha: float = 0.5,
    threshold: float = PIXEL_THRESHOLD,
    regions: Sequence[Region] | None = None,
) -> np.ndarray:
    """Renders the anomaly map over the image at the image's full resolution, with a colour scale strip below.

    The map is resized to the image (bilinear when upsampling, area averaging when the map is larger), so a map
    computed on a squashed model input stretches back over the whole image. It is clipped to [0, 1] and coloured
    with a fixed 0..1 range (Turbo), never normalised per image, so a colour means the same score on every image.
    The outline of ``map >= threshold`` is drawn in magenta, 2 px on small images and thicker on large ones. A box
    shows ``name`` (if given and there is room), the score and the label, red for anomalous and green for normal,
    with text sized to the image so it reads on 64 px crops and 4000 px photos alike; it sits in the corner it
    hides the least anomaly in, the top left when all are alike. Every anomalous region gets its box as a white
    frame around it and its outline, the ten strongest their peak score in a small white tab on it; the outline is
    drawn last and keeps its exact colour.

    Args:
        image: RGB uint8 ``(H, W, 3)`` or grayscale uint8 ``(H, W)`` (or ``(H, W, 1)``), any size.
        anomaly_map: Calibrated pixel scores in [0, 1], ``(h, w)`` or ``(1, h, w)``, any resolution.
        score: Calibrated image score in [0, 1].
        label: :data:`~kdcore.contract.ANOMALOUS` or :data:`~kdcore.contract.NORMAL` (case-insensitive); picks
            the box colour.
        name: Display name shown above the score; cut with ``...`` if too long, left out on images too small
            for the score to keep full size.
        alpha: Weight of the colour map in the blend, 0 (image only) to 1 (map only).
        threshold: Map value at and above which a pixel is anomalous; outlined, and ticked on the scale.
        regions: The boxes to draw, in pixels of the image; ``None``: the regions of ``anomaly_map`` at
            ``threshold`` placed on the image (:func:`kdcore.regions.anomalous_regions`,
            :func:`~kdcore.regions.regions_in_image`), the very boxes ``client.py score`` writes in its results;
            ``[]``: none.

    Returns:
        RGB uint8 of shape ``(H + legend_height(H, W), W, 3)``: rows ``[:H]`` are the overlay and the rows below
        are the colour scale bar (0 .. 1, with the threshold ticked in the outline colour).

    Raises:
        ValueError: If the image is not uint8 RGB/grayscale or is empty, the map is not 2-D (after dropping a
            leading axis of 1), is empty or holds NaN/inf, score, alpha or threshold is not in [0, 1], or the
            label is neither of :data:`~kdcore.contract.LABELS`.
        TypeError: If the image or map is not a numpy array, a number is not a number or ``name`` not a string.
    """
    rgb = _as_rgb(image)
    values = _as_map(anomaly_map)
    score = _unit_float(score, "image score")
    alpha = _unit_float(alpha, "alpha")
    threshold = _unit_float(threshold, "threshold")
    label = _as_label(label)
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    height, width = rgb.shape[:2]
    if regions is None:  # found on the map as it came (clipped, as it is coloured), then placed on the image
        found = anomalous_regions(np.clip(values, 0.0, 1.0), threshold)
        regions = regions_in_image(found, values.shape, (height, width))

    if values.shape != (height, width):
        shrinking = values.shape[0] > height and values.shape[1] > width
        # Area averaging when shrinking keeps a one-pixel defect from vanishing or aliasing.
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        values = cv2.resize(values, (width, height), interpolation=interpolation)
    values = np.clip(values, 0.0, 1.0)  # a new array: the caller's map (often a read-only reply buffer) is left alone

    # convertScaleAbs rounds and saturates in one pass, without float temporaries on 12-megapixel images.
    heat = _colorize(cv2.convertScaleAbs(values, alpha=255.0))
    overlay = cv2.addWeighted(rgb, 1.0 - alpha, heat, alpha, 0.0)
    del heat

    thickness = _contour_thickness(height, width)
    _draw_regions(overlay, regions, thickness)
    mask = (values >= threshold).astype(np.uint8)
    if mask.any():
        # RETR_LIST outlines holes too: a normal island inside a defect is information.
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        # LINE_8 rather than anti-aliased: the outline keeps exactly its colour, which tools and tests can find.
        cv2.drawContours(overlay, contours, -1, CONTOUR_RGB, thickness, cv2.LINE_8)

    _draw_score_box(overlay, values, score, label, name)
    strip = _render_legend(width, legend_height(height, width), _image_text_px(height, width), threshold, thickness)
    return np.vstack([overlay, strip])


# ------------------------------------------------------------------------------------------------------ writing


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    """Writes an RGB array as PNG, or JPEG for ``.jpg``/``.jpeg``; a path without a suffix gets ``.png``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == "":
        path = path.with_suffix(".png")
        suffix = ".png"
    if suffix not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"{path}: unsupported image suffix {path.suffix!r}; use .png, .jpg or .jpeg")
    params = [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY] if suffix != ".png" else []
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    # imencode plus a Python write, not imwrite: imwrite only returns False, and mishandles non-ASCII paths.
    ok, encoded = cv2.imencode(suffix, bgr, params)
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the image as {suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encoded.tobytes())
    except OSError as error:
        raise OSError(f"{path}: could not write the image: {error}") from error
    return path


def write_heatmap(path: Path, image: np.ndarray, anomaly_map: np.ndarray, **kwargs: Any) -> Path:
    """Renders a heatmap with :func:`render_heatmap` and writes it to ``path``.

    Args:
        path: Target file; ``.png`` (default when there is no suffix), ``.jpg`` or ``.jpeg``. Parent folders are
            created.
        image: As for :func:`render_heatmap`.
        anomaly_map: As for :func:`render_heatmap`.
        **kwargs: ``score``, ``label`` and the optional arguments of :func:`render_heatmap`.

    Returns:
        The path written (with ``.png`` added if ``path`` had no suffix).

    Raises:
        ValueError: For invalid inputs (see :func:`render_heatmap`) or an unsupported suffix.
        TypeError: For inputs of the wrong type (see :func:`render_heatmap`).
        OSError: If the folder or file cannot be written; the message names the path.
    """
    return write_rgb(path, render_heatmap(image, anomaly_map, **kwargs))


# ------------------------------------------------------------------------------------------------ contact sheet


@dataclass(frozen=True)
class SheetLayout:
    """Geometry of a contact sheet; all sizes in pixels.

    The sheet is ``height x width`` with ``gap`` around and between tiles. Below an optional title row of
    ``title_height``, each of the ``rows x columns`` cells is a ``cell x cell`` tile over a ``caption_height``
    caption: ``width = columns * (cell + gap) + gap`` and
    ``height = title_height + rows * (cell + caption_height + gap) + gap``.
    """

    rows: int
    columns: int
    cell: int
    gap: int
    caption_height: int
    caption_px: float
    title_height: int
    title_px: float
    width: int
    height: int


def contact_sheet_layout(n_items: int, *, columns: int = 4, cell: int = 256, title: str = "") -> SheetLayout:
    """Computes where :func:`contact_sheet` puts ``n_items`` tiles.

    Fewer items than ``columns`` give a narrower sheet (one column per item), not empty cells.

    Args:
        n_items: Number of tiles, at least 1.
        columns: Most tiles per row, at least 1.
        cell: Side of a square tile, at least 32.
        title: Title text; an empty title means no title row.

    Returns:
        The layout.

    Raises:
        ValueError: If a count or size is out of range.
        TypeError: If ``title`` is not a string.
    """
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
        raise ValueError(f"a contact sheet needs at least one item, got {n_items!r}")
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be a positive integer, got {columns!r}")
    if isinstance(cell, bool) or not isinstance(cell, int) or cell < _MIN_CELL:
        raise ValueError(f"cell must be an integer of at least {_MIN_CELL} px, got {cell!r}")
    if not isinstance(title, str):
        raise TypeError(f"title must be a string, got {type(title).__name__}")
    used_columns = min(columns, n_items)
    rows = math.ceil(n_items / used_columns)
    gap = max(2, cell // 32)
    caption_px = float(max(_MIN_TEXT_PX, round(cell * 0.055)))
    caption_height = round(caption_px) + 2 * max(2, round(caption_px / 2))
    title_px = round(caption_px * 1.5) if title else 0.0
    title_height = round(title_px) + 2 * max(3, round(title_px / 2)) if title else 0
    return SheetLayout(
        rows=rows,
        columns=used_columns,
        cell=cell,
        gap=gap,
        caption_height=caption_height,
        caption_px=caption_px,
        title_height=title_height,
        title_px=float(title_px),
        width=used_columns * (cell + gap) + gap,
        height=title_height + rows * (cell + caption_height + gap) + gap,
    )


def _letterbox(image: np.ndarray, cell: int) -> np.ndarray:
    """``image`` scaled to fit a ``cell x cell`` tile, aspect ratio kept, centred on a dark background."""
    tile = np.empty((cell, cell, 3), np.uint8)
    tile[:] = _TILE_RGB
    height, width = image.shape[:2]
    scale = min(cell / width, cell / height)
    new_w, new_h = max(1, min(cell, round(width * scale))), max(1, min(cell, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = image
    if (new_w, new_h) != (width, height):
        resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    top, left = (cell - new_h) // 2, (cell - new_w) // 2
    tile[top : top + new_h, left : left + new_w] = resized
    return tile


def contact_sheet(
    items: Sequence[tuple[np.ndarray, str]],
    *,
    columns: int = 4,
    cell: int = 256,
    title: str = "",
) -> np.ndarray:
    """Tiles rendered heatmaps into one image, each with its caption underneath, in reading order.

    Args:
        items: ``(image, caption)`` pairs; images are RGB (or grayscale) uint8 of any size, e.g. from
            :func:`render_heatmap`, and captions such as ``"img_012.png  0.93 anomalous"`` (cut with ``...``
            if too long for the cell).
        columns: Most tiles per row.
        cell: Side in pixels of the square tile each image is letterboxed into (aspect ratio kept).
        title: Optional title row on top.

    Returns:
        RGB uint8 of shape ``(layout.height, layout.width, 3)`` where
        ``layout = contact_sheet_layout(len(items), columns=columns, cell=cell, title=title)``.

    Raises:
        ValueError: If ``items`` is empty, an item is not an ``(image, caption)`` pair of a valid image and a
            string, or ``columns``/``cell`` are out of range.
        TypeError: If an image is not a numpy array, or a caption or the title is not a string.
    """
    if len(items) == 0:
        raise ValueError("contact_sheet needs at least one (image, caption) item")
    layout = contact_sheet_layout(len(items), columns=columns, cell=cell, title=title)
    checked: list[tuple[np.ndarray, str]] = []
    for index, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"items[{index}] must be an (image, caption) pair, got {type(item).__name__}")
        image, caption = item
        if not isinstance(caption, str):
            raise TypeError(f"items[{index}] caption must be a string, got {type(caption).__name__}")
        checked.append((_as_rgb(image, f"items[{index}] image"), caption))

    sheet = np.empty((layout.height, layout.width, 3), np.uint8)
    sheet[:] = _SHEET_RGB
    gap = layout.gap
    if title:
        title_px = _fit_text_px([title], layout.title_px, layout.width - 2 * gap)
        text = _truncate(title, max(_FLOOR_TEXT_PX, title_px), layout.width - 2 * gap)
        baseline = (layout.title_height + round(title_px)) // 2
        _put_text(sheet, text, gap, baseline, max(_FLOOR_TEXT_PX, title_px), _STRIP_TEXT_RGB)

    for index, (image, caption) in enumerate(checked):
        row, column = divmod(index, layout.columns)
        left = gap + column * (layout.cell + gap)
        top = layout.title_height + gap + row * (layout.cell + layout.caption_height + gap)
        sheet[top : top + layout.cell, left : left + layout.cell] = _letterbox(image, layout.cell)
        # Shrinking a little keeps the end of a caption (the score and label) before cutting it with '...'.
        caption_px = max(_MIN_TEXT_PX, 0.75 * layout.caption_px, _fit_text_px([caption], layout.caption_px, layout.cell))
        text = _truncate(caption, caption_px, layout.cell)
        baseline = top + layout.cell + (layout.caption_height + round(caption_px)) // 2
        _put_text(sheet, text, left, baseline, caption_px, _STRIP_TEXT_RGB)
    return sheet


def write_contact_sheet(path: Path, items: Sequence[tuple[np.ndarray, str]], **kwargs: Any) -> Path:
    """Renders a contact sheet with :func:`contact_sheet` and writes it to ``path``.

    Args:
        path: Target file; ``.png`` (default when there is no suffix), ``.jpg`` or ``.jpeg``. Parent folders are
            created.
        items: As for :func:`contact_sheet`.
        **kwargs: ``columns``, ``cell`` and ``title`` as for :func:`contact_sheet`.

    Returns:
        The path written.

    Raises:
        ValueError: For invalid inputs or an unsupported suffix.
        OSError: If the folder or file cannot be written; the message names the path.
    """
    return write_rgb(path, contact_sheet(items, **kwargs))
