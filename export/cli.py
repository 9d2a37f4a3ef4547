"""``kd-export``: put a trained run into a Triton model repository (ONNX, TorchScript, scorer, ensemble)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(
        prog="kd-export",
        description="Export a training run to ONNX and TorchScript, check both against the eager model on "
        "stored validation images, and write the network, the Python-backend scorer (with the run's stats "
        "JSON), an ensemble and the client's validation samples into a Triton model repository. Nothing is "
        "changed in the repository unless every step succeeds.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="training run folder (from kd-train)")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"), help="Triton model repository")
    parser.add_argument("--name", default="ad_inference", help="ensemble name that clients call")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per network instance (default: all cores)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (1 on a failed export, with the reason)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from export.network import ExportParityError
    from export.repository import export_run
    from training.stats import StatsError

    try:
        result = export_run(args.run, args.repository, args.name, threads=args.threads)
    except (ExportParityError, StatsError, FileNotFoundError) as e:
        print(f"kd-export: export failed, repository unchanged: {e}", file=sys.stderr)
        return 1
    for report in result.parity:
        print(f"parity {report}")
    n = result.names
    print(f"wrote {n.onnx}, {n.torchscript}, {n.scorer}, {n.ensemble} into {result.repository}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
