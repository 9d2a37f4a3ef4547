"""Building a detector from its config, and saving / loading trained weights (safetensors only)."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from kdcore.contract import NetworkSpec, image_network_spec, vector_network_spec
from kdcore.stats import Normalization, Stats, load_stats
from training.backbones import build_encoder
from training.config import TrainConfig
from training.inference import DeployableDetector
from training.methods import Method, backbone_label, build_network
from training.runs import RunPaths

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _errors_only(logger: logging.Logger) -> Iterator[None]:
    """Drops ``logger``'s records below ERROR inside the block, by a filter removed on the way out.

    A filter rather than ``setLevel``: the logger's level belongs to the application's logging configuration
    and is never changed here; the filter goes when the block ends, exceptions included.
    """

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def build_detector(
    config: TrainConfig, *, pretrained: bool = True, normalization: Normalization | None = None
) -> DeployableDetector:
    """The deployable network that ``config`` describes, ready to train.

    Args:
        config: Training configuration.
        pretrained: Load the teachers' pretrained weights (and a student's trained RD4AD teacher); ``False``
            when a checkpoint will overwrite the weights anyway.
        normalization: With ``pretrained=False``, a student's input normalisation (from its stats JSON).

    Returns:
        A :class:`DeployableDetector`.
    """
    if not pretrained:
        # The checkpoint carries the teachers' weights, so a random init (and its warning) is transient.
        # Filters apply only to the logger a record is made on, so this is the teachers' own logger.
        with warnings.catch_warnings(), _errors_only(logging.getLogger(build_encoder.__module__)):
            warnings.simplefilter("ignore")
            return DeployableDetector(build_network(config, allow_random_init=True, normalization=normalization))
    if config.method is Method.STUDENT:
        if config.teacher_run is None:
            raise ValueError("method 'student' needs --teacher-run: the run folder of a trained RD4AD")
        teacher, teacher_config = load_checkpoint(config.teacher_run)
        if teacher_config.image_size != config.image_size:
            raise ValueError(f"the teacher takes {teacher_config.image_size} px images, the config says {config.image_size}")
        normalization = load_stats(RunPaths(config.teacher_run).stats).normalization
        student = build_network(config, allow_random_init=False, normalization=normalization)
        student.attach_teacher(teacher)
        return DeployableDetector(student)
    return DeployableDetector(build_network(config, allow_random_init=config.allow_random_teacher))


def with_teacher_backbone(config: TrainConfig) -> TrainConfig:
    """A student's config naming its teacher run's backbone and weights (other methods' unchanged).

    Why: the student's hint features read its teacher's encoder, and its input normalisation is the teacher's, so
    the backbone is not the student's to choose; recording the teacher's in the student's own config is what
    rebuilds the same network from the run folder.

    Raises:
        FileNotFoundError: The teacher run has no config.
    """
    if config.method is not Method.STUDENT or config.teacher_run is None:
        return config
    path = RunPaths(config.teacher_run).config
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {config.teacher_run} a finished training run?")
    teacher = TrainConfig.model_validate(json.loads(path.read_text(encoding="utf-8")))
    if "backbone" in config.model_fields_set and config.backbone is not teacher.backbone:
        log.warning("the student reads its teacher's %s encoder, not the %s given", teacher.backbone.value,
                    config.backbone.value)
    return config.model_copy(update={"backbone": teacher.backbone, "teacher_weights": teacher.teacher_weights})


def save_checkpoint(model: DeployableDetector, config: TrainConfig, paths: RunPaths) -> None:
    """Write the weights and the config that rebuilds the architecture."""
    paths.root.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(paths.weights))
    paths.config.write_text(config.model_dump_json(indent=2) + "\n", encoding="utf-8")


def load_checkpoint(run_dir: Path) -> tuple[DeployableDetector, TrainConfig]:
    """Rebuild a trained detector from its run folder, in eval mode.

    Raises:
        FileNotFoundError: If the run folder lacks its weights or config.
    """
    paths = RunPaths(Path(run_dir))
    for p in (paths.weights, paths.config):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: is {paths.root} a finished training run?")
    config = TrainConfig.model_validate(json.loads(paths.config.read_text(encoding="utf-8")))
    # A student's normalisation is its teacher's, recorded in its own stats JSON.
    normalization = load_stats(paths.stats).normalization if config.method is Method.STUDENT else None
    model = build_detector(config, pretrained=False, normalization=normalization)
    model.load_state_dict(load_file(str(paths.weights)), strict=True)
    return model.eval(), config


def load_deployable(run_dir: Path) -> tuple[nn.Module, NetworkSpec, Stats]:
    """The network of any finished run as it is deployed, with its input/output spec and validated stats.

    Raises:
        FileNotFoundError: The run folder is incomplete.
        StatsError: Its stats JSON is malformed or does not match its config.
    """
    paths = RunPaths(Path(run_dir))
    stats = load_stats(paths.stats)
    if stats.model.input_kind == "signal":
        from training.signals.deploy import load_series_detector

        return load_series_detector(paths.root)
    if stats.model.input_kind == "vector":
        from training.kdae import load_kdae_student

        return load_kdae_student(paths.root).eval(), vector_network_spec(stats.model.input_size), stats
    model, config = load_checkpoint(paths.root)
    load_stats(paths.stats, input_size=config.image_size, backbone=backbone_label(config))
    return model, image_network_spec(config.image_size), stats
