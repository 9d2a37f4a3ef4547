"""``kd-train``: train a detector on an MVTec-AD-layout folder and write its run folder.

Every option is a field of :class:`~training.config.TrainConfig`; the parser is built from the model, so the
help text, the defaults and the validation cannot disagree. The image methods (rd4ad, student, multiteacher,
mkd) share :func:`training.train.train`; ``--method kdae_vector`` runs the KD-AE trainer
(:func:`training.kdae.train_kdae`) with the options given here translated by :func:`kdae_config`.

Under ``torchrun --nproc-per-node N`` the image methods train data-parallel (:mod:`training.distributed`): the same
options, ``--batch-size`` the global batch, rank 0 writing the same run folder one process would.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from pydantic import ValidationError

from kdcore.options import add_config_options
from training.config import TrainConfig
from training.distributed import check_batch_size, from_environment, process_group
from training.methods import Method

if TYPE_CHECKING:
    from training.kdae import KDAEConfig

log = logging.getLogger(__name__)

#: The options ``kdae_vector`` uses; any other one given with it is named in a warning, not silently dropped.
KDAE_OPTIONS = frozenset({"method", "category", "output", "seed", "lr", "epochs", "batch_size", "threads"})


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one option per :class:`TrainConfig` field."""
    parser = argparse.ArgumentParser(
        prog="kd-train",
        description="Train an anomaly detector and write its run folder: weights, the stats JSON (score "
        "statistics, thresholds, 0..1 calibration, metrics) and plots. The image methods (rd4ad: frozen "
        "pretrained teacher, one-class bottleneck, student decoder; student; multiteacher; mkd) train on the good "
        "images of an MVTec AD-layout category; kdae_vector trains the vector KD-AE on scikit-learn's digits, "
        "--category being the normal digit.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_options(parser, TrainConfig)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def given_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict[str, object]:
    """The options on the command line, without the defaults argparse would fill in.

    The config model supplies the defaults itself and then knows (``model_fields_set``) what the user asked
    for, which a method whose own defaults differ (``kdae_vector``) needs.

    Args:
        parser: The parser (exits with code 2 on a malformed command line, as usual).
        argv: The arguments; ``None`` reads ``sys.argv``.

    Returns:
        Destination name to parsed value, for the options given only.
    """
    unset = object()
    # argparse only sets a default where the namespace lacks the attribute, so pre-set ones mark "not given".
    blank = argparse.Namespace(**dict.fromkeys(vars(parser.parse_args([])), unset))
    return {k: v for k, v in vars(parser.parse_args(argv, namespace=blank)).items() if v is not unset}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code.

    Under ``torchrun`` (``WORLD_SIZE`` above 1) every process runs this with the same arguments and trains its
    share of each batch (:mod:`training.distributed`); rank 0 alone logs at INFO, shows progress, writes the run
    folder and prints the summary.
    """
    try:
        group = from_environment()
    except ValueError as e:
        print(f"kd-train: {e}", file=sys.stderr)
        return 2
    main_process = group is None or group.is_main
    # The other processes would repeat rank 0's every line; their warnings and errors still show.
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    args = given_options(build_parser(), argv)
    quiet = bool(args.pop("quiet", False))
    try:
        config = TrainConfig.model_validate(args)
    except ValidationError as e:
        for err in e.errors():
            print(f"kd-train: --{'-'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']}", file=sys.stderr)
        return 2
    if group is not None:
        # Refused before any process joins the group: every process decides the same, so none is left waiting.
        try:
            data_parallel_method(config.method)
            check_batch_size(config.batch_size, group)
        except ValueError as e:
            if main_process:
                print(f"kd-train: {e}", file=sys.stderr)
            return 2
    if config.method is Method.KDAE_VECTOR:
        return _train_kdae(config)
    from training.train import train, train_data_parallel  # heavy imports only once the arguments are valid

    if group is None:
        result = train(config, progress=not quiet)
    else:
        with process_group(group):
            result = train_data_parallel(config, group, progress=not quiet)
        if result is None:  # not rank 0: trained its share, writes and prints nothing
            return 0
    m = result.stats.test_metrics
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"run folder: {result.paths.root}")
    print(f"stats JSON: {result.paths.stats}")
    print(
        f"test ({m.num_good} good, {m.num_anomalous} anomalous): image AUROC {fmt(m.image_auroc)}, "
        f"pixel AUROC {fmt(m.pixel_auroc)}, AUPRO {fmt(m.aupro)}, image F1 {fmt(m.image_f1)}"
    )
    return 0


def data_parallel_method(method: Method) -> None:
    """Refuse a method that cannot train under torchrun.

    Raises:
        ValueError: For ``kdae_vector``, which has its own trainer (:mod:`training.kdae`) outside the common
            training loop that data-parallel training goes through; the message says to run it in one process.
    """
    if method is Method.KDAE_VECTOR:
        raise ValueError("--method kdae_vector trains in one process (its own trainer, not the image methods' "
                         "data-parallel loop); run it without torchrun")


def kdae_config(config: TrainConfig) -> KDAEConfig:
    """The KD-AE run that ``kd-train --method kdae_vector`` asks for.

    ``--category`` is the normal digit; ``--seed``, ``--output`` and ``--lr`` (default: the method's) carry
    over. ``--epochs`` sets the epochs of both networks, teacher and student, and ``--batch-size`` the batch
    size of both; left out, each keeps KD-AE's own default (:class:`~training.kdae.KDAEConfig`), so a plain
    ``kd-train --method kdae_vector`` trains exactly what ``python -m training.kdae`` does.

    Args:
        config: The parsed options; ``config.model_fields_set`` tells which were given.

    Returns:
        The KD-AE configuration.

    Raises:
        ValueError: ``--category`` is not a digit 0-9, or ``--image-size`` is given with another value than
            its default (vectors have no image size; the message starts with the option's flag).
    """
    from training.kdae import KDAEConfig

    if not config.category.isdigit() or not 0 <= int(config.category) <= 9:
        raise ValueError(f"--category: method kdae_vector takes the normal digit 0-9, got {config.category!r}")
    default_size = TrainConfig.model_fields["image_size"].default
    if config.image_size != default_size:
        raise ValueError(f"--image-size: method kdae_vector scores 64-feature vectors, not images; "
                         f"drop --image-size {config.image_size}")
    given = config.model_fields_set
    sizes: dict[str, int] = {}
    if "epochs" in given and config.epochs is not None:
        sizes.update(epochs_teacher=config.epochs, epochs_student=config.epochs)
    if "batch_size" in given:
        sizes["batch_size"] = config.batch_size
    return KDAEConfig(digit=int(config.category), seed=config.seed, output=config.output,
                      lr=config.learning_rate, **sizes)


def _train_kdae(config: TrainConfig) -> int:
    """``--method kdae_vector``: the vector KD-AE on scikit-learn's digits, ``--category`` being the normal digit."""
    import torch

    from training.kdae import train_kdae

    try:
        kdae = kdae_config(config)
    except ValueError as e:
        print(f"kd-train: {e}", file=sys.stderr)
        return 2
    ignored = sorted(config.model_fields_set - KDAE_OPTIONS)
    if ignored:
        log.warning("method kdae_vector ignores %s", ", ".join("--" + name.replace("_", "-") for name in ignored))
    # One thread unless asked: these networks are too small to gain from more (KD-AE's own CLI default).
    torch.set_num_threads(config.threads or 1)
    print(train_kdae(kdae).summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
