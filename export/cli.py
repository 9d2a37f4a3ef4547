"""``kd-export``: put trained runs into a Triton model repository (ONNX, TorchScript, scorer, ensemble each)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

#: Ensemble name per detector family when ``--run`` gives none.
DEFAULT_NAMES = {
    "rd4ad": "ad_inference",
    "student": "ad_inference_student",
    "multiteacher": "ad_inference_multiteacher",
    "mkd": "ad_inference_mkd",
    "kdae_vector": "kdae_digits",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(
        prog="kd-export",
        description="Export training runs to ONNX and TorchScript, check both against the eager model on "
        "stored validation inputs, and write, per run, the network, the Python-backend scorer (with the run's "
        "stats JSON), the ensembles, for image detectors the calibrated network <name>_fast (the stats JSON's "
        "calibration and decision appended to the ONNX graph, checked against the scorer within 1e-6), and the "
        "client's validation samples into a Triton model repository. Nothing is changed in the repository unless "
        "every run exports cleanly.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--run", action="append", default=None, metavar="FOLDER[=NAME]",
        help="training run folder (from kd-train), optionally with the ensemble name clients call; repeat for "
        "several runs. Default names by method: " + ", ".join(f"{k} -> {v}" for k, v in DEFAULT_NAMES.items())
        + ". Without --run: runs/demo",
    )
    parser.add_argument("--repository", type=Path, default=Path("model_repository"), help="Triton model repository")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per network instance (default: cores / instances)")
    parser.add_argument("--instances", type=int, default=1,
                        help="network instances; 1 (all cores) gives the lowest latency, one per core the most "
                             "throughput under load")
    parser.add_argument("--max-queue-delay-us", type=int, default=0,
                        help="microseconds the network waits to fill a batch (0: batch what is already queued)")
    parser.add_argument("--gpu", choices=["none", "cuda", "tensorrt"], default="none",
                        help="ONNX Runtime GPU accelerator written into the ONNX model's config for the NGC server "
                             "(tensorrt: FP16 engines, cached); CPU instances ignore it")
    return parser


def _resolve(spec: str) -> tuple[Path, str]:
    from kdcore.stats import load_stats
    from training.runs import RunPaths

    folder, _, name = spec.partition("=")
    if not name:
        method = load_stats(RunPaths(Path(folder)).stats).model.method
        name = DEFAULT_NAMES.get(method, f"ad_inference_{method}")
    return Path(folder), name


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (1 on a failed export, with the reason)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    from export.network import ExportParityError
    from export.repository import export_runs
    from export.triton_config import ServingConfig
    from kdcore.stats import StatsError

    try:
        runs = [_resolve(spec) for spec in (args.run or ["runs/demo"])]
        serving = ServingConfig(instances=args.instances, threads=args.threads,
                                max_queue_delay_us=args.max_queue_delay_us, gpu=args.gpu)
        results = export_runs(runs, args.repository, serving=serving)
    except (ExportParityError, StatsError, FileNotFoundError, ValueError, ValidationError) as e:
        print(f"kd-export: export failed, repository unchanged: {e}", file=sys.stderr)
        return 1
    for result in results:
        n = result.names
        for report in result.parity:
            print(f"{n.name}: parity {report}")
        print(f"wrote {n.name} and the models it chains into {result.repository}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
