"""``python -m training.kdae``: train KD-AE on one digit (a run folder), or sweep all ten digits (a table)."""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np
import torch
from pydantic import ValidationError

from kdcore.options import add_config_options
from training.kdae.train import KDAEConfig, auroc_per_digit, train_kdae


def build_parser() -> argparse.ArgumentParser:
    """One option per :class:`KDAEConfig` field, plus ``--all-digits`` and ``--threads``."""
    parser = argparse.ArgumentParser(
        prog="python -m training.kdae",
        description="KD-AE on scikit-learn's 8x8 digits, one digit normal and the nine others anomalous: a dense "
        "autoencoder teacher (64-32-8-32-64) and a 64-16-1 MLP student that regresses log(1 + the teacher's "
        "reconstruction MSE). By default trains one digit and writes its run folder (student and teacher "
        "weights, stats JSON, validation samples); with --all-digits trains every digit in memory and prints "
        "the test image AUROC of student and teacher.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_options(parser, KDAEConfig)
    parser.add_argument("--all-digits", action="store_true",
                        help="train each digit 0-9 as the normal class (nothing written; --digit and --output "
                        "are ignored) and print the per-digit test AUROC table")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (these networks are too small to gain from more)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = vars(build_parser().parse_args(argv))
    all_digits, threads = args.pop("all_digits"), args.pop("threads")
    torch.set_num_threads(max(1, threads))
    try:
        config = KDAEConfig.model_validate(args)
    except ValidationError as e:
        print(f"invalid options:\n{e}", file=sys.stderr)
        return 2
    if all_digits:
        started = time.perf_counter()
        overrides = config.model_dump(exclude={"digit", "seed", "output"})
        table = auroc_per_digit(config.seed, **overrides)
        print(f"test image AUROC, seed {config.seed}")
        print("digit  student  teacher")
        for digit, r in table.items():
            print(f"{digit:>5}  {r.student:7.4f}  {r.teacher:7.4f}")
        print(f"{'mean':>5}  {np.mean([r.student for r in table.values()]):7.4f}  "
              f"{np.mean([r.teacher for r in table.values()]):7.4f}")
        print(f"({time.perf_counter() - started:.1f} s)")
        return 0
    print(train_kdae(config).summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
