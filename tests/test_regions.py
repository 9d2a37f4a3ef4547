"""Anomalous regions of an image map: the components at or above the decision line, their wire form, rescaling."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from kdcore.regions import Region, anomalous_regions, regions_from_json, regions_in_image, regions_to_json


def _components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components by breadth-first search: the rule written out without OpenCV."""
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        todo, pixels = deque([(y, x)]), []
        seen[y, x] = True
        while todo:
            cy, cx = todo.popleft()
            pixels.append((cy, cx))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        todo.append((ny, nx))
        out.append(pixels)
    return out


def _expected(values: np.ndarray) -> list[Region]:
    regions = []
    for pixels in _components(values >= np.float32(0.5)):
        ys, xs = np.array(pixels).T
        v = values[ys, xs]
        best = max(range(len(pixels)), key=lambda i: (v[i], -ys[i], -xs[i]))
        regions.append(Region(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, len(pixels),
                              float(v[best]), int(xs[best]), int(ys[best]), float(v.astype(np.float64).mean())))
    return sorted(regions, key=lambda r: (-r.peak, r.peak_y, r.peak_x))


def _synthetic() -> tuple[np.ndarray, np.ndarray]:
    """A 40x50 map drawn from a mask: a square with a hole, a diagonal line (corner-touching pixels), an
    L-shape at the border, a single pixel, two pixels that touch only at a corner, and a plateau of ties."""
    mask = np.zeros((40, 50), bool)
    mask[2:10, 3:12] = True
    mask[5:7, 6:8] = False                       # a hole: still one region
    for i in range(8):
        mask[15 + i, 20 + i] = True             # diagonal: corner-connected pixels are one region
    mask[30:40, 0:2] = True
    mask[38:40, 0:9] = True                     # L at the bottom-left border
    mask[20, 45] = True                         # a lone pixel
    mask[0, 48] = mask[1, 49] = True            # corner-touching pair: one region
    mask[30:33, 30:34] = True                   # a plateau: every pixel ties for the peak
    rng = np.random.default_rng(0)
    values = np.where(mask, rng.uniform(0.5, 1.0, mask.shape), rng.uniform(0.0, 0.4999, mask.shape)).astype(np.float32)
    values[30:33, 30:34] = 0.75
    values[10, 10] = 0.5                        # exactly the decision line counts (joins the square)
    mask[10, 10] = True
    return mask, values


def test_regions_match_the_mask_components_exactly() -> None:
    mask, values = _synthetic()
    regions = anomalous_regions(values)
    assert regions == _expected(values)
    assert len(regions) == 6
    # Every pixel of the mask is in exactly one box and the areas add up to the mask.
    assert sum(r.area for r in regions) == int(mask.sum())
    plateau = next(r for r in regions if r.peak == np.float32(0.75) and r.area == 12)
    assert (plateau.x0, plateau.y0, plateau.x1, plateau.y1) == (30, 30, 34, 33)
    assert (plateau.peak_x, plateau.peak_y) == (30, 30) and plateau.mean == pytest.approx(0.75)
    diagonal = next(r for r in regions if r.x0 == 20)
    assert (diagonal.area, diagonal.width, diagonal.height) == (8, 8, 8)
    assert diagonal.xywh == (20, 15, 8, 8)
    square = next(r for r in regions if r.x0 == 3)
    assert (square.x1, square.y1, square.area) == (12, 11, 9 * 8 - 4 + 1)
    # The map's own axes: (1, H, W) as the scorer and the client hold it.
    assert anomalous_regions(values[None]) == regions


def test_no_region_below_the_line_and_errors() -> None:
    assert anomalous_regions(np.full((8, 8), 0.4999, np.float32)) == []
    whole = anomalous_regions(np.full((4, 6), 0.5, np.float32))
    assert whole == [Region(0, 0, 6, 4, 24, 0.5, 0, 0, 0.5)]
    with pytest.raises(ValueError, match="2-D map"):
        anomalous_regions(np.zeros((2, 4, 4)))


def test_wire_form_round_trips() -> None:
    _, values = _synthetic()
    regions = anomalous_regions(values)
    text = regions_to_json(regions)
    assert " " not in text and text.startswith('[{"x0":')
    assert regions_from_json(text) == regions == regions_from_json(text.encode())
    assert regions_from_json("[]") == []
    with pytest.raises(ValueError, match="JSON list"):
        regions_from_json('{"x0": 1}')
    with pytest.raises(ValueError, match="keys"):
        regions_from_json('[{"x0": 1}]')


def test_rescaling_to_the_image() -> None:
    region = Region(x0=2, y0=1, x1=5, y1=3, area=5, peak=0.9, peak_x=4, peak_y=2, mean=0.7)
    # 4x wider, 2x taller: each map pixel covers a 4x2 block of the image.
    up = region.rescaled((10, 10), (20, 40))
    assert up == Region(x0=8, y0=2, x1=20, y1=6, area=40, peak=0.9, peak_x=18, peak_y=5, mean=0.7)
    assert region.rescaled((10, 10), (10, 10)) is region
    # A ratio that is not whole: the box grows to whole pixels around the footprint, never shrinks into it.
    odd = region.rescaled((8, 8), (30, 30))
    assert (odd.x0, odd.y0, odd.x1, odd.y1) == (7, 3, 19, 12)   # 2*30/8=7.5 -> 7, 5*30/8=18.75 -> 19
    assert odd.peak_x == 16 and odd.area == round(5 * 900 / 64)  # (4.5)*30/8 = 16.875 -> 16
    # The full map maps onto the full image; shapes as numpy arrays hold them.
    full = Region(0, 0, 64, 64, 64 * 64, 1.0, 63, 63, 1.0)
    assert regions_in_image([full], (1, 64, 64), (300, 400, 3)) == [Region(0, 0, 400, 300, 120000, 1.0, 396, 297, 1.0)]
    with pytest.raises(ValueError):
        region.rescaled((0, 4), (4, 4))


def test_the_full_profile_serves_regions_and_the_score_profile_stays_map_free() -> None:
    """Image detectors' full ensembles (pixels and encoded files) return ``regions`` from the scorer; the score-only
    ensembles map neither the raw map nor regions (nothing computed), the UINT8 one no regions; series detectors
    keep their intervals and get no regions."""
    from export.triton_config import (
        encoded_ensemble_config,
        ensemble_config,
        profile_ensemble_config,
        scorer_config,
    )
    from kdcore.contract import (
        INTERVALS,
        MAP8_PROFILE,
        RAW_MAP,
        REGIONS,
        SCORE_PROFILE,
        ModelNames,
        image_network_spec,
        signal_network_spec,
    )

    names, spec = ModelNames("m"), image_network_spec(64)
    declared = f'name: "{REGIONS}" data_type: TYPE_STRING dims: [ 1 ]'
    assert declared in scorer_config(names, spec)
    for config in (ensemble_config(names, spec), encoded_ensemble_config(names, spec)):
        assert declared in config and f'output_map {{ key: "{REGIONS}" value: "{REGIONS}" }}' in config
    for profile in (SCORE_PROFILE, MAP8_PROFILE):
        assert REGIONS not in profile_ensemble_config(names, spec, profile)
    for config in (profile_ensemble_config(names, spec, SCORE_PROFILE), encoded_ensemble_config(names, spec, SCORE_PROFILE)):
        assert f'key: "{RAW_MAP}"' not in config
    series = ensemble_config(names, signal_network_spec(256, 2))
    assert INTERVALS in series and REGIONS not in series


def test_results_write_the_regions_list_in_jsonl_and_their_count_in_csv(tmp_path) -> None:
    import csv
    import json

    from client.reports import ResultWriter
    from client.results import ImageResult

    _, values = _synthetic()
    regions = anomalous_regions(values)
    with ResultWriter(tmp_path / "r.csv", tmp_path / "r.jsonl") as writer:
        writer.write(ImageResult(path="a.png", status="ok", score=0.9, label="anomalous", regions=regions))
        writer.write(ImageResult(path="b.png", status="ok", score=0.1, label="normal", regions=[]))
        writer.write(ImageResult(path="c.png", status="ok", score=0.1, label="normal"))  # no map fetched
    with open(tmp_path / "r.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["regions"] for r in rows] == [str(len(regions)), "0", ""]
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert lines[1]["regions"] == [] and lines[2]["regions"] is None
    written = lines[0]["regions"]
    assert [(r["x0"], r["y0"], r["x1"], r["y1"], r["area"], r["peak_x"], r["peak_y"]) for r in written] == [
        (r.x0, r.y0, r.x1, r.y1, r.area, r.peak_x, r.peak_y) for r in regions]
    assert all(abs(w["peak"] - r.peak) < 1e-6 and abs(w["mean"] - r.mean) < 1e-6 for w, r in zip(written, regions))


def test_heatmaps_draw_each_region_box_at_the_image_resolution() -> None:
    from client.heatmaps import CONTOUR_RGB, REGION_RGB, render_heatmap

    amap = np.zeros((50, 50), np.float32)
    amap[20:30, 10:20] = 0.8   # on the 200x200 image: rows 80..119, columns 40..79
    image = np.full((200, 200, 3), 90, np.uint8)
    out = render_heatmap(image, amap, score=0.9, label="anomalous")[:200]
    white = np.all(out == REGION_RGB, axis=-1)
    # A 2-px frame 2 px outside the box (room for the 2-px outline): columns 36-37 and 82-83 (x1 = 80 is
    # exclusive), rows 76-77 and 122-123; nothing inside is painted over.
    assert white[100, 36:38].all() and white[100, 82:84].all() and white[122:124, 60].all() and white[76:78, 60].all()
    assert not white[100, 35] and not white[100, 84] and not white[124, 60] and not white[78:122, 38:82].any()
    # The score tab on the frame's top left, and the outline in its own colour.
    assert white[60:76, 36:60].sum() > 50 and np.all(out == CONTOUR_RGB, axis=-1).any()
    # No regions asked for: no boxes.
    plain = render_heatmap(image, amap, score=0.9, label="anomalous", regions=[])[:200]
    assert not np.all(plain == REGION_RGB, axis=-1)[60:125, 35:85].any()
