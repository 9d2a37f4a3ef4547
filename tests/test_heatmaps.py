"""Heatmap overlays and contact sheets of the scoring client: sizes, outline, fixed colours, labels, files."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from client.heatmaps import (
    ANOMALOUS_RGB,
    CONTOUR_RGB,
    NORMAL_RGB,
    contact_sheet,
    contact_sheet_layout,
    legend_height,
    render_heatmap,
    write_contact_sheet,
    write_heatmap,
)

MODULE = Path(__file__).resolve().parents[1] / "client" / "heatmaps.py"


def gray_image(height: int, width: int, value: int = 128) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


def colour_mask(rgb: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(rgb == np.array(colour, np.uint8), axis=-1)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (1000, 1500), (1500, 1000)])
def test_output_is_image_size_plus_legend_strip_below(height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    anomaly_map = rng.random((64, 64), dtype=np.float32)

    out = render_heatmap(image, anomaly_map, score=0.7, label="anomalous", name="img_001.png")

    strip = legend_height(height, width)
    assert strip > 0
    assert out.shape == (height + strip, width, 3)
    assert out.dtype == np.uint8


def test_legend_and_text_grow_with_the_image() -> None:
    assert legend_height(3000, 4000) > legend_height(1000, 1500) > legend_height(64, 64)


def test_accepts_grayscale_channel_first_and_full_resolution_maps() -> None:
    gray = np.full((80, 120), 100, np.uint8)
    small = np.zeros((1, 32, 32), np.float32)
    full = np.zeros((80, 120), np.float64)
    larger = np.zeros((400, 600), np.float32)
    expected = (80 + legend_height(80, 120), 120, 3)
    for anomaly_map in (small, full, larger):
        assert render_heatmap(gray, anomaly_map, score=0.1, label="normal").shape == expected
    assert render_heatmap(gray[:, :, None], small, score=0.1, label="Normal").shape == expected


def test_outline_surrounds_the_region_above_threshold() -> None:
    height = width = 200
    anomaly_map = np.zeros((50, 50), np.float32)
    anomaly_map[20:30, 20:30] = 0.8  # Upsampled 4x: rows and columns 80..119 of the image.

    out = render_heatmap(gray_image(height, width), anomaly_map, score=0.9, label="anomalous")

    contour = colour_mask(out[:height], CONTOUR_RGB)
    ys, xs = np.nonzero(contour)
    assert len(ys) > 0
    # Only around the square, nowhere far from it.
    assert ys.min() >= 74 and ys.max() <= 126
    assert xs.min() >= 74 and xs.max() <= 126
    # On all four sides, with the inside left alone.
    assert np.any(np.abs(ys - 80) <= 3) and np.any(np.abs(ys - 120) <= 3)
    assert np.any(np.abs(xs - 80) <= 3) and np.any(np.abs(xs - 120) <= 3)
    assert not contour[90:110, 90:110].any()


@pytest.mark.parametrize("value", [0.0, 0.45])
def test_no_outline_below_threshold(value: float) -> None:
    anomaly_map = np.full((50, 50), value, np.float32)
    out = render_heatmap(gray_image(200, 200), anomaly_map, score=0.2, label="normal")
    assert not colour_mask(out[:200], CONTOUR_RGB).any()


def test_threshold_moves_the_outline() -> None:
    anomaly_map = np.zeros((50, 50), np.float32)
    anomaly_map[20:30, 20:30] = 0.3
    image = gray_image(200, 200)
    assert not colour_mask(render_heatmap(image, anomaly_map, score=0.2, label="normal")[:200], CONTOUR_RGB).any()
    lowered = render_heatmap(image, anomaly_map, score=0.2, label="normal", threshold=0.25)
    assert colour_mask(lowered[:200], CONTOUR_RGB).any()


def test_colours_use_a_fixed_range_not_per_image_normalisation() -> None:
    height = width = 256
    image = gray_image(height, width, 96)
    flat = np.full((64, 64), 0.2, np.float32)
    with_hot_pixel = flat.copy()
    with_hot_pixel[5, 60] = 0.9  # Top right of the image, away from the compared region.

    a = render_heatmap(image, flat, score=0.3, label="normal")
    b = render_heatmap(image, with_hot_pixel, score=0.3, label="normal")

    region = (slice(150, 250), slice(20, 230))
    np.testing.assert_array_equal(a[region], b[region])
    # And the colour is the colour map's own 0.2, blended half and half over the image.
    turbo = cv2.cvtColor(cv2.applyColorMap(np.array([[round(0.2 * 255)]], np.uint8), cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    expected = cv2.addWeighted(image[:1, :1], 0.5, turbo, 0.5, 0.0)[0, 0]
    assert np.all(np.abs(a[region].astype(int) - expected.astype(int)) <= 1)
    # A different constant level is a different colour: nothing rescales a flat map.
    high = render_heatmap(image, np.full((64, 64), 0.8, np.float32), score=0.3, label="normal")
    assert not np.array_equal(high[region], a[region])


def test_out_of_range_map_values_are_clipped() -> None:
    image = gray_image(64, 64)
    over = render_heatmap(image, np.full((8, 8), 3.0, np.float32), score=0.9, label="anomalous")
    one = render_heatmap(image, np.ones((8, 8), np.float32), score=0.9, label="anomalous")
    np.testing.assert_array_equal(over, one)


def test_inputs_are_left_unchanged() -> None:
    image = gray_image(64, 64)
    anomaly_map = np.full((64, 64), 2.0, np.float32)  # Full resolution: no resize that would copy it anyway.
    render_heatmap(image, anomaly_map, score=0.9, label="anomalous", name="x")
    assert np.all(anomaly_map == 2.0)
    assert np.all(image == 128)


def test_label_sets_the_box_colour() -> None:
    image = gray_image(300, 400)
    anomaly_map = np.zeros((64, 64), np.float32)

    anomalous = render_heatmap(image, anomaly_map, score=0.8, label="anomalous")[:300]
    normal = render_heatmap(image, anomaly_map, score=0.8, label="normal")[:300]

    assert colour_mask(anomalous, ANOMALOUS_RGB).sum() > 100
    assert not colour_mask(anomalous, NORMAL_RGB).any()
    assert colour_mask(normal, NORMAL_RGB).sum() > 100
    assert not colour_mask(normal, ANOMALOUS_RGB).any()


def test_box_avoids_covering_the_defect() -> None:
    anomaly_map = np.zeros((64, 64), np.float32)
    anomaly_map[:20, :20] = 1.0  # Top left, where the box would go by default.
    out = render_heatmap(gray_image(400, 400), anomaly_map, score=0.9, label="anomalous")[:400]
    box = colour_mask(out, ANOMALOUS_RGB)
    assert box.any()
    assert not box[:125, :125].any()


def test_write_heatmap_writes_a_png_of_the_rendered_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    anomaly_map = rng.random((32, 32), dtype=np.float32)
    kwargs = {"score": 0.6, "label": "anomalous", "name": "part_7.png"}

    written = write_heatmap(tmp_path / "nested" / "deeper" / "part_7.png", image, anomaly_map, **kwargs)

    assert written == tmp_path / "nested" / "deeper" / "part_7.png"
    loaded = cv2.imread(str(written), cv2.IMREAD_COLOR)
    assert loaded is not None
    assert loaded.shape == (90 + legend_height(90, 130), 130, 3)
    # PNG is lossless, so the file holds exactly the rendered RGB pixels, stored as BGR.
    np.testing.assert_array_equal(loaded[:, :, ::-1], render_heatmap(image, anomaly_map, **kwargs))


def test_write_heatmap_jpeg_and_default_suffix(tmp_path: Path) -> None:
    image, anomaly_map = gray_image(64, 96), np.zeros((16, 16), np.float32)
    jpeg = write_heatmap(tmp_path / "a.JPG", image, anomaly_map, score=0.1, label="normal")
    assert jpeg.read_bytes()[:2] == b"\xff\xd8"
    assert cv2.imread(str(jpeg)).shape == (64 + legend_height(64, 96), 96, 3)
    plain = write_heatmap(tmp_path / "b", image, anomaly_map, score=0.1, label="normal")
    assert plain == tmp_path / "b.png"
    assert plain.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_heatmap_errors(tmp_path: Path) -> None:
    image, anomaly_map = gray_image(32, 32), np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="suffix"):
        write_heatmap(tmp_path / "a.gif", image, anomaly_map, score=0.1, label="normal")
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(OSError, match="not_a_folder"):
        write_heatmap(blocker / "a.png", image, anomaly_map, score=0.1, label="normal")


def _item(height: int, width: int, caption: str) -> tuple[np.ndarray, str]:
    return gray_image(height, width, 255), caption


def test_contact_sheet_grid_size() -> None:
    items = [_item(64, 64, "img_000.png  0.93 anomalous"), _item(100, 50, "tall"), _item(50, 100, "wide"),
             _item(500, 500, "big"), _item(30, 40, "small")]

    sheet = contact_sheet(items, columns=4, cell=128)

    layout = contact_sheet_layout(5, columns=4, cell=128)
    assert (layout.rows, layout.columns) == (2, 4)
    assert sheet.shape == (layout.height, layout.width, 3)
    assert layout.width == 4 * 128 + 5 * layout.gap
    assert layout.height == 2 * (128 + layout.caption_height + layout.gap) + layout.gap

    titled = contact_sheet(items, columns=4, cell=128, title="Most anomalous images")
    assert titled.shape == (layout.height + contact_sheet_layout(5, cell=128, title="x").title_height, layout.width, 3)
    assert titled.shape[0] > sheet.shape[0]


def test_contact_sheet_letterboxes_keeping_aspect_ratio() -> None:
    sheet = contact_sheet([_item(100, 50, "tall")], cell=128)
    layout = contact_sheet_layout(1, cell=128)
    tile = sheet[layout.gap : layout.gap + 128, layout.gap : layout.gap + 128]
    # 100x50 scales to 128x64, centred: white in columns 32..95, background bars either side.
    assert np.all(tile[:, 33:95] == 255)
    assert not np.any(np.all(tile[:, :30] == 255, axis=-1))
    assert not np.any(np.all(tile[:, 98:] == 255, axis=-1))


def test_contact_sheet_with_fewer_items_than_columns_is_one_narrow_row() -> None:
    sheet = contact_sheet([_item(64, 64, "a"), _item(64, 64, "b")], columns=4, cell=64)
    layout = contact_sheet_layout(2, columns=4, cell=64)
    assert (layout.rows, layout.columns) == (1, 2)
    assert sheet.shape == (layout.height, layout.width, 3)


def test_write_contact_sheet(tmp_path: Path) -> None:
    rendered = render_heatmap(gray_image(64, 64), np.zeros((8, 8), np.float32), score=0.9, label="anomalous")
    written = write_contact_sheet(tmp_path / "sheets" / "top.png", [(rendered, "img.png  0.90 anomalous")] * 3,
                                  columns=2, cell=96, title="top")
    layout = contact_sheet_layout(3, columns=2, cell=96, title="top")
    assert cv2.imread(str(written)).shape == (layout.height, layout.width, 3)


def _nan_map() -> np.ndarray:
    values = np.zeros((8, 8), np.float32)
    values[3, 3] = np.nan
    return values


IMAGE = gray_image(32, 32)
MAP = np.zeros((8, 8), np.float32)


@pytest.mark.parametrize(
    ("image", "anomaly_map", "kwargs", "message"),
    [
        (np.zeros((2, 32, 32, 3), np.uint8), MAP, {}, "RGB"),
        (np.zeros((32, 32, 4), np.uint8), MAP, {}, "RGB"),
        (np.zeros((32,), np.uint8), MAP, {}, "RGB"),
        (np.zeros((0, 32, 3), np.uint8), MAP, {}, "empty"),
        (np.zeros((32, 32, 3), np.float32), MAP, {}, "uint8"),
        (IMAGE, np.zeros((2, 8, 8), np.float32), {}, "anomaly_map"),
        (IMAGE, np.zeros((8,), np.float32), {}, "anomaly_map"),
        (IMAGE, np.zeros((8, 8, 2), np.float32), {}, "anomaly_map"),
        (IMAGE, np.zeros((0, 8), np.float32), {}, "empty"),
        (IMAGE, _nan_map(), {}, "NaN"),
        (IMAGE, np.full((8, 8), np.inf, np.float32), {}, "NaN"),
        (IMAGE, np.zeros((8, 8), np.complex64), {}, "real"),
        (IMAGE, MAP, {"score": 1.5}, "score"),
        (IMAGE, MAP, {"score": float("nan")}, "score"),
        (IMAGE, MAP, {"label": "broken"}, "label"),
        (IMAGE, MAP, {"alpha": -0.1}, "alpha"),
        (IMAGE, MAP, {"threshold": 2.0}, "threshold"),
    ],
)
def test_invalid_inputs_raise_value_error(image: np.ndarray, anomaly_map: np.ndarray, kwargs: dict, message: str) -> None:
    arguments = {"score": 0.5, "label": "normal", **kwargs}
    with pytest.raises(ValueError, match=message):
        render_heatmap(image, anomaly_map, **arguments)


def test_wrong_types_raise_type_error() -> None:
    with pytest.raises(TypeError):
        render_heatmap([[0]], MAP, score=0.5, label="normal")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        render_heatmap(IMAGE, MAP, score="0.5", label="normal")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("items", "kwargs", "message"),
    [
        ([], {}, "at least one"),
        ([(IMAGE, "a")], {"columns": 0}, "columns"),
        ([(IMAGE, "a")], {"cell": 8}, "cell"),
        ([(np.zeros((2, 8, 8, 3), np.uint8), "a")], {}, "items\\[0\\]"),
        ([(IMAGE,)], {}, "pair"),
    ],
)
def test_invalid_contact_sheets_raise_value_error(items: list, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        contact_sheet(items, **kwargs)


def test_module_needs_only_numpy_opencv_and_the_standard_library() -> None:
    tree = ast.parse(MODULE.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    # kdcore: the contract's label words and decision line (standard library only; the check below loads it).
    assert imported - set(sys.stdlib_module_names) <= {"numpy", "cv2", "kdcore"}
    # Loaded on its own in a fresh interpreter (this one has torch from conftest), it pulls in nothing heavy.
    check = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('heatmaps', {str(MODULE)!r})\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['heatmaps'] = module\n"
        "spec.loader.exec_module(module)\n"
        "heavy = sorted(name for name in ('torch', 'matplotlib', 'training', 'serving') if name in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", check], check=True, timeout=120)
