"""The production scoring client against the real server: folders, both protocols, reports, heatmaps, corrupt
files, tiling of large frames, shared memory, encoded input and evaluation against the stats JSON."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from client.client import main as client_main
from client.heatmaps import legend_height
from client.scoring import ScoreConfig, ScoringSetupError, score_images
from export.repository import ExportResult
from kdcore.imageio import read_image
from kdcore.tiling import TilingConfig
from serving.embedded import TritonServer
from training.train import TrainResult

pytestmark = pytest.mark.server

#: The large image of the mixed folder: 4x4 demo images, each upscaled 4x (the model's input is 64 px).
MOSAIC_GRID, MOSAIC_UP = 4, 4


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _mosaic(folder: Path) -> np.ndarray:
    """A large image (BGR) of 4x4 demo good images of ``folder``/good, each upscaled 4x."""
    goods = sorted((folder / "good").glob("*.png"))
    tiles = [cv2.imread(str(goods[i % len(goods)])) for i in range(MOSAIC_GRID**2)]
    tiles = [cv2.resize(t, None, fx=MOSAIC_UP, fy=MOSAIC_UP, interpolation=cv2.INTER_CUBIC) for t in tiles]
    return np.vstack([np.hstack(tiles[r * MOSAIC_GRID:(r + 1) * MOSAIC_GRID]) for r in range(MOSAIC_GRID)])


@pytest.fixture(scope="module")
def mixed_folder(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good and anomalous images, a corrupt file, a truncated JPEG and a large frame, in nested folders."""
    folder = tmp_path_factory.mktemp("camera")
    test = demo_root / "brick" / "test"
    files: dict[str, Path] = {}
    for kind, count in (("good", 3), ("hole", 2), ("scratch", 2)):
        for src in sorted((test / kind).glob("*.png"))[:count]:
            dst = folder / ("good" if kind == "good" else "bad") / f"{kind}_{src.name}"
            dst.parent.mkdir(exist_ok=True)
            shutil.copy(src, dst)
            files[dst.name] = dst
    (folder / "corrupt.png").write_bytes(b"GIF89a? no: random bytes, not an image")
    ok, jpeg = cv2.imencode(".jpg", cv2.imread(str(min((test / "good").glob("*.png")))))
    assert ok
    (folder / "truncated.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    cv2.imwrite(str(folder / "frame.png"), _mosaic(test))
    (folder / "notes.txt").write_text("not an image: folders only contribute image suffixes")
    files.update({p.name: p for p in (folder / "corrupt.png", folder / "truncated.jpg", folder / "frame.png")})
    return files


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_score_folder_end_to_end(
    protocol: str, server: TritonServer, mixed_folder: dict[str, Path], tmp_path: Path, capsys
) -> None:
    folder = mixed_folder["frame.png"].parent
    out, heat = tmp_path / "out", tmp_path / "heatmaps"
    rc = client_main(["score", str(folder), "-i", protocol, "-u", server.url(protocol), "-b", "4", "-c", "3",
                      "-o", str(out), "--heatmaps", str(heat), "--top", "4", "--no-progress"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    rows = _read_csv(out / "results.csv")
    by_name = {Path(r["path"]).name: r for r in rows}
    assert set(by_name) == set(mixed_folder), "every image file scored once, the .txt ignored"
    with open(out / "results.jsonl", encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    assert [line["path"] for line in lines] == [r["path"] for r in rows]

    assert by_name["corrupt.png"]["status"] == "error" and "decode" in by_name["corrupt.png"]["error"]
    assert by_name["truncated.jpg"]["status"] == "error" and "truncated JPEG" in by_name["truncated.jpg"]["error"]
    assert "corrupt.png" in printed.err and "truncated.jpg" in printed.err
    scored = [r for r in rows if r["status"] == "ok"]
    assert len(scored) == len(rows) - 2
    for r in scored:
        assert 0.0 <= float(r["score"]) <= 1.0 and float(r["latency_ms"]) > 0
        assert r["label"] == ("anomalous" if float(r["score"]) >= 0.5 else "normal"), r
    assert (by_name["frame.png"]["width"], by_name["frame.png"]["height"]) == ("1024", "1024")
    good = [float(by_name[n]["score"]) for n in by_name if n.startswith("good_")]
    bad = [float(by_name[n]["score"]) for n in by_name if n.startswith(("hole_", "scratch_"))]
    assert min(bad) > max(good), (good, bad)

    summary = json.loads((out / "summary.json").read_text())
    assert (summary["images"], summary["scored"], summary["errors"]) == (len(rows), len(scored), 2)
    assert summary["anomalous"] + summary["normal"] == len(scored)
    assert summary["anomalous"] == sum(r["label"] == "anomalous" for r in scored)
    assert summary["images_per_second"] > 0 and summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"] > 0
    assert f"{len(rows)} images, {len(scored)} scored, 2 errors" in printed.out

    # One heatmap per scored image at the image's full resolution (plus the colour-scale strip).
    for r in scored:
        rel = Path(r["path"]).relative_to(folder)
        heatmap = cv2.imread(str(heat / ("__".join(rel.with_suffix("").parts) + ".png")))
        h, w = int(r["height"]), int(r["width"])
        assert heatmap is not None and heatmap.shape == (h + legend_height(h, w), w, 3), rel
    sheet = cv2.imread(str(heat / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] > 256 and summary["heatmaps"]["written"] == len(scored)


def _scores(server: TritonServer, paths: list[Path], **options) -> dict[str, tuple[float, float, str]]:
    protocol = options.pop("protocol", "grpc")
    results = []
    summary = score_images([str(p) for p in paths], ScoreConfig(protocol=protocol, url=server.url(protocol), **options),
                           results.append)
    assert summary.scored + summary.errors == summary.images and not summary.interrupted
    return {Path(r.path).name: (r.score, r.raw_score, r.label) if r.ok else r.error for r in results}


def test_shared_memory_and_encoded_input_match_the_plain_path(
    server: TritonServer, mixed_folder: dict[str, Path]
) -> None:
    paths = [p for n, p in mixed_folder.items() if n != "frame.png"]
    plain = _scores(server, paths)
    variants = {
        "grpc + system shared memory": _scores(server, paths, shared_memory="system", batch_size=3),
        "http + system shared memory": _scores(server, paths, protocol="http", shared_memory="system"),
        "grpc + encoded files": _scores(server, paths, encoded=True),
        "http + encoded files": _scores(server, paths, protocol="http", encoded=True, batch_size=2),
    }
    for name, got in variants.items():
        assert got.keys() == plain.keys(), name
        for image, want in plain.items():
            if isinstance(want, str):  # unreadable: an error on every path (client- or server-side decoding)
                assert isinstance(got[image], str) and got[image], (name, image)
                continue
            assert got[image][2] == want[2], (name, image)
            np.testing.assert_allclose(got[image][:2], want[:2], atol=1e-5, err_msg=f"{name}: {image}")
    # Encoded input: the server's decoder names the problem; the other files of the batch are still scored.
    assert "decoder" in variants["grpc + encoded files"]["truncated.jpg"]
    assert "truncated JPEG" in variants["grpc + encoded files"]["truncated.jpg"]


def test_encoded_input_uses_a_fraction_of_the_bandwidth(mixed_folder: dict[str, Path]) -> None:
    image = read_image(mixed_folder["frame.png"])
    ok, jpeg = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok and len(jpeg) < image.nbytes / 5


def test_tiling_finds_a_small_defect_that_whole_image_resizing_misses(
    server: TritonServer, demo_root: Path, tmp_path: Path
) -> None:
    # A 1024x1024 frame of 4x4 good parts, each a training image upscaled 4x: a 256-px window shows one part at
    # the scale the model was trained on, the whole frame resized to 64 px shows each part 16x smaller.
    frame = _mosaic(demo_root / "brick" / "train")
    # The defect: fine structure (a 4-px checker, e.g. a crack network) that keeps the local mean colour, so
    # area-averaging 16x erases it while a 4x reduction keeps it.
    size = 64  # 0.4 % of the frame
    y0, x0 = 256 + 96, 256 + 120
    defect = frame.copy()
    patch = defect[y0:y0 + size, x0:x0 + size].astype(np.int16)
    yy, xx = np.mgrid[:size, :size]
    sign = np.where(((yy // 4) + (xx // 4)) % 2 == 0, 1, -1)[..., None]
    defect[y0:y0 + size, x0:x0 + size] = np.clip(patch.mean(axis=(0, 1)) + 70 * sign, 0, 255).astype(np.uint8)
    centre, radius = (x0 + size // 2, y0 + size // 2), size // 2
    cv2.imwrite(str(tmp_path / "clean.png"), frame)
    cv2.imwrite(str(tmp_path / "defect.png"), defect)

    def run(tiling: TilingConfig | None):
        results = {}
        score_images([tmp_path / "clean.png", tmp_path / "defect.png"],
                     ScoreConfig(url=server.grpc_url, tiling=tiling, maps=True, batch_size=4),
                     lambda r: results.__setitem__(Path(r.path).stem, r))
        return results["clean"], results["defect"]

    whole = run(None)
    by_grid = run(TilingConfig(columns=4, rows=4, overlap=0.0))
    by_size = run(TilingConfig(tile_size=256, overlap=0.0))
    for name, (clean, found) in (("whole frame", whole), ("4x4 grid", by_grid), ("256-px windows", by_size)):
        print(f"{name}: clean {clean.score:.3f} {clean.label}, defect {found.score:.3f} {found.label}, "
              f"{found.tiles} tile(s)")

    # Resized whole, the checker averages away: the frame with it is not told apart from the clean one.
    assert whole[0].label == whole[1].label
    assert whole[1].anomaly_map.shape == (64, 64) and whole[1].tiles == 1
    # Tiled, the defect frame is anomalous, the clean one normal, and the full-resolution map peaks on the pit.
    for clean, found in (by_grid, by_size):
        assert clean.label == "normal" and found.label == "anomalous"
        assert found.tiles == 16 and found.anomaly_map.shape == (1024, 1024)
        y, x = np.unravel_index(np.argmax(found.anomaly_map), found.anomaly_map.shape)
        assert np.hypot(x - centre[0], y - centre[1]) < 4 * radius, (x, y)


def test_evaluate_reproduces_the_stats_json(
    server: TritonServer, demo_root: Path, trained_run: TrainResult, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "eval"
    rc = client_main(["score", "--evaluate", str(demo_root / "brick"), "--stats", str(trained_run.paths.stats),
                      "-u", server.grpc_url, "-o", str(out), "--no-progress", "--server-pid", str(server.process.pid),
                      "--metrics-url", f"127.0.0.1:{server.metrics_port}"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads((out / "evaluation.json").read_text())
    comparison = report["comparison"]
    assert comparison["agree"] and comparison["counts_match"]
    recorded = json.loads(trained_run.paths.stats.read_text())["test_metrics"]
    for k in ("image_auroc", "pixel_auroc", "aupro", "image_f1"):
        assert recorded[k] is not None and abs(report["served"][k] - recorded[k]) <= 0.005, k
    assert report["images"] == recorded["num_good"] + recorded["num_anomalous"]
    assert report["throughput_images_per_second"] > 0 and report["latency_ms"]["p99"] > 0
    assert report["client_memory"]["peak_rss_bytes"] > 10e6
    assert report["server_memory"]["process_tree_rss_bytes"] > 50e6
    # Triton's host gauge is machine-wide and 0 until its first poll: present means a real size, absent is named.
    memory = report["server_memory"]
    assert memory.get("nv_cpu_memory_used_bytes", 1) > 0
    assert "nv_cpu_memory_used_bytes" in memory or "nv_cpu_memory_used_bytes" in memory["not_reported"]
    assert "EVALUATE: PASS" in printed


def test_interrupted_run_keeps_what_was_written(server: TritonServer, demo_root: Path, tmp_path: Path) -> None:
    from client.reports import ResultWriter

    paths = sorted((demo_root / "brick" / "test").glob("*/*.png"))
    seen = []

    def on_result(result) -> None:
        writer.write(result)
        seen.append(result)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with ResultWriter(tmp_path / "r.csv", None) as writer:
        summary = score_images(paths, ScoreConfig(url=server.grpc_url, batch_size=1, concurrency=1), on_result)
    assert summary.interrupted and summary.scored == 3 and summary.not_scored == len(paths) - 3
    assert len(_read_csv(tmp_path / "r.csv")) == 3


def test_setup_errors_are_clear(server: TritonServer, mixed_folder: dict[str, Path], tmp_path: Path, capsys) -> None:
    image = mixed_folder["frame.png"]
    with pytest.raises(ScoringSetupError, match="max_batch_size"):
        score_images([image], ScoreConfig(url=server.grpc_url, batch_size=64), print)
    with pytest.raises(ValueError, match="encoded input"):
        ScoreConfig(encoded=True, tiling=TilingConfig(tile_size=256))
    rc = client_main(["score", str(image), "-u", "127.0.0.1:9", "-o", str(tmp_path), "--no-progress"])
    assert rc == 2 and "cannot score on 127.0.0.1:9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        client_main(["score", str(tmp_path / "missing"), "-o", str(tmp_path)])
    with pytest.raises(SystemExit):
        client_main(["score", str(image), "--tile-grid", "4by3"])
    assert server.is_ready()


def test_export_ships_the_one_image_codec(exported: ExportResult) -> None:
    import kdcore.imageio

    shipped = exported.repository / exported.names.decoder / "1" / "kdcore" / "imageio.py"  # the shipped core
    assert shipped.read_text() == Path(kdcore.imageio.__file__).read_text()


def test_ctrl_c_stops_the_command_cleanly(server: TritonServer, demo_root: Path, tmp_path: Path) -> None:
    """A real SIGINT to ``client.py score``: exit 130, every row written so far kept, the summary says so."""
    import signal
    import subprocess
    import sys
    import time

    images = tmp_path / "images"
    images.mkdir()
    source = min((demo_root / "brick" / "test" / "good").glob("*.png"))
    for i in range(400):
        shutil.copy(source, images / f"{i:04d}.png")
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    # Output to files, not pipes: nothing the child prints can block it while the test waits.
    with open(tmp_path / "stdout.txt", "w") as stdout_file, open(tmp_path / "stderr.txt", "w") as stderr_file:
        proc = subprocess.Popen([sys.executable, "client/client.py", "score", str(images), "-u", server.grpc_url,
                                 "-b", "1", "-c", "1", "-o", str(out), "--no-progress"], cwd=root,
                                stdout=stdout_file, stderr=stderr_file)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if (out / "results.csv").is_file() and len((out / "results.csv").read_text().splitlines()) > 5:
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=90)
        finally:
            proc.kill()
    stdout, stderr = (tmp_path / "stdout.txt").read_text(), (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 130, stderr
    summary = json.loads((out / "summary.json").read_text())
    rows = _read_csv(out / "results.csv")
    assert summary["interrupted"] and 5 <= summary["scored"] < 400
    assert len(rows) == summary["scored"] and summary["not_scored"] == 400 - summary["scored"]
    assert "not scored (interrupted)" in stdout
    assert server.is_ready()


def test_output_profiles_score_only_and_uint8_maps(server: TritonServer, mixed_folder: dict[str, Path]) -> None:
    """Score alone goes to the calibrated network <model>_fast (no map sent, no Python step), with the full
    ensemble's scores and labels; --map-format uint8 gets maps within half a step."""
    paths = [mixed_folder[n] for n in sorted(mixed_folder) if n.startswith(("good_", "hole_"))]

    def run(**options):
        results = {}
        summary = score_images(paths, ScoreConfig(url=server.grpc_url, **options),
                               lambda r: results.__setitem__(r.path, r))
        return summary, results

    score_summary, score_only = run()
    full_summary, full = run(maps=True)
    u8_summary, u8 = run(maps=True, map_format="uint8")
    assert (score_summary.model, full_summary.model, u8_summary.model) == (
        "ad_inference_fast", "ad_inference", "ad_inference_map8")
    for path, want in full.items():
        assert score_only[path].anomaly_map is None and score_only[path].score == pytest.approx(want.score, abs=1e-6)
        assert score_only[path].label == want.label
        assert u8[path].label == want.label
        np.testing.assert_allclose(u8[path].anomaly_map, want.anomaly_map, atol=0.5 / 255 + 1e-6)


def test_evaluate_compare_boxes_prints_both_detectors_in_one_table(
    server: TritonServer, demo_root: Path, trained_run: TrainResult, tmp_path: Path, capsys
) -> None:
    """``--evaluate --compare-boxes``: a 'detector' whose boxes are the true regions' own boxes (score 0.9) plus one
    false box on a good image (0.6) finds every region: recall 1, precision n / (n + 1), mAP 1 (the false box ranks
    last). The served regions' segmentation F1 is the served pixel F1, and their figures are the training
    report's. results.jsonl holds each image's regions."""
    from kdcore.imageio import binary_mask
    from kdcore.layout import scan_split
    from kdcore.regions import anomalous_regions

    category = demo_root / "brick"
    samples = scan_split(category, "test")
    predictions = []
    for s in samples:  # the demo images are 64 px, the model's input: map pixels are image pixels
        if s.mask_path is not None:
            for r in anomalous_regions(binary_mask(read_image(s.mask_path), 64).astype(np.float32)):
                predictions.append({"image": s.path.relative_to(category).as_posix(), "bbox": list(r.xywh),
                                    "score": 0.9})
    good = next(s for s in samples if s.label == 0)
    predictions.append({"image": good.path.relative_to(category / "test").as_posix(), "bbox": [0, 0, 8, 8],
                        "score": 0.6})
    boxes = tmp_path / "detector.json"
    boxes.write_text(json.dumps(predictions))
    out = tmp_path / "eval"
    rc = client_main(["score", "--evaluate", str(category), "--stats", str(trained_run.paths.stats),
                      "--compare-boxes", str(boxes), "-u", server.grpc_url, "-o", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    table = printed[printed.index("detection against the ground-truth masks (IoU >= 0.5"):]
    print(table)
    assert "ad_inference" in table.splitlines()[1] and "detector.json (score >= 0.5)" in table.splitlines()[1]
    for label in ("region precision", "region recall", "region F1", "mAP", "segmentation F1", "true regions"):
        assert label in table
    report = json.loads((out / "evaluation.json").read_text())
    detection = report["detection"]
    theirs, ours = detection["boxes"], detection["regions"]
    n = len(predictions) - 1
    assert (theirs["true_regions"], theirs["predictions"], theirs["true_positives"]) == (n, n + 1, n)
    assert theirs["recall"] == 1.0 and theirs["precision"] == pytest.approx(n / (n + 1)) and theirs["ap"] == 1.0
    assert 0 < theirs["segmentation_f1"] <= 1 and detection["boxes_file"] == str(boxes)
    assert ours["true_regions"] == n and ours["segmentation_f1"] == pytest.approx(report["served"]["pixel_f1"])
    # The training report's figures beside the served ones: same maps (within the export tolerance), same rule.
    recorded = detection["recorded"]
    assert "stats JSON" in table.splitlines()[1] and recorded is not None
    for k, want in recorded.items():
        assert want is not None and ours[k] == pytest.approx(want, abs=0.005), k
    for k in ("precision", "recall", "f1", "ap"):
        assert ours[k] is None or 0.0 <= ours[k] <= 1.0, k
    rows = {r["path"]: r for r in _read_csv(out / "results.csv")}
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(isinstance(line["regions"], list) and rows[line["path"]]["regions"] == str(len(line["regions"]))
               for line in lines)
    assert sum(len(line["regions"]) for line in lines) == ours["predictions"]
