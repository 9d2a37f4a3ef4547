"""``kd-signal-data``: write the synthetic two-lead ECG dataset (train / validation / test) and say what is in it.

Command line::

    kd-signal-data --root data/ecg
    kd-signal-data --help
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from training.signals.dataset import SPLITS, SignalDataConfig, write_signal_dataset
from training.signals.ecg import KINDS


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    defaults = SignalDataConfig()
    parser = argparse.ArgumentParser(
        prog="kd-signal-data",
        description="Simulate two-lead ECG records (neurokit2's ECGSYN, 128 Hz), cut them into 2 s windows of 256 "
        "steps, inject one labelled anomaly into a fraction of the windows, and write train/validation/test "
        "(signals, per-step labels, per-step anomaly kinds) with meta.json. Splits come from different records.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--root", type=Path, default=Path("data/ecg"), help="folder to write (replaced)")
    for split in SPLITS:
        parser.add_argument(f"--{split}-records", type=int, default=defaults.records[split],
                            help=f"simulated records in the {split} split")
    parser.add_argument("--windows-per-record", type=int, default=defaults.windows_per_record,
                        help="consecutive 2 s windows cut from each record")
    parser.add_argument("--anomaly-fraction", type=float, default=defaults.anomaly_fraction,
                        help="probability that a window gets one anomaly")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(defaults.kinds),
                        help="anomaly kinds to inject")
    parser.add_argument("--noise", type=float, default=defaults.noise, help="neurokit2's noise level")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="everything is drawn from it")
    parser.add_argument("--plots", action=argparse.BooleanOptionalAction, default=defaults.plots,
                        help="also write each window's plot image (what the vision teacher reads)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write the dataset; prints one line per split."""
    args = build_parser().parse_args(argv)
    config = SignalDataConfig(
        records={s: getattr(args, f"{s}_records") for s in SPLITS}, windows_per_record=args.windows_per_record,
        anomaly_fraction=args.anomaly_fraction, kinds=tuple(args.kinds), noise=args.noise, seed=args.seed,
        plots=args.plots)
    started = time.perf_counter()
    meta = write_signal_dataset(args.root, config)
    for split, counts in meta["splits"].items():
        print(f"{split}: {counts['windows']} windows, {counts['anomalous_windows']} with an anomaly, "
              f"{counts['anomalous_steps']} anomalous steps")
    print(f"wrote {args.root} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
