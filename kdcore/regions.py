"""Anomalous regions of an image: the connected parts of the calibrated map at or above the decision line.

The scorer reports them for every served image that asks (``regions``, one JSON list per row), the scoring client
for every image it has a map of, the heatmaps draw them and the detection metrics (:mod:`kdcore.detection`) count
them; all call :func:`anomalous_regions`, so a region means one thing everywhere.

The rule:

- A region is a connected component of the pixels with calibrated score >= 0.5
  (:data:`~kdcore.contract.DECISION`, compared in float32 as the label is), **8-connectivity** (:data:`CONNECTIVITY`:
  pixels touching at a corner belong together, so a thin diagonal scratch is one region; it is also how the
  ground-truth regions of AUPRO are counted, :func:`kdcore.metrics.aupro`). OpenCV's
  ``connectedComponentsWithStats`` finds them.
- ``x0, y0, x1, y1``: its bounding box in pixels of the map it was found on, **start inclusive, end exclusive**
  (columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``; width ``x1 - x0``, as a numpy slice ``map[y0:y1, x0:x1]``
  and as COCO's ``[x, y, w, h]`` = ``[x0, y0, x1 - x0, y1 - y0]``).
- ``area``: its number of pixels; ``mean``: its mean score; ``peak``: its highest score, at column ``peak_x`` and
  row ``peak_y`` (the first such pixel in row-major order on ties).
- Regions are listed strongest first: by ``peak`` descending, then by peak position (row, then column).

**Another resolution.** A map is not always at the image's resolution: a whole image is scored at the model's
input size (the served regions are in those pixels) and stretched back over the image, aspect ratio not kept
(:mod:`kdcore.imageio`); a tiled frame's stitched map is at full resolution already. :meth:`Region.rescaled`
(and :func:`regions_in_image` for a list) maps a region from a ``(h, w)`` map onto a ``(H, W)`` image: map pixel
column ``j`` covers image columns ``[j W / w, (j + 1) W / w)``, so the box becomes the smallest whole-pixel box
over its pixels' footprint (``x0' = floor(x0 W / w)``, ``x1' = ceil(x1 W / w)``, rows alike, exact integer
arithmetic), the peak the image pixel under the centre of the peak pixel (``floor((peak_x + 0.5) W / w)``), the
area the footprint's area rounded (``round(area W H / (w h))``, an estimate: the image's own pixels were never
thresholded); scores are unchanged. Equal sizes leave a region as it is.

Standard library, numpy and OpenCV only: shipped into the scorer's model folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from kdcore.contract import DECISION

#: Pixels touching at an edge or a corner belong to one region.
CONNECTIVITY = 8


@dataclass(frozen=True)
class Region:
    """One anomalous region of a map (box end exclusive; see the module docstring)."""

    x0: int
    y0: int
    x1: int
    y1: int
    area: int
    peak: float
    peak_x: int
    peak_y: int
    mean: float

    @property
    def width(self) -> int:
        """Box width in pixels."""
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        """Box height in pixels."""
        return self.y1 - self.y0

    @property
    def xywh(self) -> tuple[int, int, int, int]:
        """The box as COCO writes it: ``[x, y, width, height]``."""
        return self.x0, self.y0, self.width, self.height

    def rescaled(self, map_shape: tuple[int, int], image_shape: tuple[int, int]) -> Region:
        """The region found on a ``(h, w)`` map placed on the ``(H, W)`` image the map covers (see the module
        docstring for the rule); shapes are ``(height, width)``.

        Raises:
            ValueError: A shape with a side below 1.
        """
        (h, w), (hh, ww) = (int(map_shape[0]), int(map_shape[1])), (int(image_shape[0]), int(image_shape[1]))
        if min(h, w, hh, ww) < 1:
            raise ValueError(f"cannot rescale between shapes {map_shape} and {image_shape}")
        if (h, w) == (hh, ww):
            return self
        return Region(
            x0=self.x0 * ww // w, y0=self.y0 * hh // h,
            x1=-(-self.x1 * ww // w), y1=-(-self.y1 * hh // h),
            area=int(round(self.area * ww * hh / (w * h))),
            peak=self.peak,
            peak_x=min(ww - 1, (2 * self.peak_x + 1) * ww // (2 * w)),
            peak_y=min(hh - 1, (2 * self.peak_y + 1) * hh // (2 * h)),
            mean=self.mean,
        )


def _plane(anomaly_map: np.ndarray) -> np.ndarray:
    """A map as 2-D float32; leading axes of 1 (``(1, H, W)``, ``(1, 1, H, W)``) are dropped."""
    m = np.asarray(anomaly_map)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"regions are found on one 2-D map ((H, W) or (1, H, W)), got shape {np.shape(anomaly_map)}")
    return m.astype(np.float32, copy=False)


def label_regions(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """The connected components of a binary mask by the project's rule (:data:`CONNECTIVITY`).

    Returns:
        ``(count, labels, stats)`` as ``cv2.connectedComponentsWithStats`` gives them: ``count`` includes the
        background (label 0), ``labels`` is int32 ``(H, W)``, ``stats`` has a row per label with
        ``cv2.CC_STAT_LEFT``, ``TOP``, ``WIDTH``, ``HEIGHT`` and ``AREA``.
    """
    binary = np.ascontiguousarray(np.asarray(mask) != 0, dtype=np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=CONNECTIVITY, ltype=cv2.CV_32S)
    return int(count), labels, stats


def anomalous_regions(anomaly_map: np.ndarray, decision: float = DECISION) -> list[Region]:
    """The regions of a calibrated map (``(H, W)`` or ``(1, H, W)``) at or above ``decision``, strongest first.

    Raises:
        ValueError: ``anomaly_map`` is not one 2-D map.
    """
    m = _plane(anomaly_map)
    above = m >= np.float32(decision)
    if not above.any():
        return []
    count, labels, stats = label_regions(above)
    regions = []
    for i in range(1, count):
        x0, y0, w, h, area = (int(v) for v in stats[i, :5])
        # Within the region's box only: the work follows the regions' size, not the map's.
        inside = np.flatnonzero(labels[y0:y0 + h, x0:x0 + w] == i)  # row-major order
        values = m[y0:y0 + h, x0:x0 + w].ravel()[inside]
        k = int(np.argmax(values))  # the first of equal maxima
        row, col = divmod(int(inside[k]), w)
        regions.append(Region(
            x0=x0, y0=y0, x1=x0 + w, y1=y0 + h, area=area, peak=float(values[k]),
            peak_x=x0 + col, peak_y=y0 + row,
            mean=float(np.sum(values, dtype=np.float64) / area),
        ))
    regions.sort(key=lambda r: (-r.peak, r.peak_y, r.peak_x))
    return regions


def regions_in_image(regions: list[Region], map_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> list[Region]:
    """Every region of a map of ``map_shape`` placed on an image of ``image_shape`` (:meth:`Region.rescaled`; the
    last two axes of a map shape and the first two of an image shape are taken, so ``(1, h, w)`` maps and
    ``(H, W, 3)`` images can be passed as they are)."""
    source = tuple(int(d) for d in map_shape[-2:])
    target = tuple(int(d) for d in image_shape[:2])
    return [r.rescaled(source, target) for r in regions]


_KEYS = tuple(f.name for f in fields(Region))


def regions_to_json(regions: list[Region]) -> str:
    """The wire form: a compact JSON list of ``{"x0", "y0", "x1", "y1", "area", "peak", "peak_x", "peak_y",
    "mean"}`` objects (scores as the shortest text that reads back to the same double)."""
    return json.dumps([asdict(r) for r in regions], separators=(",", ":"))


def regions_from_json(text: bytes | str) -> list[Region]:
    """Parse the wire form back (bytes as the server sends them, or text).

    Raises:
        ValueError: Not a JSON list of region objects with exactly the documented keys.
    """
    raw = json.loads(text.decode() if isinstance(text, bytes) else text)
    if not isinstance(raw, list):
        raise ValueError(f"regions must be a JSON list, got {type(raw).__name__}")
    out = []
    for r in raw:
        if not isinstance(r, dict) or set(r) != set(_KEYS):
            raise ValueError(f"malformed region {r!r}: expected the keys {list(_KEYS)}")
        try:
            out.append(Region(*(int(r[k]) for k in _KEYS[:5]), float(r["peak"]), int(r["peak_x"]), int(r["peak_y"]),
                              float(r["mean"])))
        except (TypeError, ValueError) as e:
            raise ValueError(f"malformed region {r!r}: {e}") from e
    return out
