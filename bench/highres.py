"""``kd-highres``: whole-image against patch training on high-resolution frames with small defects.

Writes the ``panel`` category (:mod:`training.demo_data.highres`: 1024 px frames, spots, scratches and chips of
20-60 px), trains RD4AD on it twice at the same input size, whole frames resized to it and a patch grid
(``kd-train --patches-per-row C --patches-per-column R``), and prints one row each: image AUROC, pixel AUROC, AUPRO,
region precision, recall and F1, detection AP, segmentation F1 (the test split, thresholds and the kept epoch from
validation; the region rule of :mod:`kdcore.detection`), training seconds; then, per defect kind, the share of test
frames whose defect each model finds (at least one of its anomalous regions matches the defect), and the frames
whose defect only the patch model finds. JSON beside the runs; the table into README.md between the ``highres``
markers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CATEGORY = "panel"
ROWS = ("image_auroc", "pixel_auroc", "aupro", "region_precision", "region_recall", "region_f1", "detection_ap",
        "segmentation_f1")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(
        prog="kd-highres",
        description="Train RD4AD on 1024 px frames with 20-60 px defects (the 'panel' category) whole-image and on a "
        "patch grid, and print both rows: image AUROC, pixel AUROC, AUPRO, region precision / recall / F1, detection "
        "AP, segmentation F1 and training time, with the defects only the patch model finds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-root", type=Path, default=Path("data/highres"), help="where 'panel' is written")
    parser.add_argument("--runs", type=Path, default=Path("runs/highres"), help="folder for the two runs")
    parser.add_argument("--frame", type=int, default=1024, help="frame side, pixels")
    parser.add_argument("--image-size", type=int, default=256, help="the model's input side (both runs)")
    parser.add_argument("--grid", type=int, default=4, help="patch grid: windows per row and per column")
    parser.add_argument("--epochs", type=int, default=40, help="epochs of the whole-image run")
    parser.add_argument("--patch-epochs", type=int, default=8,
                        help="epochs of the patch run (each sees grid^2 windows per frame: about as many steps)")
    parser.add_argument("--n-train", type=int, default=40, help="good training frames")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed")
    parser.add_argument("--denoising", default="auto", choices=["off", "structural", "broad", "auto"],
                        help="kd-train's --denoising for both runs ('auto' trains two candidates each)")
    parser.add_argument("--tap-memory", default="auto", choices=["auto", "off"], help="kd-train's --tap-memory")
    parser.add_argument("--readme", type=Path, default=Path("README.md"),
                        help="README to write the table into ('' to skip)")
    return parser


def found_per_frame(result, config) -> dict[str, bool]:
    """Whether each test frame's defect is found: one of its anomalous regions matches a true region."""
    from kdcore.detection import match_image, region_detections
    from kdcore.regions import anomalous_regions
    from kdcore.stats import load_stats
    from training.data import ImageDataset, make_splits
    from training.evaluate import predict, predict_frames

    splits = make_splits(config.data_root, config.category, holdout_fraction=config.holdout_fraction,
                         validation_fraction=config.validation_fraction, seed=config.seed)
    samples = [s for s in splits.test if s.label == 1]
    grid = config.patch_grid
    dataset = ImageDataset(samples, config.image_size, grid=grid)
    pred = predict(result.model, dataset) if grid is None else predict_frames(result.model, dataset)
    calibration = load_stats(result.paths.stats).pixel_calibration
    return {
        str(s.path): bool(match_image(region_detections(anomalous_regions(calibration.apply(m))), mask)
                          .true_positive.any())
        for s, m, mask in zip(samples, pred.maps, pred.masks)
    }


def markdown(rows: dict[str, dict], kinds: dict[str, dict[str, float]], only_patch: int, total: int) -> str:
    """The two rows and the per-kind table."""
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    head = ("| run | image AUROC | pixel AUROC | AUPRO | region P | region R | region F1 | detection AP | "
            "segmentation F1 | train s |\n|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(f"| {name} | " + " | ".join(fmt(r[k]) for k in ROWS) + f" | {r['seconds']:.0f} |\n"
                   for name, r in rows.items())
    names = list(rows)
    kind_head = "\n| defect | " + " | ".join(f"found by {n}" for n in names) + " |\n|---|" + "---|" * len(names) + "\n"
    kind_body = "".join(f"| {kind} | " + " | ".join(f"{v[n]:.2f}" for n in names) + " |\n" for kind, v in kinds.items())
    return (head + body + kind_head + kind_body
            + f"\nDefects only the patch model finds: {only_patch} of {total} anomalous test frames.\n")


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from bench.readme import publish
    from training.config import TrainConfig
    from training.demo_data import write_demo_dataset
    from training.train import train

    write_demo_dataset(args.data_root, CATEGORY, image_size=args.frame, n_train=args.n_train, seed=args.seed)
    common = {"data_root": args.data_root, "category": CATEGORY, "image_size": args.image_size, "seed": args.seed,
              "denoising": args.denoising, "tap_memory": args.tap_memory}
    configs = {
        "whole image": TrainConfig(output=args.runs / "whole", epochs=args.epochs, **common),
        f"patch {args.grid}x{args.grid}": TrainConfig(output=args.runs / "patch", epochs=args.patch_epochs,
                                                      patches_per_row=args.grid, patches_per_column=args.grid,
                                                      **common),
    }
    rows, found = {}, {}
    for name, config in configs.items():
        result = train(config)
        metrics = result.stats.test_metrics.model_dump()
        rows[name] = {**{k: metrics[k] for k in ROWS}, "seconds": result.stats.training.seconds}
        found[name] = found_per_frame(result, config)
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[name].items() if v is not None), flush=True)
    whole, patch = (found[n] for n in configs)
    by_kind: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for name, frames in found.items():
        for path, hit in frames.items():
            by_kind[Path(path).parent.name][name].append(hit)
    kinds = {k: {n: float(np.mean(v)) for n, v in per.items()} for k, per in sorted(by_kind.items())}
    only_patch = sum(patch[p] and not whole[p] for p in patch)
    table = markdown(rows, kinds, only_patch, len(patch))
    print(table)
    args.runs.mkdir(parents=True, exist_ok=True)
    (args.runs / "highres.json").write_text(json.dumps(
        {"rows": rows, "found_by_kind": kinds, "only_patch": only_patch, "anomalous_test_frames": len(patch),
         "args": {k: str(v) for k, v in vars(args).items()}}, indent=2) + "\n")
    return publish(args.readme, "highres", table, "kd-highres", "kd-highres")


if __name__ == "__main__":
    sys.exit(main())
