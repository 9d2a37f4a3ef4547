"""MKD: multiresolution knowledge distillation for anomaly detection.

Salehi, Sadjadi, Baselizadeh, Rohban & Rabiee, "Multiresolution Knowledge Distillation for Anomaly Detection",
CVPR 2021. A frozen, pretrained teacher is tapped at several depths ("critical points"); a smaller "cloner"
is trained on good images only to reproduce every tap, with a value loss (MSE) plus a direction loss
(``1 - cos``) per tap (:func:`~training.mkd.loss.mkd_loss`, which departs from the paper's per-sample
cosine and raw MSE to train exactly what the map scores; why is in its module). On anomalous inputs the
cloner, which only ever imitated the teacher on normal data, diverges from it, and that discrepancy is the
anomaly score.

Published numbers (VGG16 teacher, its ImageNet weights, a narrow VGG cloner): MVTec AD mean image AUROC 87.7,
CIFAR-10 one-class mean AUROC about 87.2. This machine's demo setting is much smaller (EfficientNet-Lite0
teacher tapped at strides 4, 8 and 16, a ~0.3 M-parameter cloner, low resolution, few CPU epochs), so those
numbers are the reference, not what a demo run reproduces.

Scoring differs from the paper in one documented way: Salehi et al. localise with gradients of the loss
(SmoothGrad-style attribution maps); here the map is the per-pixel teacher-cloner discrepancy, which needs no
backward pass and therefore exports to ONNX / TorchScript with the network, like RD4AD's map.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.anomaly_map import GaussianBlur2d, cosine_distance_maps
from training.backbones import FeatureEncoder
from training.detector import DistillationDetector
from training.mkd.cloner import Cloner
from training.mkd.loss import mkd_loss


class MKDDetector(DistillationDetector):
    """A frozen teacher and the cloner that imitates its taps.

    Anomaly map (:meth:`predict`), per tap ``i`` and pixel::

        d_i = mean_c (t_i - s_i)^2 / scale_i  +  lambda_direction * (1 - cos_c(t_i, s_i))

    where ``scale_i`` is the teacher tap's mean squared activation over the training images (measured by
    :meth:`prepare`, 1 until then), so the three taps weigh alike whatever the teacher's activation scales.
    Each ``d_i`` is bilinearly upsampled (``align_corners=True``) to ``S x S``, the three are summed and
    smoothed with a Gaussian of ``sigma`` pixels; the image score is the map's maximum.

    Args:
        encoder: The frozen, pretrained teacher (three taps at strides 4, 8, 16).
        image_size: Square input side, a positive multiple of 16.
        width: Cloner width (channels at its stride-4 stage).
        sigma: Gaussian smoothing of the map in pixels.
        lambda_direction: Weight of the direction term, in the loss and in the map.

    Raises:
        ValueError: If ``image_size`` is not a positive multiple of 16 or ``lambda_direction`` is negative.
    """

    def __init__(
        self,
        encoder: FeatureEncoder,
        image_size: int,
        width: int = 32,
        sigma: float = 4.0,
        lambda_direction: float = 0.5,
    ) -> None:
        super().__init__()
        if image_size <= 0 or image_size % 16:
            raise ValueError(
                f"image_size must be a positive multiple of 16 (the deepest tap is at stride 16), got {image_size}"
            )
        if lambda_direction < 0:
            raise ValueError(f"lambda_direction must be >= 0, got {lambda_direction}")
        self.image_size = int(image_size)
        self.mean, self.std = encoder.mean, encoder.std
        self.lambda_direction = float(lambda_direction)
        self.encoder = encoder
        self.cloner = Cloner(encoder.out_channels, width)
        self.blur = GaussianBlur2d(sigma, (self.image_size, self.image_size))
        # Persistent, so a saved run keeps the normalisation it was scored with.
        self.register_buffer("tap_scale", torch.ones(len(encoder.out_channels)))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The cloner's parameters (the teacher stays frozen)."""
        return list(self.cloner.parameters())

    @torch.no_grad()
    def prepare(self, batches: Iterable[Tensor]) -> None:
        """Measure each teacher tap's mean squared activation over the training batches (into ``tap_scale``).

        Args:
            batches: Normalised training batches ``(N, 3, S, S)``; iterated once. With no batch the scales
                stay as they are.
        """
        total = torch.zeros_like(self.tap_scale, dtype=torch.float64)
        count = 0
        for x in batches:
            for i, t in enumerate(self.encoder(x)):
                total[i] += t.double().pow(2).mean(dim=(1, 2, 3)).sum()
            count += x.shape[0]
        if count:
            self.tap_scale.copy_((total / count).clamp_min(1e-12).to(self.tap_scale.dtype))

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Teacher taps and cloner outputs for a normalised batch ``(N, 3, S, S)``."""
        with torch.no_grad():
            teacher = self.encoder(x)
        return teacher, self.cloner(x)

    def training_loss(self, x: Tensor) -> Tensor:
        """:func:`~training.mkd.loss.mkd_loss` on good images: the mean of the map's own terms, same tap scales."""
        return mkd_loss(*self(x), lambda_direction=self.lambda_direction, scales=self.tap_scale)

    def anomaly_map(self, teacher: list[Tensor], student: list[Tensor]) -> Tensor:
        """The unsmoothed map ``(N, 1, S, S)`` described in the class docstring."""
        size = (self.image_size, self.image_size)
        # Upsampling is linear, so the direction terms can be summed by the shared helper.
        total = self.lambda_direction * cosine_distance_maps(teacher, student, size)
        for i, (t, s) in enumerate(zip(teacher, student, strict=True)):
            value = (t - s).pow(2).mean(dim=1, keepdim=True) / self.tap_scale[i]
            total = total + F.interpolate(value, size=size, mode="bilinear", align_corners=True)
        return total

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Image scores ``(N, 1)`` (map maxima) and smoothed anomaly maps ``(N, 1, S, S)``."""
        amap = self.blur(self.anomaly_map(*self(x)))
        return torch.amax(amap, dim=(2, 3)), amap
