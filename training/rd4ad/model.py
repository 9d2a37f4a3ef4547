"""RD4AD: a frozen teacher encoder, a one-class bottleneck and a student decoder (Deng & Li, CVPR 2022).

Published numbers (Wide-ResNet-50-2, 256x256, MVTec AD, 200 epochs, Adam lr 0.005, betas (0.5, 0.999),
batch 16): image AUROC 98.5, pixel AUROC 97.8, AUPRO 93.9.

Two changes for teachers other than the paper's ResNets, both measured on the quality benchmark (README):

- **Linear output heads.** The decoder's stages end in ReLU (they mirror ResNet blocks, whose outputs are
  post-ReLU), but EfficientNet-Lite taps are the blocks' linear projections and take both signs. A non-negative
  student cannot point along a signed teacher vector: the loss stalled at a cosine distance of 0.45 per scale.
  A 1x1 convolution per scale (:attr:`FeatureEncoder.signed_taps`) lets it.
- **Local aggregation of the teacher's features** (``feature_pool``): a ``k x k`` mean over each tap, PatchCore's
  neighbourhood aggregation, so one teacher vector describes a patch rather than a pixel's receptive-field
  centre; ``1`` keeps the paper's.

And a second way of training (``denoising``, README "Denoising"): the bottleneck reads the teacher's features of
a locally perturbed copy of each training image and the decoder is asked for the clean image's, as RD++ (Tien et
al., CVPR 2023) does with simplex noise. The paper's decoder reads the features of the image itself and can learn
to pass on whatever they say; a denoiser should learn to replace an unusual patch by the usual. On the quality
benchmark it gained on one draw of meadow and lost on a larger one, so ``kd-train`` trains both and keeps the one
validation prefers (:func:`training.train.train`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.anomaly_map import AnomalyMapGenerator
from training.backbones import BackboneName, FeatureEncoder
from training.detector import DistillationDetector
from training.rd4ad.blocks import BlockType
from training.rd4ad.bottleneck import OneClassBottleneck
from training.rd4ad.decoder import ReverseDecoder
from training.rd4ad.loss import reverse_distillation_loss
from training.perturb import FAMILIES, perturb


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
        feature_pool: Side of the mean filter over each teacher tap (odd; 1: none).
        linear_heads: Whether the decoder ends in a linear 1x1 convolution per scale; ``None``: where the
            encoder's taps are signed.
        denoising: ``"off"`` (the paper's training) or a perturbation family of :mod:`training.perturb`: the
            student learns to give the good image's features from the features of a locally changed copy.
        seed: Seed of the training-time perturbations.

    Raises:
        ValueError: If ``image_size`` is not a positive multiple of 32, ``feature_pool`` is not a positive odd
            number, ``denoising`` is unknown, or the backbone is unknown.
    """

    def __init__(
        self,
        encoder: FeatureEncoder,
        image_size: int,
        sigma: float = 4.0,
        feature_pool: int = 1,
        linear_heads: bool | None = None,
        denoising: str = "off",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if image_size <= 0 or image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32 (the embedding is at stride 32), got {image_size}")
        if feature_pool < 1 or feature_pool % 2 == 0:
            raise ValueError(f"feature_pool must be a positive odd number (a centred window), got {feature_pool}")
        spec = STUDENT_SPECS[BackboneName(encoder.name)]
        channels = encoder.out_channels
        self.image_size = image_size
        self.sigma = sigma
        self.mean, self.std = encoder.mean, encoder.std
        self.encoder = encoder
        self.bottleneck = OneClassBottleneck(
            channels, spec.block, spec.bottleneck_blocks, width_per_group=spec.width_per_group
        )
        self.decoder = ReverseDecoder(
            channels, self.bottleneck.embed_channels, spec.block, spec.decoder_blocks, spec.width_per_group
        )
        if linear_heads is None:
            linear_heads = encoder.signed_taps
        self.heads = nn.ModuleList(nn.Conv2d(c, c, 1) for c in channels) if linear_heads else None
        self.feature_pool = feature_pool
        self.anomaly_map = AnomalyMapGenerator((image_size, image_size), len(channels), sigma)
        if denoising != "off" and denoising not in FAMILIES:
            raise ValueError(f"denoising must be 'off' or one of {FAMILIES}, got {denoising!r}")
        self.denoising = denoising
        self.__dict__["generator"] = torch.Generator().manual_seed(seed)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's parameters: the bottleneck, the decoder and its heads (the teacher stays frozen)."""
        heads = [*self.heads.parameters()] if self.heads is not None else []
        return [*self.bottleneck.parameters(), *self.decoder.parameters(), *heads]

    def use_map_scales(self, which: str) -> bool:
        """Which teacher scales the map sums (:meth:`AnomalyMapGenerator.use_scales`); RD4AD has the choice."""
        self.anomaly_map.use_scales(which)
        return True

    def teacher_features(self, x: Tensor) -> list[Tensor]:
        """The frozen teacher's taps, locally aggregated when ``feature_pool > 1``."""
        features = self.encoder(x)
        if self.feature_pool > 1:
            k = self.feature_pool
            features = [F.avg_pool2d(f, k, stride=1, padding=k // 2) for f in features]
        return features

    def student_features(self, teacher: list[Tensor]) -> list[Tensor]:
        """The student's reconstruction of every teacher scale from the bottleneck of ``teacher``."""
        student = self.decoder(self.bottleneck(teacher))
        if self.heads is not None:
            student = [head(s) for head, s in zip(self.heads, student, strict=True)]
        return student

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Teacher and student features for a normalised batch ``(N, 3, S, S)``."""
        teacher = self.teacher_features(x)
        return teacher, self.student_features(teacher)

    def training_loss(self, x: Tensor) -> Tensor:
        """Reverse-distillation loss on a normalised batch of good images.

        With ``denoising`` the bottleneck reads the teacher's features of a perturbed copy of the batch
        (:func:`training.perturb.perturb`) and the decoder is asked for the unperturbed features. A per-pixel term
        joins the paper's loss then: its one cosine per flattened image is dominated by the unchanged area (the
        blobs cover a few percent of it), so it barely asks for the changed blobs to be restored, which is the
        point (README, "Denoising").
        """
        if self.denoising == "off":
            return reverse_distillation_loss(*self(x))
        return self._denoising_loss(x, perturb(x, self.generator, self.denoising))

    def shard_loss(self, item: Tensor, rows: slice) -> Tensor:
        """:meth:`training_loss` of ``rows`` of a batch, for data-parallel training.

        With ``denoising`` the perturbations of the whole batch are drawn, in order from the one generator, as
        one process draws them; the rows keep theirs, and every process's generator stays in step with the
        others' and with a single process's.
        """
        if self.denoising == "off":
            return super().shard_loss(item, rows)
        return self._denoising_loss(item[rows], perturb(item, self.generator, self.denoising)[rows])

    def _denoising_loss(self, x: Tensor, changed: Tensor) -> Tensor:
        """Denoising training's loss: the student reads the features of ``changed`` and is asked for ``x``'s."""
        teacher = self.teacher_features(x)
        with torch.no_grad():
            changed_features = self.teacher_features(changed)
        return reverse_distillation_loss(teacher, self.student_features(changed_features), pixelwise=True)

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Image scores ``(N, 1)`` and smoothed anomaly maps ``(N, 1, S, S)`` for a normalised batch."""
        teacher, student = self(x)
        return self.anomaly_map(teacher, student)

    def predict_and_taps(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """:meth:`predict` and the memory's tap vectors: every teacher scale but the finest (locally aggregated,
        as the decoder's targets), averaged down to the coarsest's grid and concatenated (PatchCore's layers 2
        and 3 on a Lite teacher; stride 16, so a 256 px image asks 256 nearest neighbours)."""
        teacher, student = self(x)
        score, amap = self.anomaly_map(teacher, student)
        # The taps sit at strides 4, 8, 16 (each twice the last); a fixed kernel, not adaptive pooling, which
        # ONNX cannot export for a dynamic batch.
        last = len(teacher) - 1
        taps = torch.cat([F.avg_pool2d(f, 2 ** (last - i)) if i < last else f for i, f in enumerate(teacher) if i], 1)
        return score, amap, taps
