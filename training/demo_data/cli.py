"""``kd-demo-data``: write the demo dataset from the command line and print what is on disk.

Command line::

    python -m training.demo_data --root data/demo --category brick
    kd-demo-data --help
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from training.demo_data.categories import CATEGORIES
from training.demo_data.dataset import image_counts, write_or_keep_demo_dataset
from training.demo_data.defects import DEFECT_TYPES


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kd-demo-data",
        description=(
            "Write a small anomaly-detection dataset in the MVTec AD folder layout, made from a "
            "texture photo that ships with scikit-image (no download). Good images are jittered "
            "crops of the texture; evaluation images add synthetic scratches, holes, stains and "
            "foreign-material patches with exact ground-truth masks. Evaluation images are split "
            "per folder into validation/ (named val_000.png ...) and test/, so test/ is the test split."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--root", type=Path, default=Path("data/demo"),
        help="folder that receives <category>/ (train/, validation/, test/, ground_truth/)",
    )
    parser.add_argument(
        "--category", choices=list(CATEGORIES), default="brick",
        help="which category to write (also its folder name): the demo textures brick, grass, gravel, or the "
        "benchmark's stars (sparse texture), meadow (stochastic), page (periodic), coffee and coins (aligned "
        "objects), which have other photos and other defect kinds",
    )
    parser.add_argument(
        "--seed", type=int, default=0,
        help="non-negative random seed; the same seed and options give byte-identical files",
    )
    parser.add_argument("--image-size", type=int, default=256, help="side of the square images in pixels (>= 32)")
    parser.add_argument("--n-train", type=int, default=80, help="number of defect-free training images (train/good)")
    parser.add_argument(
        "--n-test-good", type=int, default=24,
        help="total number of defect-free evaluation images (validation/good + test/good)",
    )
    parser.add_argument(
        "--n-per-defect", type=int, default=12,
        help=f"total number of evaluation images per defect type (demo: {', '.join(DEFECT_TYPES)}), validation + test",
    )
    parser.add_argument(
        "--validation-fraction", type=float, default=0.4,
        help="share of each evaluation folder written to validation/ instead of test/, in [0, 1); rounded per "
        "folder, at least one image on each side when a folder has two or more; 0 writes no validation/",
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing <root>/<category>; without it a complete existing dataset is kept as is",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``kd-demo-data`` / ``python -m training.demo_data``)."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    start = time.perf_counter()
    try:
        path, kept = write_or_keep_demo_dataset(
            args.root,
            args.category,
            seed=args.seed,
            image_size=args.image_size,
            n_train=args.n_train,
            n_test_good=args.n_test_good,
            n_per_defect=args.n_per_defect,
            validation_fraction=args.validation_fraction,
            overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    counts = image_counts(path)
    if kept:
        print(f"Kept existing dataset {path} (complete; pass --overwrite to regenerate).")
    else:
        print(f"Wrote demo dataset '{args.category}' to {path} in {elapsed:.1f} s.")
    for folder, count in counts.items():
        print(f"  {folder:<19} {count:4d} images")
    print(f"  {'total':<19} {sum(counts.values()):4d} images, masks in {path / 'ground_truth'}")
    return 0
