"""Sliding windows over images much larger than the model's input (e.g. a 4000x3000 line-scan frame).

Resizing a large frame to the model's input shrinks a small defect to a pixel or less, and the model never
sees it. Tiling cuts the frame into overlapping windows, each resized to the model's input and scored, then
stitches the window maps back into one full-resolution map (overlapping pixels averaged); the frame's score is
the largest window score, since a defect in any window makes the part anomalous.

One implementation for training (patch training cuts its images with it and its evaluation stitches with it) and
the client (``client.py score`` tiles served frames with it), so a model trained on a grid is scored the same way
it was evaluated. Numpy, OpenCV and pydantic only, like the rest of ``kdcore``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel, Field, model_validator

from kdcore.stats import PatchGrid


class TilingConfig(BaseModel):
    """How to cut a frame into windows: a grid (``columns`` x ``rows``) or a window size, plus overlap."""

    model_config = {"extra": "forbid", "frozen": True}

    columns: int | None = Field(None, ge=1, description="windows per row (with rows: a fixed grid)")
    rows: int | None = Field(None, ge=1, description="windows per column (with columns: a fixed grid)")
    tile_size: int | None = Field(None, ge=8, description="score frames larger than this as windows of this many "
                                  "pixels (instead of a grid)")
    overlap: float = Field(0.25, ge=0.0, lt=0.9, description="fraction of a window shared with its neighbour")

    @model_validator(mode="after")
    def _one_way(self) -> TilingConfig:
        grid = self.columns is not None or self.rows is not None
        if grid and (self.columns is None or self.rows is None):
            raise ValueError("a tile grid needs both columns and rows")
        if grid == (self.tile_size is not None):
            raise ValueError("give either a tile grid (columns and rows) or a tile size, not both or neither")
        return self

    def applies_to(self, height: int, width: int) -> bool:
        """Whether a frame of this size gets tiled (a window-size config leaves small frames whole)."""
        if self.tile_size is not None:
            return max(height, width) > self.tile_size
        return self.columns * self.rows > 1


@dataclass(frozen=True)
class Box:
    """One window: rows ``y0:y1`` and columns ``x0:x1`` of the frame."""

    y0: int
    y1: int
    x0: int
    x1: int


def _starts(length: int, window: int, count: int) -> list[int]:
    """``count`` window starts spread evenly so the first starts at 0 and the last ends at ``length``."""
    if count == 1:
        return [0]
    step = (length - window) / (count - 1)
    return [round(i * step) for i in range(count)]


def _axis(length: int, config: TilingConfig, grid_count: int | None) -> tuple[int, list[int]]:
    """Window length and starts along one axis."""
    overlap = config.overlap
    if grid_count is not None:
        # n windows of size w with overlap o cover n*w - (n-1)*o*w = length.
        window = min(length, math.ceil(length / (grid_count - (grid_count - 1) * overlap)))
        return window, _starts(length, window, grid_count)
    window = min(config.tile_size, length)
    stride = max(1, int(window * (1 - overlap)))
    count = 1 if window >= length else math.ceil((length - window) / stride) + 1
    return window, _starts(length, window, count)


def tile_boxes(height: int, width: int, config: TilingConfig) -> list[Box]:
    """Windows covering a ``height`` x ``width`` frame, row by row; together they cover every pixel."""
    if height < 1 or width < 1:
        raise ValueError(f"cannot tile an empty frame ({width}x{height})")
    win_h, ys = _axis(height, config, config.rows)
    win_w, xs = _axis(width, config, config.columns)
    return [Box(y, y + win_h, x, x + win_w) for y in ys for x in xs]


def cut_tiles(image: np.ndarray, boxes: list[Box], size: int, resize) -> np.ndarray:
    """The windows of ``image``, each resized to ``size`` x ``size`` by ``resize(window, size)``: ``(T, size, size, C)``."""
    return np.stack([resize(image[b.y0:b.y1, b.x0:b.x1], size) for b in boxes])


class MapStitcher:
    """Accumulates window maps into one full-resolution map; overlapping pixels are averaged."""

    def __init__(self, height: int, width: int) -> None:
        self.total = np.zeros((height, width), dtype=np.float32)
        self.count = np.zeros((height, width), dtype=np.float32)

    def add(self, box: Box, window_map: np.ndarray) -> None:
        """Add one window's map (any resolution; resized bilinearly to the window)."""
        h, w = box.y1 - box.y0, box.x1 - box.x0
        m = np.asarray(window_map, dtype=np.float32).reshape(window_map.shape[-2:])
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
        self.total[box.y0:box.y1, box.x0:box.x1] += m
        self.count[box.y0:box.y1, box.x0:box.x1] += 1.0

    def result(self) -> np.ndarray:
        """The stitched map; raises if a pixel was never covered (a bug in the boxes, not a user error)."""
        if not self.count.all():
            raise RuntimeError("tile maps do not cover the whole frame")
        return self.total / self.count


#: Largest side of the whole-frame maps a patch-trained model is measured on (training report and ``--evaluate``).
EVAL_SIDE_MAX = 512


def evaluation_side(image_size: int, columns: int, rows: int) -> int:
    """Side of the square whole-frame maps a patch-trained model's pixel metrics are measured on: the windows' own
    resolution laid side by side, at most :data:`EVAL_SIDE_MAX` (a 1024 px frame cut 4 x 4 is measured at 512 px,
    where a 20 px defect keeps 10 px). Training resizes its stitched maps to it and ``--evaluate`` the served ones,
    so the two measure the same thing."""
    return min(EVAL_SIDE_MAX, image_size * max(columns, rows))


def tiling_of(grid: PatchGrid) -> TilingConfig:
    """The tiling of a patch-training grid (the stats JSON's ``training.patch_grid``): the windows training cut are
    the windows the client cuts."""
    return TilingConfig(columns=grid.columns, rows=grid.rows, overlap=grid.overlap)
