"""``kd-compare``: train every detector on the demo data, serve them all, and compare accuracy and speed.

One command, every figure from this machine: method, backbone, parameters, GFLOPs, image AUROC, pixel AUROC,
AUPRO (test split, thresholds from validation), in-process ONNX Runtime images/s at batch 1 and 8, and served
images/s over gRPC, score only (the calibrated network ``<model>_fast`` where the repository has it), 4 requests
in flight of one image each and of ``client.py score``'s default batch. The table is printed, written as JSON,
and written into README.md between the ``compare`` markers, with the student's speed-up over its teacher stated
served against served and in-process against in-process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.measure import ort_run, ort_session, served_run
from bench.readme import publish
from bench.serving import CLIENT_BATCH
from kdcore.manifest import MANIFEST_FILE, Manifest, validation_folder

log = logging.getLogger(__name__)



@dataclass
class Row:
    """One detector's figures."""

    model: str
    method: str
    backbone: str
    parameters: int
    gflops: float
    image_auroc: float | None
    pixel_auroc: float | None
    aupro: float | None
    ort_batch1: float
    ort_batch8: float
    served_grpc: float | None = None
    """Single-image requests, 4 in flight."""
    served_grpc_batched: float | None = None
    """Requests of ``client.py score``'s default batch, 4 in flight."""


def lstm_flops(lstm: torch.nn.LSTM, steps: int) -> int:
    """FLOPs of an LSTM over ``steps`` (2 x the multiply-accumulates of its gate products), which torch's counter
    leaves out (``aten::lstm`` is one fused op to it): per step, direction and layer ``4 H (I + H)`` MACs."""
    directions = 2 if lstm.bidirectional else 1
    total, width = 0, lstm.input_size
    for _ in range(lstm.num_layers):
        total += 2 * 4 * lstm.hidden_size * (width + lstm.hidden_size) * steps * directions
        width = lstm.hidden_size * directions
    return total


def gflops(model: torch.nn.Module, example: torch.Tensor) -> float:
    """Forward GFLOPs of one input (2 x multiply-accumulates): counted by torch, plus :func:`lstm_flops` for every
    LSTM the input runs through."""
    recurrent: list[int] = []

    def count(module: torch.nn.Module, inputs: tuple) -> None:
        sequence = inputs[0]
        recurrent.append(lstm_flops(module, sequence.shape[1 if module.batch_first else 0]))

    hooks = [m.register_forward_pre_hook(count) for m in model.modules() if isinstance(m, torch.nn.LSTM)]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return (counter.get_total_flops() + sum(recurrent)) / 1e9


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def markdown_table(rows: list[Row]) -> str:
    """The comparison as a Markdown table."""
    head = ("| model | method | backbone | params | GFLOPs | image AUROC | pixel AUROC | AUPRO | ORT img/s b1 | "
            f"ORT img/s b8 | served img/s gRPC, 1 image x 4 | served img/s gRPC, {CLIENT_BATCH} images x 4 |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r.model} | {r.method} | {r.backbone} | {r.parameters / 1e6:.2f} M | {r.gflops:.3f} | {_fmt(r.image_auroc)} | "
        f"{_fmt(r.pixel_auroc)} | {_fmt(r.aupro)} | {r.ort_batch1:.0f} | {r.ort_batch8:.0f} | "
        f"{_fmt(r.served_grpc, 0)} | {_fmt(r.served_grpc_batched, 0)} |\n"
        for r in rows
    )


def speedup_sentence(teacher: Row, student: Row) -> tuple[str, bool]:
    """The student's speed-up over its teacher, each figure against its own kind (served against served,
    in-process against in-process), and its image AUROC change; and whether it meets the target (served at the
    client's batch >= 5x, <= 2 points of image AUROC lost)."""
    in_process = student.ort_batch8 / teacher.ort_batch8
    served = [s / t if s and t else None for s, t in ((student.served_grpc_batched, teacher.served_grpc_batched),
                                                      (student.served_grpc, teacher.served_grpc))]
    loss = 100 * ((teacher.image_auroc or 0) - (student.image_auroc or 0))
    # A student can score higher than its teacher on a small test split: say so instead of "-0.8 points lost"; and
    # a tie is a tie, not "-0.0 points gained".
    if round(loss, 1) == 0:
        change = "no image AUROC lost"
    elif loss > 0:
        change = f"{loss:.1f} points of image AUROC lost"
    else:
        change = f"{-loss:.1f} points of image AUROC gained"
    meets = served[0] is not None and served[0] >= 5 and loss <= 2
    text = (f"served over gRPC {_fmt(served[0], 1)}x the teacher's throughput with {CLIENT_BATCH} images per request "
            f"and {_fmt(served[1], 1)}x with one (4 requests in flight, both served the same way); in-process "
            f"{in_process:.1f}x (ONNX Runtime, batch 8); {change}")
    return text, meets


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(
        prog="kd-compare",
        description="Train RD4AD, the score-regressing student, multi-teacher and MKD on the demo data (and "
        "KD-AE on digits), export them into one repository, serve it, and print the comparison table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-root", type=Path, default=Path("data/demo"), help="demo data (written if missing)")
    parser.add_argument("--category", default="brick", help="demo category")
    parser.add_argument("--runs", type=Path, default=Path("runs/compare"), help="folder for the runs")
    parser.add_argument("--repository", type=Path, default=Path("runs/compare/model_repository"), help="repository to export into")
    parser.add_argument("--epochs", type=int, default=40, help="epochs for every image method")
    parser.add_argument("--student-epochs", type=int, default=80,
                        help="epochs for the score-regressing student (it needs more passes than its teacher)")
    parser.add_argument("--image-size", type=int, default=256, help="input side")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, splits and training")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput measurement")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime threads")
    parser.add_argument("--skip-training", action="store_true", help="reuse the runs already in --runs")
    parser.add_argument("--readme", type=Path, default=Path("README.md"), help="README to write the table into ('' to skip)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from export.repository import export_runs
    from serving.embedded import TritonServer, free_port
    from training.checkpoint import load_deployable
    from training.config import TrainConfig
    from training.demo_data import write_demo_dataset
    from training.kdae import KDAEConfig, train_kdae
    from training.methods import Method
    from training.runs import RunPaths
    from training.train import train

    write_demo_dataset(args.data_root, args.category, seed=args.seed, image_size=args.image_size)
    common = {"data_root": args.data_root, "category": args.category, "image_size": args.image_size, "epochs": args.epochs,
                  "seed": args.seed}
    runs = {
        "ad_inference": args.runs / "rd4ad",
        "ad_inference_student": args.runs / "student",
        "ad_inference_multiteacher": args.runs / "multiteacher",
        "ad_inference_mkd": args.runs / "mkd",
        "kdae_digits": args.runs / "kdae_digits",
    }
    if not args.skip_training:
        train(TrainConfig(method=Method.RD4AD, output=runs["ad_inference"], **common))
        train(TrainConfig(method=Method.STUDENT, teacher_run=runs["ad_inference"], output=runs["ad_inference_student"],
                          **{**common, "epochs": args.student_epochs}))
        train(TrainConfig(method=Method.MULTITEACHER, output=runs["ad_inference_multiteacher"], **common))
        train(TrainConfig(method=Method.MKD, output=runs["ad_inference_mkd"], **common))
        train_kdae(KDAEConfig(output=runs["kdae_digits"], seed=args.seed))
    results = export_runs([(path, name) for name, path in runs.items()], args.repository, threads=args.threads)

    rows: list[Row] = []
    for result in results:
        name = result.names.name
        model, _spec, stats = load_deployable(runs[name])
        samples = np.load(RunPaths(runs[name]).samples)["inputs"]
        onnx_path = result.repository / result.names.onnx / "1" / "model.onnx"
        m = stats.test_metrics
        rows.append(Row(
            model=name, method=stats.model.method, backbone=stats.model.backbone, parameters=stats.model.parameters,
            gflops=gflops(model, torch.from_numpy(samples)), image_auroc=m.image_auroc, pixel_auroc=m.pixel_auroc,
            aupro=m.aupro,
            ort_batch1=ort_run(session := ort_session(onnx_path, args.threads), samples, 1, args.seconds).images_per_second,
            ort_batch8=ort_run(session, samples, 8, args.seconds).images_per_second,
        ))
        log.info("%s: %s", name, rows[-1])

    workdir = args.runs / "triton"
    with TritonServer(args.repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                      workdir=workdir, log_path=workdir / "server.log") as server:
        for row, result in zip(rows, results):
            samples = np.load(RunPaths(runs[row.model]).samples)["inputs"]
            manifest = Manifest.load(validation_folder(result.repository, row.model) / MANIFEST_FILE)
            row.served_grpc, row.served_grpc_batched = (
                served_run(server.grpc_url, "grpc", manifest.score_model, manifest.input, samples, concurrency=4,
                           seconds=args.seconds, batch=batch).images_per_second
                for batch in (1, CLIENT_BATCH))

    table = markdown_table(rows)
    print(table)
    (args.runs / "compare.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    teacher = next(r for r in rows if r.model == "ad_inference")
    student = next(r for r in rows if r.model == "ad_inference_student")
    text, meets = speedup_sentence(teacher, student)
    verdict = "meets" if meets else "misses"
    print(f"student vs RD4AD: {text}: {verdict} the target (>= 5x served, <= 2 points lost)")
    return publish(args.readme, "compare", table + f"\nStudent vs RD4AD: {text} ({verdict} the >= 5x served / "
                   "<= 2 points lost target).\n", "kd-compare", "kd-compare")


if __name__ == "__main__":
    sys.exit(main())
