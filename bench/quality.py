"""``kd-bench-quality``: detection quality per category, on categories where detectors differ.

The demo category is easy (every method reaches image AUROC 1.0). This benchmark writes the benchmark categories
of :mod:`training.demo_data.benchmark` (a sparse, a stochastic and a periodic texture and two aligned objects,
with other photos and other defect kinds than the demo's), trains each image method on each with ``kd-train``'s
defaults, exports every run into one repository, serves it, and reports per category and as a mean over the
categories: image AUROC, pixel AUROC, AUPRO (test split; thresholds and kept epochs from validation), training
seconds, and served images/s over gRPC (the score-only ensemble, 4 requests in flight). JSON and a Markdown table,
optionally written into README.md between the ``quality`` markers.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.measure import served_run
from bench.readme import publish
from kdcore.manifest import ValidationSamples, validation_folder

log = logging.getLogger(__name__)

#: The image methods, in table order (the student distils the RD4AD run of the same category).
METHODS = ("rd4ad", "student", "multiteacher", "mkd")
METRICS = ("image_auroc", "pixel_auroc", "aupro")


@dataclass
class Cell:
    """One method on one category."""

    category: str
    method: str
    model: str
    image_auroc: float | None
    pixel_auroc: float | None
    aupro: float | None
    train_seconds: float
    served_images_per_second: float | None = None


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def means(cells: list[Cell], method: str) -> dict[str, float | None]:
    """The mean of each metric over the categories (``None`` if a category lacks it), and of the seconds."""
    mine = [c for c in cells if c.method == method]
    out: dict[str, float | None] = {}
    for key in (*METRICS, "train_seconds", "served_images_per_second"):
        values = [getattr(c, key) for c in mine]
        out[key] = None if not values or any(v is None or math.isnan(v) for v in values) else sum(values) / len(values)
    return out


def markdown_table(cells: list[Cell], categories: list[str], methods: list[str]) -> str:
    """Rows per method: image / pixel AUROC for every category, then the mean, AUPRO mean, seconds and speed."""
    head = ("| method | " + " | ".join(f"{c} image / pixel AUROC" for c in categories)
            + " | mean image / pixel AUROC | mean AUPRO | train s (mean) | served img/s (mean) |\n"
            + "|---" * (len(categories) + 5) + "|\n")
    by = {(c.category, c.method): c for c in cells}
    rows = []
    for method in methods:
        per = [f"{_fmt(by[(cat, method)].image_auroc)} / {_fmt(by[(cat, method)].pixel_auroc)}" for cat in categories]
        m = means(cells, method)
        rows.append(f"| {method} | " + " | ".join(per) + f" | {_fmt(m['image_auroc'])} / {_fmt(m['pixel_auroc'])} | "
                    f"{_fmt(m['aupro'])} | {_fmt(m['train_seconds'], 0)} | {_fmt(m['served_images_per_second'], 0)} |")
    return head + "\n".join(rows) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    from training.demo_data.categories import BENCHMARK

    parser = argparse.ArgumentParser(
        prog="kd-bench-quality",
        description="Train every image method on each benchmark category (other photos, other defect kinds than "
        "the demo), serve them, and print image/pixel AUROC and AUPRO per category and their means, with "
        "training time and served throughput.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-root", type=Path, default=Path("data/benchmark"), help="benchmark data (written if missing)")
    parser.add_argument("--categories", nargs="+", default=list(BENCHMARK), choices=list(BENCHMARK),
                        help="benchmark categories to run")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="image methods to train (student needs rd4ad)")
    parser.add_argument("--runs", type=Path, default=Path("runs/quality"), help="folder for the runs and the JSON")
    parser.add_argument("--image-size", type=int, default=256, help="input side (and the data's image size)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every method (default: kd-train's)")
    parser.add_argument("--n-train", type=int, default=80, help="good training images per category")
    parser.add_argument("--n-test-good", type=int, default=24, help="good evaluation images (validation + test)")
    parser.add_argument("--n-per-defect", type=int, default=12, help="evaluation images per defect kind")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, splits and training")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each throughput measurement (0: skip)")
    parser.add_argument("--readme", type=Path, default=None, help="README.md to write the table into (quality markers)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if "student" in args.methods and "rd4ad" not in args.methods:
        print("kd-bench-quality: the student distils an RD4AD run: add rd4ad to --methods", file=sys.stderr)
        return 2
    from export.repository import export_runs
    from serving.embedded import TritonServer, free_port
    from training.config import TrainConfig
    from training.demo_data import write_demo_dataset
    from training.methods import Method
    from training.train import train

    cells: list[Cell] = []
    runs: list[tuple[Path, str]] = []
    for category in args.categories:
        write_demo_dataset(args.data_root, category, seed=args.seed, image_size=args.image_size,
                           n_train=args.n_train, n_test_good=args.n_test_good, n_per_defect=args.n_per_defect)
        for method in args.methods:
            output = args.runs / category / method
            options = {"data_root": args.data_root, "category": category, "image_size": args.image_size,
                       "seed": args.seed, "method": Method(method), "output": output}
            if args.epochs is not None:
                options["epochs"] = args.epochs
            if method == "student":
                options["teacher_run"] = args.runs / category / "rd4ad"
            result = train(TrainConfig(**options), progress=False)
            m = result.stats.test_metrics
            name = f"{category}_{method}"
            cells.append(Cell(category, method, name, m.image_auroc, m.pixel_auroc, m.aupro,
                              result.stats.training.seconds))
            runs.append((output, name))
            log.info("%s: image AUROC %s, pixel AUROC %s", name, _fmt(m.image_auroc), _fmt(m.pixel_auroc))

    if args.seconds > 0:
        repository = args.runs / "model_repository"
        results = export_runs(runs, repository)
        workdir = args.runs / "triton"
        with TritonServer(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          workdir=workdir, log_path=workdir / "server.log") as server:
            for cell, result in zip(cells, results):
                samples = ValidationSamples.load(validation_folder(repository, result.names.name))
                model = samples.manifest.profiles.score or result.names.name
                cell.served_images_per_second = served_run(
                    server.grpc_url, "grpc", model, samples.manifest.input, samples.inputs, concurrency=4,
                    seconds=args.seconds).images_per_second

    table = markdown_table(cells, args.categories, args.methods)
    print(table)
    args.runs.mkdir(parents=True, exist_ok=True)
    out = args.runs / "quality.json"
    out.write_text(json.dumps({"cells": [asdict(c) for c in cells],
                               "means": {m: means(cells, m) for m in args.methods}}, indent=2) + "\n")
    print(f"wrote {out}")
    command = "kd-bench-quality " + " ".join(argv if argv is not None else sys.argv[1:])
    return publish(args.readme, "quality", table, command.strip(), "kd-bench-quality")


if __name__ == "__main__":
    sys.exit(main())
