"""The detectors that ``kd-train --method`` can train, and how each is built from a :class:`TrainConfig`."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from kdcore.stats import Normalization
from training.backbones import build_encoder
from training.detector import DistillationDetector

if TYPE_CHECKING:
    from training.config import TrainConfig


class Method(str, Enum):
    """The detectors, each described by the same stats JSON; the image ones share one training loop."""

    RD4AD = "rd4ad"
    """Reverse distillation (Deng & Li, CVPR 2022): teacher encoder, one-class bottleneck, student decoder."""
    STUDENT = "student"
    """A compact CNN regressing a trained RD4AD's anomaly map (needs ``teacher_run``)."""
    MULTITEACHER = "multiteacher"
    """One student regressing the fused, z-scored features of several EfficientNet-Lite teachers."""
    MKD = "mkd"
    """Multiresolution knowledge distillation (Salehi et al., CVPR 2021): a cloner of a teacher's taps."""
    KDAE_VECTOR = "kdae_vector"
    """KD-AE on feature vectors (scikit-learn digits; ``category`` is the normal digit): :mod:`training.kdae`."""


#: Adam learning rate when the config gives none (RD4AD's is the paper's; KD-AE's is in its own config).
DEFAULT_LR = {Method.RD4AD: 0.005, Method.STUDENT: 0.001, Method.MULTITEACHER: 0.001, Method.MKD: 0.001,
              Method.KDAE_VECTOR: 0.01}
#: Training epochs when the config gives none. The student's epoch is one pass over its pool of perturbed
#: copies (:meth:`training.student.ScoreRegressor.prepare`); 80 such passes scored better than 40 on the quality
#: benchmark (README). KD-AE's are in its own config.
DEFAULT_EPOCHS = {Method.RD4AD: 40, Method.STUDENT: 80, Method.MULTITEACHER: 40, Method.MKD: 40}
#: RD4AD's teacher-feature pooling for the EfficientNet-Lite teachers when the config gives none (the quality
#: benchmark's best; the ResNets keep the paper's 1).
LITE_FEATURE_POOL = 3
#: Adam betas: RD4AD's paper uses (0.5, 0.999); the others keep Adam's defaults.
ADAM_BETAS = {Method.RD4AD: (0.5, 0.999)}


def build_network(
    config: TrainConfig, *, allow_random_init: bool, normalization: Normalization | None = None
) -> DistillationDetector:
    """The (untrained) network that ``config`` describes.

    Args:
        config: Training configuration.
        allow_random_init: Permit teachers without pretrained weights (loading a checkpoint overwrites them).
        normalization: The student's input normalisation (its teacher's; from the teacher's or its own stats
            JSON). Other methods take theirs from their teachers.

    Returns:
        The detector. A student is returned without its teacher; :func:`training.train.train` attaches it.

    Raises:
        ValueError: A student without ``teacher_run``.
        FileNotFoundError: Pretrained teacher weights missing and ``allow_random_init`` is False.
    """
    if config.method is Method.RD4AD:
        from training.rd4ad import RD4AD

        encoder = build_encoder(config.backbone, config.teacher_weights, allow_random_init=allow_random_init)
        heads = None if config.linear_heads == "auto" else config.linear_heads == "on"
        pool = config.feature_pool or (LITE_FEATURE_POOL if encoder.signed_taps else 1)
        # "auto" is a choice between trainings that training.train.train makes; the network is the same either way.
        denoising = "off" if config.denoising == "auto" else config.denoising
        return RD4AD(encoder, config.image_size, sigma=config.sigma, feature_pool=pool, linear_heads=heads,
                     denoising=denoising, seed=config.seed)
    if config.method is Method.MKD:
        from training.mkd import MKDDetector

        encoder = build_encoder(config.backbone, config.teacher_weights, allow_random_init=allow_random_init)
        return MKDDetector(encoder, config.image_size, sigma=config.sigma)
    if config.method is Method.MULTITEACHER:
        from training.multiteacher import MultiTeacherDetector

        return MultiTeacherDetector(
            config.image_size, sigma=config.sigma, allow_random_init=allow_random_init, seed=config.seed
        )
    if config.method is Method.STUDENT:
        from training.student import ScoreRegressor

        if config.teacher_run is None or normalization is None:
            raise ValueError("method 'student' needs teacher_run: the run folder of a trained RD4AD")
        encoder = None
        if config.student_features == "hint":
            encoder = build_encoder(config.backbone, config.teacher_weights, allow_random_init=allow_random_init)
        return ScoreRegressor(config.image_size, normalization.mean, normalization.std, seed=config.seed,
                              encoder=encoder, target_pool=config.student_target_pool,
                              perturbations=config.student_perturbations, memory=config.student_memory,
                              pool_copies=config.student_pool_copies)
    raise ValueError(f"unknown method {config.method!r}")


def backbone_label(config: TrainConfig) -> str:
    """What the stats JSON records as the backbone."""
    if config.method is Method.MULTITEACHER:
        return "efficientnet_lite0+efficientnet_lite1+efficientnet_lite2"
    if config.method is Method.STUDENT:
        return "student_cnn" if config.student_features == "scratch" else f"student_cnn+{config.backbone.value}_hint"
    return config.backbone.value
