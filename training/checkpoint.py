"""Building a detector from its config, and saving / loading trained weights (safetensors only)."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

from safetensors.torch import load_file, save_file

from training.backbones import build_encoder
from training.config import TrainConfig
from training.inference import DeployableDetector
from training.rd4ad import RD4AD
from training.runs import RunPaths


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_detector(config: TrainConfig, *, pretrained: bool = True) -> DeployableDetector:
    """The deployable network that ``config`` describes.

    Args:
        config: Training configuration (backbone, image size, smoothing).
        pretrained: Load the teacher's pretrained weights; ``False`` when a checkpoint will overwrite them.

    Returns:
        A :class:`DeployableDetector` wrapping a fresh :class:`~training.rd4ad.RD4AD`.
    """
    if pretrained:
        encoder = build_encoder(
            config.backbone, config.teacher_weights, allow_random_init=config.allow_random_teacher
        )
    else:
        # The checkpoint carries the teacher's weights, so the random init (and its warning) is transient.
        with warnings.catch_warnings(), _quiet(logging.getLogger("training.backbones")):
            warnings.simplefilter("ignore")
            encoder = build_encoder(config.backbone, None, allow_random_init=True)
    model = RD4AD(encoder, config.image_size, sigma=config.sigma)
    return DeployableDetector(model)


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
    model = build_detector(config, pretrained=False)
    model.load_state_dict(load_file(str(paths.weights)), strict=True)
    return model.eval(), config
