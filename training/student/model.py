"""A compact student that regresses a trained RD4AD teacher's anomaly map directly from the image.

Knowledge distillation of the *score* (the KD-AE idea: a small network predicts the big model's anomaly
score) applied to maps: the target is ``log(1 + teacher map)`` average-pooled to the student's stride-8 grid, the
loss is L1, and the training images are the good ones plus synthetically perturbed good ones
(:mod:`training.student.perturb`) so that the targets are not all near zero. At inference the student alone
runs: ``map = exp(prediction) - 1`` upsampled to the input size, ``score = max(map)``; the teacher is not in the
exported graph. The student costs about 4% of an EfficientNet-Lite0 RD4AD's FLOPs (64 MFLOPs vs 1.42 GFLOPs at
256 px).

Reference: Bergmann et al., "Uninformed Students" (CVPR 2020) and Batzner et al., "EfficientAD" (WACV 2024)
show compact students matching their teachers (EfficientAD-S: 98.8 image AUROC on MVTec AD); score
regression of a bigger model is the KD-AE recipe this project's research code started from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.anomaly_map import GaussianBlur2d
from training.detector import DistillationDetector
from training.inference import DeployableDetector
from training.layers import conv_bn_relu
from training.student.perturb import perturb

#: The student predicts on the stride-8 grid of the input.
STRIDE = 8


def _separable(ch: int, dilation: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(ch, ch, 3, padding=dilation, dilation=dilation, groups=ch, bias=False),
        nn.Conv2d(ch, ch, 1, bias=False),
        nn.BatchNorm2d(ch),
        nn.ReLU(inplace=True),
    )


class ScoreRegressor(DistillationDetector):
    """The student network and its training objective.

    Args:
        image_size: Square input side (the teacher's).
        mean: Input normalisation mean (the teacher's, so both see the same tensors).
        std: Input normalisation std.
        width: Channels of the stride-8 stage.
        seed: Seed of the training-time perturbations.
        smoothing: Gaussian sigma, in stride-8 cells, applied to the predicted log map (the teacher's maps are
            smooth; this removes cell-level noise for almost no cost).
    """

    def __init__(
        self,
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        width: int = 48,
        seed: int = 0,
        smoothing: float = 1.0,
    ) -> None:
        super().__init__()
        if image_size % STRIDE:
            raise ValueError(f"image_size must be a multiple of {STRIDE}, got {image_size}")
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.features = nn.Sequential(
            conv_bn_relu(3, width // 4, 2), conv_bn_relu(width // 4, width // 2, 2), conv_bn_relu(width // 2, width, 2),
            _separable(width, 1), _separable(width, 2), _separable(width, 4),
        )
        self.head = nn.Conv2d(width, 1, 1)
        grid = image_size // STRIDE
        self.smooth = GaussianBlur2d(smoothing, (grid, grid)) if smoothing > 0 else nn.Identity()
        # The teacher is only needed for the training targets: kept out of the module tree, so it is neither
        # trained, nor saved, nor exported.
        self.__dict__["teacher"] = None
        self.__dict__["generator"] = torch.Generator().manual_seed(seed)

    def attach_teacher(self, teacher: DeployableDetector) -> None:
        """Set the trained RD4AD (with its preprocessing) whose maps are the targets.

        Raises:
            ValueError: If the teacher's input size or normalisation differs from the student's.
        """
        inner = teacher.detector
        if inner.image_size != self.image_size or tuple(inner.mean) != self.mean or tuple(inner.std) != self.std:
            raise ValueError("the teacher's input size and normalisation must equal the student's")
        self.__dict__["teacher"] = teacher.eval()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """All of the student's parameters."""
        return list(self.parameters())

    def log_map(self, x: Tensor) -> Tensor:
        """The prediction ``log(1 + map)`` on the stride-8 grid, ``(N, 1, S/8, S/8)``."""
        return self.smooth(self.head(self.features(x)))

    @torch.no_grad()
    def targets(self, x: Tensor) -> Tensor:
        """``log(1 + teacher map)`` average-pooled to the student's grid."""
        if self.teacher is None:
            raise RuntimeError("attach_teacher() first: the student learns from a trained RD4AD")
        _, amap = self.teacher.detector.predict(x)
        return F.avg_pool2d(torch.log1p(amap.clamp_min(0)), STRIDE)

    def training_loss(self, x: Tensor) -> Tensor:
        """L1 between the student's and the teacher's log maps, on good and perturbed good images."""
        batch = torch.cat([x, perturb(x, self.generator)])
        return F.l1_loss(self.log_map(batch), self.targets(batch))

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Raw scores ``(N, 1)`` and maps ``(N, 1, S, S)`` in the teacher's units."""
        # exp - 1 rather than expm1, which has no ONNX opset-17 export; no clamp at 0, so that "very normal"
        # regions keep distinct (slightly negative) values instead of tying.
        low = torch.exp(self.log_map(x)) - 1.0
        amap = F.interpolate(low, size=(self.image_size, self.image_size), mode="bilinear", align_corners=True)
        return torch.amax(low, dim=(2, 3)), amap
