"""``kd-bench-quality``: detection quality per category, on categories where detectors differ.

The demo category is easy (every method reaches image AUROC 1.0). This benchmark writes the benchmark categories
of :mod:`training.demo_data.benchmark` (a sparse, a stochastic and a periodic texture and two aligned objects,
with other photos and other defect kinds than the demo's), trains each image method on each with ``kd-train``'s
defaults, exports every run into one repository, serves it, and reports per category and as a mean over the
categories: image AUROC, pixel AUROC, AUPRO (test split; thresholds and kept epochs from validation), training
seconds, and served images/s over gRPC (the score-only ensemble, 4 requests in flight); and, per category, the image
AUROC of each defect kind against the good images (which defects a detector misses). JSON and Markdown tables,
optionally written into README.md between the ``quality`` markers.

``--peers patchcore padim`` adds anomalib's PatchCore and PaDiM as rows of the same table: the yardstick of
:mod:`bench.peers.yardstick`, run in a virtual environment of its own on the same splits and teacher weights. Their
``train s`` is the fit time and their speed is in-process torch (its own column), not served.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.measure import served_run
from bench.peers.venv import DEFAULT_VENV
from bench.peers.yardstick import PEER_PREFIX, PEERS
from bench.readme import publish
from kdcore.manifest import ValidationSamples, validation_folder

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.inference import DeployableDetector

log = logging.getLogger(__name__)

#: The image methods, in table order (the student distils the RD4AD run of the same category).
METHODS = ("rd4ad", "student", "multiteacher", "mkd")
METRICS = ("image_auroc", "pixel_auroc", "aupro")


@dataclass
class Cell:
    """One method on one category: a project method (served speed) or an anomalib peer (``peer``: its train
    seconds are the fit time, its speed is in-process)."""

    category: str
    method: str
    model: str
    image_auroc: float | None
    pixel_auroc: float | None
    aupro: float | None
    train_seconds: float
    served_images_per_second: float | None = None
    in_process_images_per_second: float | None = None
    peer: bool = False
    image_auroc_by_defect: dict[str, float] = field(default_factory=dict)


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def means(cells: list[Cell], method: str) -> dict[str, float | None]:
    """The mean of each metric over the categories (``None`` if a category lacks it), and of the seconds."""
    mine = [c for c in cells if c.method == method]
    out: dict[str, float | None] = {}
    for key in (*METRICS, "train_seconds", "served_images_per_second", "in_process_images_per_second"):
        values = [getattr(c, key) for c in mine]
        out[key] = None if not values or any(v is None or math.isnan(v) for v in values) else sum(values) / len(values)
    return out


#: The note under a table with anomalib rows: what their seconds and speed are.
PEER_NOTE = ("anomalib rows: anomalib 2.7.0's own PatchCore / PaDiM in a venv of their own, fitted on the same train "
             "split with the same EfficientNet-Lite0 weights and scored on the same test split; their train s is the "
             "fit (feature extraction + coreset selection or Gaussian fit) and their speed is in-process torch on "
             "the CPU (batch 8), not served.")


def markdown_table(cells: list[Cell], categories: list[str], methods: list[str]) -> str:
    """Rows per method: image / pixel AUROC for every category, then the mean, AUPRO mean, seconds and speed.

    With anomalib rows (``peer`` cells) the table gets an ``in-process img/s`` column and a note, so their speed
    is never read as a served figure; without them it is exactly the project-only table.
    """
    with_peers = any(c.peer for c in cells)
    speed_head = " served img/s (mean) |" + (" in-process img/s (mean) |" if with_peers else "")
    head = ("| method | " + " | ".join(f"{c} image / pixel AUROC" for c in categories)
            + f" | mean image / pixel AUROC | mean AUPRO | train s (mean) |{speed_head}\n"
            + "|---" * (len(categories) + 5 + with_peers) + "|\n")
    by = {(c.category, c.method): c for c in cells}
    rows = []
    for method in methods:
        per = [f"{_fmt(by[(cat, method)].image_auroc)} / {_fmt(by[(cat, method)].pixel_auroc)}" for cat in categories]
        m = means(cells, method)
        peer = any(c.peer for c in cells if c.method == method)
        speed = f" {'–' if peer else _fmt(m['served_images_per_second'], 0)} |"
        if with_peers:
            speed += f" {_fmt(m['in_process_images_per_second'], 0) if peer else '–'} |"
        rows.append(f"| {method} | " + " | ".join(per) + f" | {_fmt(m['image_auroc'])} / {_fmt(m['pixel_auroc'])} | "
                    f"{_fmt(m['aupro'])} | {_fmt(m['train_seconds'], 0)} |{speed}")
    return head + "\n".join(rows) + "\n" + (f"\n{PEER_NOTE}\n" if with_peers else "")


def defect_table(cells: list[Cell], categories: list[str], methods: list[str]) -> str:
    """One row per category and defect kind, one column per method: the image AUROC of that kind against the
    category's good test images. Why: a category's AUROC averages its defect kinds, and one kind a detector cannot
    see (or false alarms on good images, which pull every kind down) reads the same there."""
    by = {(c.category, c.method): c for c in cells}
    head = "| category | defect | " + " | ".join(methods) + " |\n" + "|---" * (len(methods) + 2) + "|\n"
    rows = []
    for cat in categories:
        kinds = sorted({k for m in methods if (cat, m) in by for k in by[(cat, m)].image_auroc_by_defect})
        for kind in kinds:
            values = [by[(cat, m)].image_auroc_by_defect.get(kind) if (cat, m) in by else None for m in methods]
            rows.append(f"| {cat} | {kind} | " + " | ".join(_fmt(v) for v in values) + " |")
    return head + "\n".join(rows) + "\n"


def parse_variants(specs: list[list[str]]) -> dict[str, dict[str, str]]:
    """``[[label, "field=value", ...], ...]`` -> ``{label: {field: value}}``, checked against :class:`TrainConfig`.

    Raises:
        ValueError: A malformed item, a repeated or reserved label, or fields the config rejects.
    """
    from pydantic import ValidationError

    from training.config import TrainConfig

    variants: dict[str, dict[str, str]] = {}
    for label, *items in specs:
        reserved = label in variants or label in METHODS or label.startswith(PEER_PREFIX)
        if reserved or not re.fullmatch(r"[a-z][a-z0-9_]*", label):
            raise ValueError(f"--variant {label!r}: the label comes first, is new, not a method's name, and is "
                             "lower-case letters, digits and _ (it names the served model)")
        fields = dict(item.split("=", 1) for item in items if "=" in item)
        if len(fields) != len(items):
            raise ValueError(f"--variant {label}: expected FIELD=VALUE items, got {items}")
        if {"data_root", "category", "output", "seed", "image_size"} & fields.keys():
            raise ValueError(f"--variant {label}: data, output, seed and size are the benchmark's own")
        try:
            TrainConfig(**fields)
        except ValidationError as exc:
            raise ValueError(f"--variant {label}: {exc}") from exc
        variants[label] = fields
    return variants


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
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS),
                        help="image methods to train (student needs rd4ad); none with --peers: the peers alone")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar="LABEL [FIELD=VALUE ...]",
                        help="an extra row: kd-train with these TrainConfig fields changed, e.g. '--variant "
                        "rd4ad_paper method=rd4ad linear_heads=off positional_normalization=off' (the before of an "
                        "ablation, in the same run); repeatable")
    parser.add_argument("--peers", nargs="+", default=[], choices=list(PEERS),
                        help="anomalib methods to add as rows (the yardstick: anomalib 2.7.0 in its own venv, same "
                        "splits and Lite0 weights; fit seconds and in-process img/s)")
    parser.add_argument("--peer-venv", type=Path, default=DEFAULT_VENV,
                        help="the peers' virtual environment (created with pinned versions if missing, ~6 GB)")
    parser.add_argument("--runs", type=Path, default=Path("runs/quality"), help="folder for the runs and the JSON")
    parser.add_argument("--image-size", type=int, default=256, help="input side (and the data's image size)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every method (default: kd-train's)")
    parser.add_argument("--n-train", type=int, default=100, help="good training images per category")
    parser.add_argument("--n-test-good", type=int, default=40, help="good evaluation images (validation + test)")
    parser.add_argument("--n-per-defect", type=int, default=20, help="evaluation images per defect kind")
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
    try:
        variants = parse_variants(args.variant)
    except ValueError as exc:
        print(f"kd-bench-quality: {exc}", file=sys.stderr)
        return 2
    if not args.methods and not args.peers and not variants:
        print("kd-bench-quality: nothing to run: give --methods or --peers", file=sys.stderr)
        return 2
    if args.peers:  # before any training: a peer venv that cannot be built should not cost the runs first
        from bench.peers.venv import PeerVenvError, ensure_peer_venv

        try:
            ensure_peer_venv(args.peer_venv)
        except PeerVenvError as exc:
            print(f"kd-bench-quality: {exc}", file=sys.stderr)
            return 1
    from export.repository import export_runs
    from serving.embedded import TritonServer, free_port
    from training.config import TrainConfig
    from training.demo_data import write_demo_dataset
    from training.methods import Method
    from training.train import train

    cells: list[Cell] = []
    failures: list[str] = []
    runs: list[tuple[Path, str]] = []
    for category in args.categories:
        write_demo_dataset(args.data_root, category, seed=args.seed, image_size=args.image_size,
                           n_train=args.n_train, n_test_good=args.n_test_good, n_per_defect=args.n_per_defect)
        for method, overrides in [*((m, {"method": m}) for m in args.methods), *variants.items()]:
            output = args.runs / category / method
            options = {"data_root": args.data_root, "category": category, "image_size": args.image_size,
                       "seed": args.seed, "output": output}
            if args.epochs is not None:
                options["epochs"] = args.epochs
            options.update(overrides)
            if Method(options.get("method", "rd4ad")) is Method.STUDENT and "teacher_run" not in overrides:
                options["teacher_run"] = args.runs / category / "rd4ad"
            config = TrainConfig(**options)
            result = train(config, progress=False)
            m = result.stats.test_metrics
            name = f"{category}_{method}"
            cells.append(Cell(category, method, name, m.image_auroc, m.pixel_auroc, m.aupro,
                              result.stats.training.seconds, image_auroc_by_defect=_by_defect(config, result.model)))
            runs.append((output, name))
            log.info("%s: image AUROC %s, pixel AUROC %s", name, _fmt(m.image_auroc), _fmt(m.pixel_auroc))
        for peer in args.peers:
            cell, error = _peer_cell(args, category, peer)
            cells.append(cell)
            failures += [error] if error else []

    if args.seconds > 0 and runs:
        repository = args.runs / "model_repository"
        results = export_runs(runs, repository)
        workdir = args.runs / "triton"
        with TritonServer(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          workdir=workdir, log_path=workdir / "server.log") as server:
            for cell, result in zip([c for c in cells if not c.peer], results):
                samples = ValidationSamples.load(validation_folder(repository, result.names.name))
                model = samples.manifest.score_model
                cell.served_images_per_second = served_run(
                    server.grpc_url, "grpc", model, samples.manifest.input, samples.inputs, concurrency=4,
                    seconds=args.seconds).images_per_second

    rows = [*args.methods, *variants, *(PEER_PREFIX + p for p in args.peers)]
    table = (markdown_table(cells, args.categories, rows) + "\nImage AUROC of each defect kind against the good "
             "test images:\n\n" + defect_table(cells, args.categories, rows))
    print(table)
    args.runs.mkdir(parents=True, exist_ok=True)
    out = args.runs / "quality.json"
    out.write_text(json.dumps({"cells": [asdict(c) for c in cells],
                               "means": {m: means(cells, m) for m in rows}}, indent=2) + "\n")
    print(f"wrote {out}")
    if failures:
        print("kd-bench-quality: " + "\n".join(failures), file=sys.stderr)
        return 1
    command = "kd-bench-quality " + " ".join(argv if argv is not None else sys.argv[1:])
    return publish(args.readme, "quality", table, command.strip(), "kd-bench-quality")


def _peer_cell(args: argparse.Namespace, category: str, peer: str) -> tuple[Cell, str | None]:
    """anomalib's ``peer`` on ``category`` as a table cell, and the error if it failed (then its figures are
    n/a, and the other rows are still tabled: a failing yardstick must not lose the project's runs)."""
    from bench.peers.yardstick import PeerRunError, run_peer

    name = PEER_PREFIX + peer
    try:
        r = run_peer(args.data_root, category, peer, workdir=args.runs / category / name, image_size=args.image_size,
                     seed=args.seed, venv=args.peer_venv, seconds=args.seconds)
    except (PeerRunError, ValueError) as exc:
        return Cell(category, name, "", None, None, None, math.nan, peer=True), f"{category} {name}: {exc}"
    log.info("%s_%s: image AUROC %s, pixel AUROC %s, fit %.0f s, %s img/s in-process (%s)", category, name,
             _fmt(r.image_auroc), _fmt(r.pixel_auroc), r.fit_seconds, _fmt(r.images_per_second, 1), r.versions)
    speed = None if math.isnan(r.images_per_second) else r.images_per_second
    return Cell(category, name, "", r.image_auroc, r.pixel_auroc, r.aupro, r.fit_seconds,
                in_process_images_per_second=speed, peer=True, image_auroc_by_defect=r.image_auroc_by_defect), None


def _by_defect(config: TrainConfig, model: DeployableDetector) -> dict[str, float]:
    """The image AUROC of each defect kind of the run's test split (one more pass over it, in-process)."""
    from kdcore.metrics import image_auroc_by_defect
    from training.data import ImageDataset, make_splits
    from training.evaluate import predict

    splits = make_splits(config.data_root, config.category, holdout_fraction=config.holdout_fraction,
                         validation_fraction=config.validation_fraction, seed=config.seed)
    scores = predict(model, ImageDataset(splits.test, config.image_size)).scores
    return image_auroc_by_defect([s.defect for s in splits.test], scores)


if __name__ == "__main__":
    sys.exit(main())
