"""``python client/client.py score``: score files, folders or globs with a served detector.

Writes ``results.csv`` and ``results.jsonl`` (one row per image, streamed as results arrive) and
``summary.json`` into the output folder, prints the summary, and optionally writes heatmaps with a contact
sheet of the most anomalous images, and an evaluation against ground truth (``--evaluate``: the stats JSON's
metrics again, and region detection figures, side by side with another detector's boxes with ``--compare-boxes``).

Exit status: 0 when the run completed (unreadable files are reported in the results and counted, not fatal);
1 when ``--evaluate`` finds served and recorded metrics that disagree; 2 for bad arguments or an unreachable
server or model; 130 when interrupted by Ctrl-C (the rows already written are kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import os
import re
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import ValidationError
from tritonclient.utils import InferenceServerException

from client.evaluation import (
    DETECTION_ROWS,
    BoxesFileError,
    recorded_detection,
    boxes_by_image,
    compare,
    detection_metrics,
    evaluation_samples,
    load_boxes,
    load_stats,
    patch_evaluation_side,
    served_metrics,
)
from client.heatmaps import render_heatmap, write_contact_sheet, write_rgb
from client.inputs import expand_inputs
from client.reports import ResultWriter, format_summary, write_json
from client.results import NOT_SCORED, ImageResult
from client.scoring import ScoreConfig, ScoringSetupError, score_images
from client.transport import error_text
from kdcore.contract import ANOMALOUS, DECISION, ModelNames
from kdcore.detection import DEFAULT_RULE, Detection
from kdcore.layout import DatasetError
from kdcore.options import add_config_options, config_values
from kdcore.probes import client_memory, server_memory
from kdcore.tiling import TilingConfig

#: Longest side of a contact-sheet thumbnail kept in memory while the run goes on.
THUMBNAIL = 512
#: Short forms of the generated options.
SHORT_FLAGS = {"model": ["-m"], "protocol": ["-i"], "url": ["-u"], "batch_size": ["-b"], "concurrency": ["-c"],
               "timeout": ["-t"]}
#: :class:`ScoreConfig` fields the command sets from its other options (``--heatmaps``, ``--evaluate``,
#: ``--tile-grid``), so they get no option of their own.
DERIVED = ("maps", "keep_images", "tiling.columns", "tiling.rows")


def build_parser() -> argparse.ArgumentParser:
    """The ``score`` argument parser."""
    p = argparse.ArgumentParser(
        prog="client.py score",
        description="Score image files, folders (recursive) or glob patterns with a served anomaly detector. "
        "Writes results.csv, results.jsonl and summary.json into --output; unreadable files are reported "
        "there and counted, never fatal.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("inputs", nargs="*",
                   help="image files, folders or quoted glob patterns ('line3/**/*.png'); @FILE reads paths from FILE")
    groups = add_config_options(p, ScoreConfig, exclude=DERIVED, aliases=SHORT_FLAGS)
    groups["tiling"].add_argument("--tile-grid", metavar="COLSxROWS", default=None,
                                  help="score every image as a grid of overlapping windows, e.g. 4x3 "
                                       "(instead of --tile-size)")
    out = p.add_argument_group("outputs")
    out.add_argument("-o", "--output", type=Path, default=Path("scores"),
                     help="folder for results.csv, results.jsonl, summary.json (and evaluation.json)")
    out.add_argument("--heatmaps", type=Path, default=None, metavar="DIR",
                     help="write a heatmap per image (map over image, score, mask outline at the threshold) "
                          "and contact_sheet.png of the most anomalous")
    out.add_argument("--top", type=int, default=16, help="images on the contact sheet")
    out.add_argument("--heatmaps-anomalous-only", action="store_true",
                     help="write heatmaps only for images labelled anomalous (the contact sheet still ranks all)")
    ev = p.add_argument_group("evaluation against ground truth")
    ev.add_argument("--evaluate", type=Path, default=None, metavar="CATEGORY_DIR",
                    help="score <CATEGORY_DIR>/test (MVTec AD layout, masks in ground_truth/) and compare image "
                         "AUROC, pixel AUROC, AUPRO and F1 with the stats JSON's test metrics; print region "
                         "precision, recall, F1, mAP and segmentation F1 against the masks")
    ev.add_argument("--compare-boxes", type=Path, default=None, metavar="FILE",
                    help="another detector's boxes on the same images (JSON: a list of {\"image\": path relative to "
                         "the category folder or file name, \"bbox\": [x, y, w, h] in image pixels, \"score\": s}; "
                         "COCO results with \"image_id\" in an object with an \"images\" list also work): print "
                         "region precision, recall, F1, mAP and segmentation F1 of both in one table")
    ev.add_argument("--boxes-threshold", type=float, default=DECISION,
                    help="--compare-boxes: boxes scoring at least this count for precision, recall, F1 and the "
                         "segmentation F1 (mAP ranks them all)")
    ev.add_argument("--match-rule", choices=["iou", "overlap"], default=DEFAULT_RULE,
                    help="when a region or box finds a true region: 'iou' (box IoU >= 0.5 with its component's box) "
                         "or 'overlap' (its box holds a pixel of it); one-to-one, greedy by score")
    ev.add_argument("--stats", type=Path, default=None,
                    help="stats JSON to compare with (default: <repository>/<model>_scorer/stats.json)")
    ev.add_argument("-r", "--repository", type=Path, default=Path("model_repository"),
                    help="model repository the default --stats is read from")
    ev.add_argument("--metrics-url", default=None,
                    help="Triton metrics endpoint for the server's memory (default: the server host, port 8002)")
    ev.add_argument("--server-pid", type=int, default=None,
                    help="local server process: report the resident memory of it and its backend stubs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    return p


def _tiling(grid: str | None, options: dict[str, Any], parser: argparse.ArgumentParser) -> TilingConfig | None:
    """The tiling of ``--tile-grid`` or ``--tile-size`` (with ``--overlap``), or ``None`` when neither is given."""
    if grid is None and options.get("tile_size") is None:
        return None
    try:
        if grid is not None:
            match = re.fullmatch(r"(\d+)[xX](\d+)", grid)
            if not match:
                parser.error(f"--tile-grid expects COLSxROWS such as 4x3, got {grid!r}")
            return TilingConfig(columns=int(match[1]), rows=int(match[2]), **options)
        return TilingConfig(**options)
    except ValidationError as e:
        parser.error(f"tiling: {e.errors()[0]['msg']}")
    return None


def _heatmap_name(path: str, root: str) -> str:
    """A flat, unique file name for an image's heatmap (its path below the common root, separators as __)."""
    relative = os.path.relpath(path, root) if root else os.path.basename(path)
    stem = os.path.splitext(relative)[0].replace(os.sep, "__").replace("..", "up")
    return re.sub(r"[^\w.\-]+", "_", stem) + ".png"


class _Heatmaps:
    """Writes heatmaps as results arrive and keeps thumbnails of the ``top`` most anomalous for the sheet."""

    def __init__(self, folder: Path, top: int, anomalous_only: bool, root: str) -> None:
        self.folder, self.top, self.anomalous_only, self.root = folder, top, anomalous_only, root
        self.best: list[tuple[float, int, np.ndarray, str]] = []
        self.written = 0
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, result: ImageResult) -> None:
        if not result.ok or result.image is None or result.anomaly_map is None:
            return
        name = _heatmap_name(result.path, self.root)
        rendered = render_heatmap(result.image, result.anomaly_map, score=result.score, label=result.label,
                                  name=os.path.basename(result.path))
        if not self.anomalous_only or result.label == ANOMALOUS:
            write_rgb(self.folder / name, rendered)
            self.written += 1
        scale = THUMBNAIL / max(rendered.shape[:2])
        thumb = cv2.resize(rendered, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else rendered
        where = os.path.relpath(result.path, self.root) if self.root else os.path.basename(result.path)
        entry = (result.score, self.written, thumb, f"{where}  {result.score:.2f} {result.label}")
        if len(self.best) < self.top:
            heapq.heappush(self.best, entry)
        elif entry[0] > self.best[0][0]:
            heapq.heapreplace(self.best, entry)

    def finish(self) -> Path | None:
        if not self.best:
            return None
        items = [(thumb, caption) for _, _, thumb, caption in sorted(self.best, key=lambda e: -e[0])]
        return write_contact_sheet(self.folder / "contact_sheet.png", items,
                                   title=f"{len(items)} most anomalous images")


def _default_metrics_url(url: str) -> str:
    host = url.rsplit(":", 1)[0] if ":" in url else url
    return f"{host}:8002"


def main(argv: list[str] | None = None) -> int:
    """Run ``score``; returns the exit status (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    values = config_values(ScoreConfig, args)
    tiling = _tiling(args.tile_grid, values.pop("tiling"), parser)
    inputs = list(args.inputs)
    samples = []
    if args.evaluate is not None:
        try:
            samples = evaluation_samples(args.evaluate)
        except DatasetError as e:
            parser.error(f"--evaluate: {e}")
        if tiling is not None:
            parser.error("--evaluate scores whole images at the model's input (no tiling)")
        inputs += [str(s.path) for s in samples]
    boxes = None
    if args.compare_boxes is not None:  # refused before anything is scored
        if not samples:
            parser.error("--compare-boxes needs --evaluate CATEGORY_DIR (the masks both are measured against)")
        try:
            boxes = boxes_by_image(load_boxes(args.compare_boxes), samples, args.evaluate, str(args.compare_boxes))
        except BoxesFileError as e:
            parser.error(f"--compare-boxes: {e}")
    if not inputs:
        parser.error("give image files, folders or globs to score (or --evaluate CATEGORY_DIR)")
    try:
        config = ScoreConfig(**values, tiling=tiling, maps=bool(args.heatmaps or samples),
                             keep_images=bool(args.heatmaps))
    except ValidationError as e:
        parser.error("; ".join(f"{'.'.join(map(str, x['loc'])) or 'options'}: {x['msg']}" for x in e.errors()))

    try:
        inputs = expand_inputs(inputs)
    except FileNotFoundError as e:
        parser.error(str(e))
    root = os.path.commonpath([os.path.abspath(p) for p in inputs])
    if os.path.isfile(root):
        root = os.path.dirname(root)
    heatmaps = _Heatmaps(args.heatmaps, args.top, args.heatmaps_anomalous_only, root) if args.heatmaps else None
    kept: dict[str, ImageResult] = {}
    failures: dict[str, str] = {}

    def on_result(result: ImageResult) -> None:
        writer.write(result)
        if heatmaps is not None:
            heatmaps.add(result)
        if samples:
            kept[os.path.abspath(result.path)] = dataclasses.replace(result, image=None)
        if not result.ok:
            failures[result.path] = result.error or ""
            if not args.quiet:
                print(f"error: {result.path}: {result.error}", file=sys.stderr)
        result.image = None  # heatmaps are written; do not hold full frames

    args.output.mkdir(parents=True, exist_ok=True)
    try:
        with ResultWriter(args.output / "results.csv", args.output / "results.jsonl") as writer:
            summary = score_images(inputs, config, on_result, progress=not (args.no_progress or args.quiet))
    except (InferenceServerException, ConnectionError, ScoringSetupError) as e:
        print(f"score: cannot score on {config.endpoint} ({config.protocol}): {error_text(e)}", file=sys.stderr)
        return 2
    payload: dict[str, Any] = {"config": config.model_dump(mode="json"), **summary.to_dict()}
    if heatmaps is not None:
        sheet = heatmaps.finish()
        payload["heatmaps"] = {"folder": str(args.heatmaps), "written": heatmaps.written,
                               "contact_sheet": str(sheet) if sheet else None}
    unscored = [p for p, reason in failures.items() if reason.startswith(NOT_SCORED)]
    if unscored:  # the server went away: list what to send again with `score @not_scored.txt`
        (args.output / "not_scored.txt").write_text("".join(f"{p}\n" for p in unscored), encoding="utf-8")
        payload["not_scored_list"] = str(args.output / "not_scored.txt")
    write_json(args.output / "summary.json", payload)
    print(format_summary(summary))
    if unscored:
        print(f"{len(unscored)} images not scored (server unreachable): score them again with "
              f"`client.py score @{args.output / 'not_scored.txt'}`")
    print(f"results: {args.output / 'results.csv'}, {args.output / 'results.jsonl'}, {args.output / 'summary.json'}")
    if summary.interrupted:
        return 130
    if samples:
        return _evaluate(args, config, samples, kept, summary.to_dict(), boxes)
    return 0


def _detection_table(detection: dict[str, Any], model: str, boxes_file: Path | None) -> str:
    """The detection figures of the served regions (beside the stats JSON's, when it has them), and of the other
    detector's boxes, as one table."""
    rule = (f"IoU >= {detection['iou_threshold']:g}" if detection["rule"] == "iou" else "overlap with a true region")
    columns = [(model, detection["regions"])]
    if detection.get("recorded") is not None:
        columns.append(("stats JSON", {**{k: None for k in ("predictions", "true_positives", "true_regions")},
                                       **detection["recorded"]}))
    if detection["boxes"] is not None:
        columns.append((f"{boxes_file.name} (score >= {detection['boxes_threshold']:g})", detection["boxes"]))
    width = max(14, *(len(name) for name, _ in columns))
    lines = [f"detection against the ground-truth masks ({rule}, one-to-one by score; AP {detection['interpolation']}"
             f"; {detection['frame']}):", f"  {'':18s}" + "".join(f"  {name:>{width}s}" for name, _ in columns)]
    for key, label in DETECTION_ROWS:
        lines.append(f"  {label:18s}" + "".join(
            f"  {'-' if f[key] is None else format(f[key], '.4f'):>{width}s}" for _, f in columns))
    for key, label in (("predictions", "regions / boxes"), ("true_positives", "true positives"),
                       ("true_regions", "true regions")):
        lines.append(f"  {label:18s}" + "".join(f"  {'-' if f[key] is None else f[key]:>{width}}" for _, f in columns))
    return "\n".join(lines)


def _evaluate(args, config: ScoreConfig, samples, kept: dict[str, ImageResult], run: dict[str, Any],
              boxes: dict[str, list[Detection]] | None = None) -> int:
    """Metrics of the served outputs, compared with the stats JSON, and detection figures (of another detector's
    ``boxes`` too); writes evaluation.json."""
    by_path = {str(s.path): kept.get(os.path.abspath(s.path)) for s in samples}
    by_path = {k: v for k, v in by_path.items() if v is not None}
    stats_path = args.stats or args.repository / ModelNames(config.model).scorer / "stats.json"
    stats = load_stats(stats_path) if stats_path.is_file() else None
    try:  # a patch-trained model is measured at the side its training report used
        served = served_metrics(samples, by_path, patch_evaluation_side(stats))
    except ValueError as e:
        print(f"EVALUATE: FAIL: {e}")
        return 1
    report: dict[str, Any] = {
        "model": config.model, "dataset": str(args.evaluate), "images": len(samples), "served": served,
        "throughput_images_per_second": run["images_per_second"], "latency_ms": run["latency_ms"],
        "client_memory": client_memory(),
        "server_memory": server_memory(args.metrics_url or _default_metrics_url(config.endpoint), args.server_pid),
    }
    status = 0
    if stats is not None:
        comparison = compare(served, stats, samples)
        report.update(stats=str(stats_path), comparison=comparison.to_dict())
        status = 0 if comparison.agree else 1
        for k in comparison.served:
            rec, diff = comparison.recorded[k], comparison.differences[k]
            print(f"  {k:12s} served {comparison.served[k]:.4f}  recorded "
                  + (f"{rec:.4f}  |diff| {diff:.4f}" if rec is not None and diff is not None else "-"))
        if not comparison.counts_match:
            print(f"  note: {args.evaluate}/test does not have the image counts of the recorded test split")
        print(f"EVALUATE: {'PASS' if comparison.agree else 'FAIL'}: served metrics "
              f"{'agree with' if comparison.agree else 'differ from'} {stats_path} (tolerance 0.005)")
    else:
        print(f"EVALUATE: served metrics {served}; no stats JSON at {stats_path} to compare with (--stats)")
    detection = detection_metrics(samples, by_path, boxes=boxes, rule=args.match_rule,
                                  boxes_threshold=args.boxes_threshold)
    report["detection"] = {**detection, "recorded": None if stats is None else recorded_detection(stats),
                           "boxes_file": None if boxes is None else str(args.compare_boxes)}
    print(_detection_table(report["detection"], config.model, args.compare_boxes))
    write_json(args.output / "evaluation.json", report)
    return status

