"""The deployable form of a detector: uint8 RGB images in, raw score and raw anomaly map out.

Preprocessing lives in the graph, so clients send ``(N, H, W, 3)`` uint8 RGB (4x smaller on the wire than
float32) and no client can normalise differently from training. Training, evaluation and export all go
through :class:`DeployableDetector`, so the scores measured in training are the scores the server returns.
The tensor names and shapes are the wire contract's (:mod:`kdcore.contract`); :class:`InferenceOutput` is
their order as torch returns them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from kdcore.contract import RAW_MAP, RAW_PRED
from training.detector import DistillationDetector


class InferenceOutput(NamedTuple):
    """What a deployed image detector returns, in the order of :func:`kdcore.contract.image_network_spec`."""

    pred_score: Tensor
    """Raw image score ``(N, 1)`` float32: the maximum of the anomaly map."""
    anomaly_map: Tensor
    """Raw anomaly map ``(N, 1, H, W)`` float32 at the input resolution."""


class ImageNormalizer(nn.Module):
    """uint8 ``(N, H, W, 3)`` RGB -> float32 ``(N, 3, H, W)``, scaled to [0, 1] then standardised.

    Args:
        mean: Per-channel mean on the [0, 1] scale.
        std: Per-channel standard deviation on the [0, 1] scale.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        # Folding /255 into the affine map saves a pass over the image.
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        """Normalise a uint8 batch."""
        x = image.permute(0, 3, 1, 2).to(torch.float32)
        return x * self.scale + self.shift


class DeployableDetector(nn.Module):
    """A detector with its preprocessing, returning :class:`InferenceOutput`.

    Args:
        detector: The network; its ``mean`` and ``std`` set the normalisation.
    """

    def __init__(self, detector: DistillationDetector) -> None:
        super().__init__()
        self.detector = detector
        self.normalize = ImageNormalizer(detector.mean, detector.std)
        self.image_size = int(detector.image_size)

    def forward(self, image: Tensor) -> InferenceOutput:
        """Score uint8 RGB images ``(N, S, S, 3)``."""
        score, amap = self.detector.predict(self.normalize(image))
        return InferenceOutput(score, amap)


# The field names are the network's output names on the wire: a rename on either side must fail at import.
assert InferenceOutput._fields == (RAW_PRED, RAW_MAP), InferenceOutput._fields
