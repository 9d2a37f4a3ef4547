"""``kd-bench-metrics``: how long the evaluation metrics take on an MVTec-sized test set, on this machine.

kd-train evaluates on the validation split at every checkpoint and ``score --evaluate`` on the whole test folder,
so pixel AUROC and AUPRO must stay seconds, not minutes, at MVTec scale (tens to hundreds of 256x256 maps). This
prints the median wall time of each metric over a few runs on synthetic maps with rectangular defects.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from kdcore.metrics import aupro, pixel_auroc


def synthetic_maps(images: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half the images carry one or two rectangular defects; maps are noise plus twice the mask."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((images, size, size), dtype=np.uint8)
    half = images // 2
    masks[:half, size * 2 // 5:size * 11 // 20, size // 4:size * 7 // 20] = 1
    masks[:half:3, size // 25:size // 12, size * 4 // 5:size * 49 // 50] = 1
    maps = (rng.normal(size=masks.shape) + 2.0 * masks).astype(np.float32)
    return masks, maps


def median_seconds(metric: Callable[[], float], repeats: int) -> tuple[float, float]:
    """(median wall seconds, value) of ``metric()`` over ``repeats`` calls."""
    times, value = [], float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        value = metric()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kd-bench-metrics", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=60, help="test images (default 60, a large MVTec category)")
    parser.add_argument("--size", type=int, default=256, help="map side in pixels (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per metric; the median is printed")
    args = parser.parse_args(argv)
    masks, maps = synthetic_maps(args.images, args.size)
    print(f"{args.images} maps of {args.size}x{args.size}, median of {args.repeats} calls")
    for name, metric in (("pixel AUROC", lambda: pixel_auroc(masks, maps)), ("AUPRO", lambda: aupro(masks, maps))):
        seconds, value = median_seconds(metric, args.repeats)
        print(f"{name:12s} {seconds:7.3f} s   value {value:.4f}")


if __name__ == "__main__":
    main()
