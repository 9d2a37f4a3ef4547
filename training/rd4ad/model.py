"""RD4AD: a frozen teacher encoder, a one-class bottleneck and a student decoder (Deng & Li, CVPR 2022).

Published numbers (Wide-ResNet-50-2, 256x256, MVTec AD, 200 epochs, Adam lr 0.005, betas (0.5, 0.999),
batch 16): image AUROC 98.5, pixel AUROC 97.8, AUPRO 93.9.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from training.anomaly_map import AnomalyMapGenerator
from training.backbones import BackboneName, FeatureEncoder
from training.detector import DistillationDetector
from training.rd4ad.blocks import BlockType
from training.rd4ad.bottleneck import OneClassBottleneck
from training.rd4ad.decoder import ReverseDecoder
from training.rd4ad.loss import reverse_distillation_loss


@dataclass(frozen=True)
class StudentSpec:
    """How the student mirrors a given teacher."""

    block: BlockType
    bottleneck_blocks: int
    decoder_blocks: tuple[int, int, int]  # deepest stage first
    width_per_group: int = 64


#: The reference shapes for the ResNets; the EfficientNet-Lite models get the ResNet-18 recipe on their own
#: channels.
STUDENT_SPECS: dict[BackboneName, StudentSpec] = {
    BackboneName.WIDE_RESNET50_2: StudentSpec(BlockType.BOTTLENECK, 3, (3, 4, 6), width_per_group=128),
    BackboneName.RESNET18: StudentSpec(BlockType.BASIC, 2, (2, 2, 2)),
    BackboneName.EFFICIENTNET_LITE0: StudentSpec(BlockType.BASIC, 2, (2, 2, 2)),
    BackboneName.EFFICIENTNET_LITE1: StudentSpec(BlockType.BASIC, 2, (2, 2, 2)),
    BackboneName.EFFICIENTNET_LITE2: StudentSpec(BlockType.BASIC, 2, (2, 2, 2)),
}


class RD4AD(DistillationDetector):
    """Reverse distillation network.

    In training mode ``forward`` returns the teacher's and the student's features for the loss; the anomaly
    map and score come from :meth:`predict`, which the export wrapper calls so scoring travels with the graph.

    Args:
        encoder: The frozen, pretrained teacher (three taps at strides 4, 8, 16).
        image_size: Input side length in pixels (square inputs; a multiple of 32).
        sigma: Gaussian smoothing of the anomaly map in pixels.

    Raises:
        ValueError: If ``image_size`` is not a positive multiple of 32 or the backbone is unknown.
    """

    def __init__(self, encoder: FeatureEncoder, image_size: int, sigma: float = 4.0) -> None:
        super().__init__()
        if image_size <= 0 or image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32 (the embedding is at stride 32), got {image_size}")
        spec = STUDENT_SPECS[BackboneName(encoder.name)]
        channels = encoder.out_channels
        self.image_size = image_size
        self.mean, self.std = encoder.mean, encoder.std
        self.encoder = encoder
        self.bottleneck = OneClassBottleneck(
            channels, spec.block, spec.bottleneck_blocks, width_per_group=spec.width_per_group
        )
        self.decoder = ReverseDecoder(
            channels, self.bottleneck.embed_channels, spec.block, spec.decoder_blocks, spec.width_per_group
        )
        self.anomaly_map = AnomalyMapGenerator((image_size, image_size), sigma)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's parameters: the bottleneck and the decoder (the teacher stays frozen)."""
        return [*self.bottleneck.parameters(), *self.decoder.parameters()]

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Teacher and student features for a normalised batch ``(N, 3, S, S)``."""
        teacher = self.encoder(x)
        student = self.decoder(self.bottleneck(teacher))
        return teacher, student

    def training_loss(self, x: Tensor) -> Tensor:
        """Reverse-distillation loss on a normalised batch of good images."""
        return reverse_distillation_loss(*self(x))

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Image scores ``(N, 1)`` and smoothed anomaly maps ``(N, 1, S, S)`` for a normalised batch."""
        teacher, student = self(x)
        return self.anomaly_map(teacher, student)
