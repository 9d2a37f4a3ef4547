"""The scoring client's parts that need no server: the image codec, input expansion, tiling and reports."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from client.inputs import expand_inputs
from client.reports import COLUMNS, ResultWriter, format_summary, write_json
from client.results import ImageResult, RunSummary
from client.scoring import ScoreConfig
from kdcore.imageio import ImageDecodeError, binary_mask, decode_image, resize_to
from kdcore.tiling import MapStitcher, TilingConfig, cut_tiles, tile_boxes

ROOT = Path(__file__).resolve().parents[1]


def _encode(image: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


# --------------------------------------------------------------------------- image codec
def test_decode_formats_depths_and_channels() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    for ext in (".png", ".bmp", ".tiff"):
        np.testing.assert_array_equal(decode_image(_encode(bgr, ext)), rgb)
    jpeg = decode_image(_encode(bgr, ".jpg"))
    assert jpeg.shape == (20, 30, 3) and jpeg.dtype == np.uint8
    gray = rgb[..., 0]
    np.testing.assert_array_equal(decode_image(_encode(gray, ".png")), np.repeat(gray[..., None], 3, axis=2))
    deep = (gray.astype(np.uint16) << 8) | 0x7F
    np.testing.assert_array_equal(decode_image(_encode(deep, ".png"))[..., 0], gray)
    bgra = np.dstack([bgr, np.full(gray.shape, 255, np.uint8)])
    np.testing.assert_array_equal(decode_image(_encode(bgra, ".png")), rgb)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"definitely not an image", "decode"),
        ("jpeg_half", "truncated JPEG"),
        ("png_half", "truncated PNG"),
    ],
)
def test_decode_rejects_broken_files(data, reason: str) -> None:
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    if data == "jpeg_half":
        data = _encode(image, ".jpg")[:-200]
    elif data == "png_half":
        data = _encode(image, ".png")[:-100]
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data)


def test_jpeg_with_a_short_trailer_is_not_called_truncated() -> None:
    image = np.full((32, 32, 3), 128, np.uint8)
    assert decode_image(_encode(image, ".jpg") + b"\x00" * 100).shape == (32, 32, 3)


def test_resize_and_masks_follow_the_training_rule() -> None:
    image = np.random.default_rng(2).integers(0, 256, (128, 96, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_to(image, 64), cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA))
    mask = np.zeros((128, 128), np.uint8)
    mask[10:20, 30:50] = 255
    small = binary_mask(mask, 64)
    assert small.dtype == np.uint8 and set(np.unique(small)) == {0, 1} and small.sum() == 5 * 10
    assert binary_mask(None, 8).sum() == 0


def test_the_client_imports_no_torch() -> None:
    """The client runs in a slim image: docker/Dockerfile.client installs the project's base (the torch-free core
    and the client) from a wheel, copying no loose files, and the client loads nothing of training/ or export/."""
    code = ("import sys, client.client, client.score_command, client.validate, client.evaluation, client.health; "
            "print('torch' in sys.modules, sorted({m.split('.')[0] for m in sys.modules} & "
            "{'training', 'export', 'serving', 'onnx', 'onnxruntime', 'scipy', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    torch_loaded, modules = out.stdout.strip().split(" ", 1)
    assert torch_loaded == "False"
    assert eval(modules) == []  # noqa: S307  (our own subprocess's repr of a list of names)
    dockerfile = (ROOT / "docker" / "Dockerfile.client").read_text()
    copies = [line.split()[1:] for line in dockerfile.splitlines() if line.startswith("COPY")]
    assert copies == [[".", "/src"], ["--from=build", "/wheels", "/wheels"]], copies  # the source, for the wheel
    assert "pip wheel" in dockerfile and "pip install --no-cache-dir /wheels/*.whl" in dockerfile
    assert "[" not in dockerfile.split("pip install", 1)[1].splitlines()[0]  # no extras


# --------------------------------------------------------------------------- inputs
def test_expand_inputs_files_folders_globs(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "a" / ".hidden").mkdir()
    for p in ("a/1.png", "a/deep/2.JPG", "a/.hidden/3.png", "a/notes.txt", "b.bmp", "c.weird"):
        (tmp_path / p).write_bytes(b"x")
    found = expand_inputs([tmp_path / "a", str(tmp_path / "*.bmp"), tmp_path / "c.weird", tmp_path / "a" / "1.png"])
    names = [Path(p).relative_to(tmp_path).as_posix() for p in found]
    assert names == ["a/1.png", "a/deep/2.JPG", "b.bmp", "c.weird"]  # explicit files kept whatever the suffix
    with pytest.raises(FileNotFoundError, match="no such file"):
        expand_inputs([tmp_path / "missing"])
    with pytest.raises(FileNotFoundError, match="no image files"):
        expand_inputs([str(tmp_path / "*.gif")])


# --------------------------------------------------------------------------- tiling
@pytest.mark.parametrize(
    ("config", "count"),
    [
        (TilingConfig(columns=4, rows=3, overlap=0.25), 12),
        (TilingConfig(columns=1, rows=1), 1),
        (TilingConfig(tile_size=1000, overlap=0.5), None),
        (TilingConfig(tile_size=5000), 1),
    ],
)
def test_tiles_cover_the_frame(config: TilingConfig, count: int | None) -> None:
    h, w = 3000, 4000
    boxes = tile_boxes(h, w, config)
    if count is not None:
        assert len(boxes) == count
    covered = np.zeros((h, w), bool)
    for b in boxes:
        assert 0 <= b.y0 < b.y1 <= h and 0 <= b.x0 < b.x1 <= w
        covered[b.y0:b.y1, b.x0:b.x1] = True
    assert covered.all()
    if config.tile_size is not None and config.tile_size < w:
        assert {b.x1 - b.x0 for b in boxes} == {config.tile_size}
        xs = sorted({b.x0 for b in boxes})
        assert max(np.diff(xs)) <= config.tile_size * (1 - config.overlap) + 1  # the asked-for overlap, at least


def test_tiling_config_is_validated() -> None:
    with pytest.raises(ValueError, match="both columns and rows"):
        TilingConfig(columns=3)
    with pytest.raises(ValueError, match="not both"):
        TilingConfig(columns=3, rows=2, tile_size=512)
    with pytest.raises(ValueError):
        TilingConfig(tile_size=512, overlap=0.95)
    assert not TilingConfig(tile_size=512).applies_to(400, 512)
    assert TilingConfig(tile_size=512).applies_to(400, 513)


def test_stitching_averages_overlaps_at_full_resolution() -> None:
    h, w = 300, 500
    boxes = tile_boxes(h, w, TilingConfig(columns=3, rows=2, overlap=0.5))
    stitcher = MapStitcher(h, w)
    for i, b in enumerate(boxes):
        stitcher.add(b, np.full((1, 16, 16), float(i), np.float32))  # maps at the model's resolution
    result = stitcher.result()
    assert result.shape == (h, w)
    counts = np.zeros((h, w))
    sums = np.zeros((h, w))
    for i, b in enumerate(boxes):
        counts[b.y0:b.y1, b.x0:b.x1] += 1
        sums[b.y0:b.y1, b.x0:b.x1] += i
    np.testing.assert_allclose(result, sums / counts, atol=1e-5)
    assert counts.max() > 1  # there were overlaps to average


def test_cut_tiles_resizes_every_window() -> None:
    image = np.random.default_rng(3).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    boxes = tile_boxes(300, 400, TilingConfig(columns=2, rows=2, overlap=0.0))
    tiles = cut_tiles(image, boxes, 64, resize_to)
    assert tiles.shape == (4, 64, 64, 3)
    np.testing.assert_array_equal(tiles[3], resize_to(image[150:, 200:], 64))


def test_score_config_rejects_impossible_combinations() -> None:
    with pytest.raises(ValueError, match="encoded input"):
        ScoreConfig(encoded=True, shared_memory="system")
    with pytest.raises(ValueError):
        ScoreConfig(batch_size=0)
    assert ScoreConfig(protocol="http").endpoint == "localhost:8000"
    assert ScoreConfig(encoded=True).candidates == ["ad_inference_encoded_score", "ad_inference_encoded"]
    assert ScoreConfig(encoded=True, maps=True).candidates == ["ad_inference_encoded"]
    # Score alone: the calibrated network first (no ensemble, no Python step), then the score-only ensemble.
    assert ScoreConfig().candidates == ["ad_inference_fast", "ad_inference_score", "ad_inference"]
    assert ScoreConfig().outputs("ad_inference_fast") == ["score", "raw_score", "is_anomalous"]
    assert ScoreConfig().outputs("ad_inference_score") == ["score", "raw_score", "label"]
    assert ScoreConfig(maps=True).candidates == ["ad_inference"]
    assert ScoreConfig(maps=True, map_format="uint8").candidates == ["ad_inference_map8"]


# --------------------------------------------------------------------------- reports
def test_reports_stream_rows_and_summarise(tmp_path: Path) -> None:
    ok = ImageResult(path="a.png", status="ok", score=0.9, raw_score=1.5, label="anomalous", latency_ms=12.0,
                     width=64, height=64, anomaly_map=np.zeros((4, 4)))
    bad = ImageResult(path="b,with comma.png", status="error", error='cannot decode "b"')
    with ResultWriter(tmp_path / "r.csv", tmp_path / "r.jsonl") as writer:
        writer.write(ok)
        # Streamed: the first row is on disk before the run ends.
        assert len((tmp_path / "r.csv").read_text().splitlines()) == 2
        writer.write(bad)
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS and rows[1]["path"] == "b,with comma.png" and rows[1]["score"] == ""
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert lines[0]["score"] == 0.9 and lines[1]["error"] == 'cannot decode "b"' and "anomaly_map" not in lines[0]

    summary = RunSummary(model="m", protocol="grpc", images=3, scored=2, errors=1, anomalous=1, normal=1,
                         seconds=2.0, latencies_ms=[10.0, 20.0])
    d = summary.to_dict()
    assert d["anomalous_fraction"] == 0.5 and d["images_per_second"] == 1.0
    assert d["latency_ms"]["p50"] == 15.0 and d["latency_ms"]["p99"] == pytest.approx(19.9)
    assert "3 images, 2 scored, 1 errors" in format_summary(summary)
    write_json(tmp_path / "s.json", d)
    assert json.loads((tmp_path / "s.json").read_text())["scored"] == 2


def test_score_help_explains_every_option() -> None:
    out = subprocess.run([sys.executable, "client/client.py", "score", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    for option in ("--protocol", "--batch-size", "--concurrency", "--shared-memory", "--encoded", "--tile-grid",
                   "--tile-size", "--overlap", "--heatmaps", "--evaluate", "--stats"):
        assert option in out
