"""``kd-train``: train a detector on an MVTec-AD-layout folder and write its run folder.

Every option is a field of :class:`~training.config.TrainConfig`; the parser is built from the model, so the
help text, the defaults and the validation cannot disagree.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from training.cli_options import add_config_options
from training.config import TrainConfig
from training.methods import Method


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one option per :class:`TrainConfig` field."""
    parser = argparse.ArgumentParser(
        prog="kd-train",
        description="Train RD4AD (frozen pretrained teacher, one-class bottleneck, student decoder) on good "
        "images of an MVTec AD-layout category; write weights, the stats JSON (score statistics, thresholds, "
        "0..1 calibration, metrics) and plots to the run folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_options(parser, TrainConfig)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = vars(build_parser().parse_args(argv))
    quiet = args.pop("quiet")
    try:
        config = TrainConfig.model_validate(args)
    except ValidationError as e:
        for err in e.errors():
            print(f"kd-train: --{'-'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']}", file=sys.stderr)
        return 2
    if config.method is Method.KDAE_VECTOR:
        return _train_kdae(config)
    from training.train import train  # heavy imports only once the arguments are valid

    result = train(config, progress=not quiet)
    m = result.stats.test_metrics
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"run folder: {result.paths.root}")
    print(f"stats JSON: {result.paths.stats}")
    print(
        f"test ({m.num_good} good, {m.num_anomalous} anomalous): image AUROC {fmt(m.image_auroc)}, "
        f"pixel AUROC {fmt(m.pixel_auroc)}, AUPRO {fmt(m.aupro)}, image F1 {fmt(m.image_f1)}"
    )
    return 0


def _train_kdae(config: TrainConfig) -> int:
    """``--method kdae_vector``: the vector KD-AE on scikit-learn's digits, ``--category`` being the normal digit."""
    from training.kdae.__main__ import main as kdae_main

    if not config.category.isdigit() or not 0 <= int(config.category) <= 9:
        print(f"kd-train: --category: method kdae_vector takes the normal digit 0-9, got {config.category!r}",
              file=sys.stderr)
        return 2
    return kdae_main(["--digit", config.category, "--seed", str(config.seed), "--output", str(config.output),
                      "--lr", str(config.learning_rate)])


if __name__ == "__main__":
    sys.exit(main())
