"""Multi-teacher student-teacher anomaly detection: one compact student regresses a learned mix of several frozen
pretrained teachers, and the per-pixel student-teacher discrepancy is the anomaly map.

Ideas and references:

* Student-teacher discrepancy as the anomaly map, teacher features z-scored per channel with statistics of the
  anomaly-free training images: Bergmann, Fauser, Sattlegger & Steger, "Uninformed Students: Student-Teacher
  Anomaly Detection with Discriminative Latent Embeddings", CVPR 2020. A student only learns to imitate the
  teacher on the kind of images it was trained on, so where it fails, the image is unlike the training images.
* Several teachers with importance weights: Ma, Jiang, Guan & Yi, "Anomaly detection based on multi-teacher
  knowledge distillation", Journal of Systems Architecture 138 (2023) 102861. Different backbones see different
  things; one student that has to imitate all of them fails on more kinds of anomalies than a student of any one.

What this module does (one scale, default: stride 8):

1. Each frozen teacher (default EfficientNet-Lite0, -Lite1, -Lite2) is tapped at ``tap_stride``; its map is
   resized bilinearly onto the stride-8 grid of the input and z-scored per channel with the mean and standard
   deviation measured over all training images in :meth:`MultiTeacherDetector.prepare`.
2. A fixed, seeded, semi-orthogonal random matrix per teacher maps its channels to a common ``channels``: no
   learned layer sits between teacher and target, so nothing can learn to make the target easy to predict.
3. The target is ``T = sum_k softmax(alpha)_k P_k(z_k)`` with one learnable ``alpha`` per teacher, regularised
   against collapsing onto the easiest teacher (see :meth:`MultiTeacherDetector.training_loss`).
4. A compact CNN student (about 0.44 M parameters, strides 2, 2, 2) maps the image to ``T``'s shape. Loss and map
   are both squared error plus ``1 - cos`` over channels (:mod:`training.multiteacher.loss`); the map is upsampled
   to the input size and smoothed with a Gaussian of sigma 4, and the image score is its maximum.

Expected results, honestly: the reference implementations use much larger networks. Ma et al.'s repository
(teachers ResNet-152, VGG-19 and DenseNet, students ResNet-18/VGG-11/DenseNet-121, 500 epochs) records a mean
MVTec AD image AUROC of about 0.92 to 0.93 for its ResNet-18 student in its evaluation CSV, and learns its
teacher weights differently (through an autoencoder's reconstruction error, not jointly with the student).
Uninformed Students reports a mean PRO (localisation, up to 30 % false positive rate) of 0.914 on MVTec AD for
its multi-scale ensemble of students. This module is deliberately smaller: three mobile teachers of 40 to 48
channels at one scale and a sub-million-parameter student, so that it trains and serves on CPUs. No MVTec AD
number has been measured for it; the demo setting of this machine (the synthetic demo data, 64 to 256 px, a few
epochs on two CPU cores) shows that the pipeline works, not what the method can reach.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.anomaly_map import GaussianBlur2d
from training.backbones import BackboneName, FeatureEncoder, build_encoder
from training.detector import DistillationDetector
from training.layers import conv_bn_relu
from training.multiteacher.loss import discrepancy_map, distillation_loss, kl_to_uniform

DEFAULT_TEACHERS: tuple[str, ...] = (
    BackboneName.EFFICIENTNET_LITE0.value,
    BackboneName.EFFICIENTNET_LITE1.value,
    BackboneName.EFFICIENTNET_LITE2.value,
)
#: The student's output stride, and so the grid all teacher maps are brought onto.
GRID_STRIDE = 8
#: Weight of ``KL(softmax(alpha) || uniform)`` in the training loss: a temperature in loss units (see
#: :meth:`MultiTeacherDetector.training_loss`).
DEFAULT_FUSION_KL_WEIGHT = 0.1
# A channel whose training std is below this fraction of the median channel's is treated as constant: dividing
# by its tiny std would turn test-time noise into z-scores that dominate the map.
_STD_FLOOR_FRACTION = 1e-2


def semi_orthogonal(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """A random ``(rows, cols)`` matrix with orthonormal rows (``rows <= cols``) or columns (``rows > cols``),
    scaled so that its rows have mean squared norm 1.

    With orthonormal rows the map is a projection; with more rows than columns it is an isometric embedding,
    scaled by ``sqrt(rows / cols)``. Either way a z-scored input with uncorrelated unit-variance channels gives
    outputs of unit variance per channel, so teachers of different widths contribute equal energy to the target.

    Args:
        rows: Output channels.
        cols: Input channels.
        generator: Seeded random source.

    Returns:
        float32 ``(rows, cols)``.
    """
    gaussian = torch.randn(max(rows, cols), min(rows, cols), generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)  # q: orthonormal columns
    q = q * torch.sign(torch.diagonal(r))  # Haar-distributed (QR's sign convention would bias it)
    matrix = q.T if rows <= cols else q * (rows / cols) ** 0.5
    return matrix.to(torch.float32).contiguous()


class TeacherHead(nn.Module):
    """Per-channel z-score of one teacher's features and its fixed projection to the common channel count.

    All three are buffers: saved with the model, never trained.

    Args:
        in_channels: The teacher's channels at its tap.
        out_channels: The common channel count.
        generator: Seeded random source for the projection.
    """

    def __init__(self, in_channels: int, out_channels: int, generator: torch.Generator) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_channels))
        self.register_buffer("std", torch.ones(in_channels))
        self.register_buffer("projection", semi_orthogonal(out_channels, in_channels, generator))

    def zscore(self, features: Tensor) -> Tensor:
        """Per-channel ``(f - mean) / std`` of teacher features ``(N, C_k, H, W)``."""
        return (features - self.mean[:, None, None]) / self.std[:, None, None]

    def affine(self) -> tuple[Tensor, Tensor]:
        """``(weight (C, C_k), bias (C,))`` of ``f -> P (f - mean) / std``, z-score folded into the projection."""
        weight = self.projection / self.std
        return weight, -(weight @ self.mean)

    def forward(self, features: Tensor) -> Tensor:
        """Maps teacher features ``(N, C_k, H, W)`` to ``(N, C, H, W)``."""
        weight, bias = self.affine()
        return F.conv2d(features, weight[:, :, None, None], bias)


class CompactStudent(nn.Module):
    """Three stages of two 3x3 conv-BN-ReLU blocks (the first of each at stride 2), one more 3x3 block and a
    1x1 output convolution: ``(N, 3, S, S)`` to ``(N, out_channels, S / 8, S / 8)``.

    With the default widths (32, 64, 128) and 64 outputs it has about 0.44 M parameters and a 59-pixel
    receptive field: local enough that a defect cannot be explained away from far-off context.

    Args:
        out_channels: Channels of the output (the target's).
        widths: Channels of the three stages.
    """

    def __init__(self, out_channels: int, widths: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for width in widths:
            layers += [conv_bn_relu(in_ch, width, stride=2), conv_bn_relu(width, width)]
            in_ch = width
        layers += [conv_bn_relu(in_ch, in_ch), nn.Conv2d(in_ch, out_channels, 1)]
        self.layers = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """See the class docstring."""
        return self.layers(x)


class MultiTeacherDetector(DistillationDetector):
    """A compact student regressing a learned, regularised mix of frozen pretrained teachers (see the module).

    Call :meth:`prepare` with the training batches before training: it measures the z-score statistics.

    Args:
        image_size: Square input side in pixels, a positive multiple of 8.
        teachers: Backbone names (:class:`~training.backbones.BackboneName` values), at least one; they must
            share their input normalisation.
        channels: The common channel count of the target and the student's output.
        tap_stride: Which tap of every teacher to use: 4, 8 or 16.
        sigma: Gaussian smoothing of the anomaly map in pixels.
        teacher_weights: Checkpoint file per teacher name; teachers not named use their default location.
        allow_random_init: Build randomly initialised teachers when no weights are found (tests only).
        seed: Seed of the fixed random projections.
        fusion_kl_weight: Weight of the anti-collapse term on the fusion weights (0 turns it off).

    Attributes:
        teacher_names: The teachers, in the order of :meth:`fusion_weights`.
        prepared: Boolean buffer, set once :meth:`prepare` has measured the statistics.

    Raises:
        ValueError: An invalid size, stride, channel count or teacher list, teachers that disagree on the input
            normalisation, or weights given for a teacher that is not used.
    """

    def __init__(
        self,
        image_size: int,
        teachers: Sequence[str] = DEFAULT_TEACHERS,
        channels: int = 64,
        tap_stride: int = 8,
        sigma: float = 4.0,
        teacher_weights: Mapping[str, Path] | None = None,
        allow_random_init: bool = False,
        seed: int = 0,
        *,
        fusion_kl_weight: float = DEFAULT_FUSION_KL_WEIGHT,
    ) -> None:
        super().__init__()
        if image_size <= 0 or image_size % GRID_STRIDE:
            raise ValueError(f"image_size must be a positive multiple of {GRID_STRIDE}, got {image_size}")
        if isinstance(teachers, str) or not teachers:
            raise ValueError("teachers must be a non-empty sequence of backbone names")
        if channels <= 0:
            raise ValueError(f"channels must be positive, got {channels}")
        if fusion_kl_weight < 0:
            raise ValueError(f"fusion_kl_weight must be >= 0, got {fusion_kl_weight}")
        names = tuple(BackboneName(t).value for t in teachers)
        weights = {BackboneName(k).value: v for k, v in (teacher_weights or {}).items()}
        unused = sorted(set(weights) - set(names))
        if unused:
            raise ValueError(f"teacher_weights names teachers that are not used: {unused}")

        encoders = [build_encoder(n, weights.get(n), allow_random_init=allow_random_init) for n in names]
        first = encoders[0]
        for encoder in encoders[1:]:
            if (encoder.mean, encoder.std) != (first.mean, first.std):
                raise ValueError(
                    f"all teachers must take the same input normalisation: {first.name} expects mean "
                    f"{first.mean} std {first.std}, {encoder.name} mean {encoder.mean} std {encoder.std}"
                )
        if tap_stride not in first.strides:
            raise ValueError(f"tap_stride must be one of {first.strides}, got {tap_stride}")

        self.image_size = int(image_size)
        self.mean, self.std = first.mean, first.std
        self.teacher_names = names
        self.channels = int(channels)
        self.tap_stride = int(tap_stride)
        self.fusion_kl_weight = float(fusion_kl_weight)
        self.grid = self.image_size // GRID_STRIDE
        # Known at construction, so the export graph holds no shape-dependent branch.
        self._resize = -(-self.image_size // self.tap_stride) != self.grid

        # Channels-last runs the teachers' depthwise convolutions about 1.5x faster on CPU (oneDNN); it changes
        # memory layout only, not values, state dict keys or the exported graph.
        self.teachers = nn.ModuleList(e.to(memory_format=torch.channels_last) for e in encoders)
        generator = torch.Generator().manual_seed(int(seed))
        self.heads = nn.ModuleList(
            TeacherHead(e.out_channels[e.strides.index(self.tap_stride)], self.channels, generator)
            for e in encoders
        )
        self.alpha = nn.Parameter(torch.zeros(len(encoders)))
        self.student = CompactStudent(self.channels)
        self.blur = GaussianBlur2d(sigma, (self.image_size, self.image_size))
        self.register_buffer("prepared", torch.zeros((), dtype=torch.bool))

    # ----------------------------------------------------------------------------------------------------------
    # Contract
    # ----------------------------------------------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's parameters and the fusion logits ``alpha`` (teachers and projections stay fixed)."""
        return [*self.student.parameters(), self.alpha]

    @torch.no_grad()
    def prepare(self, batches: Iterable[Tensor]) -> None:
        """Measures every teacher's per-channel mean and std over all training pixels, on the common grid.

        Running sums in float64 over all batches (not a mean of per-batch statistics), so the result does not
        depend on how the images were batched.

        Args:
            batches: Normalised training batches ``(N, 3, S, S)``, iterated once.

        Raises:
            ValueError: If ``batches`` is empty.
        """
        sums: list[Tensor] = []
        squares: list[Tensor] = []
        count = 0
        for x in batches:
            features = self.teacher_features(x)
            if not sums:
                sums = [torch.zeros(f.shape[1], dtype=torch.float64, device=f.device) for f in features]
                squares = [torch.zeros_like(s) for s in sums]
            for k, f in enumerate(features):
                f64 = f.to(torch.float64)
                sums[k] += f64.sum(dim=(0, 2, 3))
                squares[k] += f64.square().sum(dim=(0, 2, 3))
            count += features[0].shape[0] * features[0].shape[2] * features[0].shape[3]
        if count == 0:
            raise ValueError("prepare() needs at least one training batch")
        for head, total, total_sq in zip(self.heads, sums, squares, strict=True):
            mean = total / count
            std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
            std = std.clamp_min(max(_STD_FLOOR_FRACTION * float(std.median()), 1e-6))
            head.mean.copy_(mean.to(head.mean))
            head.std.copy_(std.to(head.std))
        self.prepared.fill_(True)

    def training_loss(self, x: Tensor) -> Tensor:
        """Distillation loss plus the anti-collapse term on the fusion weights.

        ``alpha`` is trained by the same gradient as the student, and that gradient favours whichever teacher
        the student already imitates best: the student gets better at that teacher, its weight grows, and the
        loop ends in a one-hot fusion that silently drops the other teachers (the "easiest teacher" collapse).
        We add ``lambda * KL(softmax(alpha) || uniform)``, an entropy bonus written to be 0 at the uniform start.
        Principled because it makes the fusion a Gibbs distribution: for per-teacher costs ``c_k`` the minimiser
        of ``sum_k w_k c_k + lambda KL(w || u)`` is ``w_k ~ exp(-c_k / lambda)``, so every teacher keeps a
        positive weight, two weights differ at most by ``exp(delta c / lambda)``, and ``lambda`` is a
        temperature in loss units. (A stop-gradient alone would change nothing here: in joint gradient descent
        ``d loss / d alpha`` does not depend on whether the student's output is detached, since the student does
        not depend on ``alpha``; it only helps if ``alpha`` gets an objective of its own.)

        Args:
            x: Normalised batch ``(N, 3, S, S)`` of good images.

        Returns:
            The scalar loss; 0 when the student equals the target and the weights are uniform.

        Raises:
            RuntimeError: If :meth:`prepare` has not been called.
        """
        if not bool(self.prepared):
            raise RuntimeError("MultiTeacherDetector.prepare(training batches) must run before training")
        loss = distillation_loss(self.student(x), self.target(x))
        if self.fusion_kl_weight:
            loss = loss + self.fusion_kl_weight * kl_to_uniform(self.fusion_weights())
        return loss

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Image scores ``(N, 1)`` and smoothed anomaly maps ``(N, 1, S, S)`` for a normalised batch."""
        amap = discrepancy_map(self.student(x), self.target(x))
        amap = F.interpolate(amap, size=(self.image_size, self.image_size), mode="bilinear", align_corners=True)
        amap = self.blur(amap)
        return torch.amax(amap, dim=(2, 3)), amap

    # ----------------------------------------------------------------------------------------------------------
    # Parts
    # ----------------------------------------------------------------------------------------------------------

    def fusion_weights(self) -> Tensor:
        """``softmax(alpha)``: each teacher's weight in the target, ``(K,)`` in :attr:`teacher_names` order."""
        return torch.softmax(self.alpha, dim=0)

    def teacher_features(self, x: Tensor) -> list[Tensor]:
        """Raw (not z-scored) teacher maps on the common grid, ``(N, C_k, S / 8, S / 8)`` each, no gradient."""
        with torch.no_grad():
            x = x.contiguous(memory_format=torch.channels_last)
            features = [teacher.tap(x, self.tap_stride) for teacher in self._encoders()]
            if self._resize:
                features = [
                    F.interpolate(f, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
                    for f in features
                ]
        return features

    def target(self, x: Tensor) -> Tensor:
        """The fused target ``sum_k w_k P_k(z_k)``, ``(N, channels, S / 8, S / 8)``.

        The z-scores, projections and fusion weights are linear, so they fold into one 1x1 convolution over the
        concatenated teacher maps (constant-folded in the exported graph).
        """
        features = self.teacher_features(x)
        w = self.fusion_weights()
        weights, biases = zip(*(head.affine() for head in self.heads), strict=True)
        weight = torch.cat([w[k] * m for k, m in enumerate(weights)], dim=1)
        bias = torch.stack([w[k] * b for k, b in enumerate(biases)]).sum(dim=0)
        return F.conv2d(torch.cat(features, dim=1), weight[:, :, None, None], bias)

    def _encoders(self) -> list[FeatureEncoder]:
        return list(self.teachers)  # type: ignore[arg-type]
