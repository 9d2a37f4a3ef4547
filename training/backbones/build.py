"""Building a frozen teacher: the backbone's architecture with its pretrained weights, or a loud random one."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from training.backbones.efficientnet_lite import LITE_SCALING, EfficientNetLiteEncoder
from training.backbones.encoder import BackboneName, FeatureEncoder, parse_backbone
from training.backbones.resnet import build_resnet
from training.backbones.weights import (
    candidate_weight_paths,
    default_weights_path,
    how_to_get_weights,
    load_state_dict_file,
)

logger = logging.getLogger(__name__)


def build_encoder(name: str | BackboneName, weights: str | Path | None = None, *,
                  allow_random_init: bool = False) -> FeatureEncoder:
    """Builds a frozen, pretrained teacher encoder.

    Args:
        name: The backbone, a :class:`BackboneName` or its value.
        weights: Checkpoint of the full ImageNet network (torchvision / EfficientNet-PyTorch layout, ``.pth``
            or ``.safetensors``). ``None`` searches the default locations (see :func:`default_weights_path`).
        allow_random_init: If no weights are given or found, build a randomly initialised teacher instead of
            failing (for tests and smoke runs only: its anomaly scores are meaningless).

    Returns:
        The encoder, with parameters frozen and in eval mode.

    Raises:
        ValueError: If ``name`` is not a known backbone.
        FileNotFoundError: If ``weights`` does not exist, or if it is ``None``, none of the default locations
            has a checkpoint and ``allow_random_init`` is false.
        RuntimeError: If the checkpoint does not fit the architecture (the message names the keys).
    """
    backbone = parse_backbone(name)
    encoder = EfficientNetLiteEncoder(backbone) if backbone in LITE_SCALING else build_resnet(backbone)
    if weights is not None:
        path: Path | None = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Weights file for {backbone.value} not found: {path}")
    else:
        path = default_weights_path(backbone)
    if path is not None:
        encoder.load_pretrained(load_state_dict_file(path), source=path)
        logger.info("Loaded %s teacher weights from %s", backbone.value, path)
    else:
        searched = ", ".join(str(p) for p in candidate_weight_paths(backbone)) or "(nowhere)"
        if not allow_random_init:
            raise FileNotFoundError(
                f"No pretrained weights for the {backbone.value} teacher; looked in: {searched}. Pass the "
                f"checkpoint's path as `weights`, or {how_to_get_weights(backbone)}."
            )
        message = (
            f"The {backbone.value} teacher is RANDOMLY INITIALISED (no weights found in: {searched}). "
            "RD4AD needs a pretrained teacher: anomaly scores from this model will be meaningless."
        )
        warnings.warn(message, UserWarning, stacklevel=2)
        logger.warning(message)
    return encoder.freeze()
