"""Where a trained RD4AD's map and a nearest-neighbour distance on the same teacher taps part ways, per defect kind.

``python -m bench.tap_distance RUN [RUN ...]``: for each RD4AD run folder, its network's scored map (without a tap
memory), the tap memory's distance map alone (:class:`training.memory.TapMemory` fitted on the run's training
split, as ``kd-train`` fits it) and the two joined at each candidate weight, scored on the run's validation and
test splits: image and pixel AUROC over the split, and the pixel AUROC of each defect kind's images with the good
ones. The README's "A memory of the teacher's taps" cites it; it reads the splits the run was trained with.
``--grid 8`` asks whether the memory's stride-16 grid costs pixel AUROC: the stride-16 taps are upsampled onto the
stride-8 grid instead (PatchCore's), four times the queries and a bank at its cap.
"""

from __future__ import annotations

import argparse
import copy
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdcore.metrics import image_auroc, pixel_auroc
from training.checkpoint import load_checkpoint
from training.data import ImageDataset, make_splits
from training.memory import MEMORY_WEIGHTS
from training.train import maps_and_taps


def _row(name: str, maps: np.ndarray, labels: np.ndarray, masks: np.ndarray, defects: np.ndarray) -> str:
    scores = maps.reshape(len(maps), -1).max(axis=1)
    cells = [name, f"{image_auroc(labels, scores):.3f}", f"{pixel_auroc(masks, maps):.3f}"]
    for kind in sorted(set(defects) - {"good"}):
        keep = (defects == "good") | (defects == kind)
        cells.append(f"{kind} {pixel_auroc(masks[keep], maps[keep]):.3f}")
    return "| " + " | ".join(cells) + " |"


def _stride8_taps(self: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RD4AD's ``predict_and_taps`` with the taps on the stride-8 grid (the stride-16 tap upsampled to it)."""
    teacher, student = self(x)
    score, amap = self.anomaly_map(teacher, student)
    coarse = F.interpolate(teacher[2], size=teacher[1].shape[-2:], mode="bilinear", align_corners=False)
    return score, amap, torch.cat([teacher[1], coarse], 1)


def report(run: Path, grid: int = 16) -> list[str]:
    """The Markdown rows of one run: validation and test, each map candidate, the memory's taps on ``grid``."""
    model, config = load_checkpoint(run)
    model = copy.deepcopy(model)
    model.memory.reset()
    if grid == 8:
        model.detector.predict_and_taps = types.MethodType(_stride8_taps, model.detector)
    splits = make_splits(config.data_root, config.category, holdout_fraction=config.holdout_fraction,
                         validation_fraction=config.validation_fraction, seed=config.seed)
    train_images = ImageDataset(splits.train, config.image_size)
    parts = maps_and_taps(model, train_images)
    if parts is None:
        raise SystemExit(f"{run}: this detector has no teacher taps (tap_distance is for RD4AD runs)")
    model.memory.fit(parts[1], torch.from_numpy(parts[0].maps)[:, None], seed=config.seed)
    lines = [f"{run} ({config.category}, stride-{grid} memory, {len(model.memory.bank)} vectors): image AUROC, pixel AUROC, pixel AUROC per defect kind (with the good images)"]
    for split, samples in (("validation", splits.validation), ("test", splits.test)):
        predictions, taps = maps_and_taps(model, ImageDataset(samples, config.image_size))
        maps, labels, masks = torch.from_numpy(predictions.maps)[:, None], predictions.labels, predictions.masks
        defects = np.array([s.defect for s in samples])
        with torch.no_grad():
            # In slices: a stride-8 query of one image against a full bank is 128 MB of distances.
            distance = torch.cat([model.memory.distance_map(taps[i:i + 4]) for i in range(0, len(taps), 4)])
            lines.append(_row(f"{split}: network map", maps[:, 0].numpy(), labels, masks, defects))
            lines.append(_row(f"{split}: tap distance alone", distance[:, 0].numpy(), labels, masks, defects))
            for weight in MEMORY_WEIGHTS[1:]:
                joined = model.memory.combine(maps, distance, weight)[:, 0].numpy()
                lines.append(_row(f"{split}: joined, weight {weight:g}", joined, labels, masks, defects))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="RD4AD run folders (kd-train --output)")
    parser.add_argument("--grid", type=int, choices=(16, 8), default=16,
                        help="the memory's grid: 16 as kd-train fits it, 8 with the stride-16 taps upsampled onto it")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for run in args.runs:
        print("\n".join(report(run, args.grid)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
