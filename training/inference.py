"""The deployable form of a detector: uint8 RGB images in, raw score and raw anomaly map out.

Preprocessing lives in the graph, so clients send ``(N, H, W, 3)`` uint8 RGB (4x smaller on the wire than
float32) and no client can normalise differently from training. Training, evaluation and export all go
through :class:`DeployableDetector`, so the scores measured in training are the scores the server returns.
The output names come from :class:`InferenceOutput`'s fields: one source for the exporter, the Triton
configs and the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from training.detector import DistillationDetector

#: Name of the network's only input: uint8 RGB images ``(N, H, W, 3)``.
INPUT_NAME = "image"


class InferenceOutput(NamedTuple):
    """What a deployed detector returns."""

    pred_score: Tensor
    """Raw image score ``(N, 1)`` float32: the maximum of the anomaly map."""
    anomaly_map: Tensor
    """Raw anomaly map ``(N, 1, H, W)`` float32 at the input resolution."""


OUTPUT_NAMES: tuple[str, ...] = InferenceOutput._fields


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a deployed network, without the batch axis."""

    name: str
    datatype: str
    """Triton's name for the dtype: ``UINT8`` or ``FP32``."""
    dims: tuple[int, ...]


@dataclass(frozen=True)
class NetworkSpec:
    """The input and outputs of a deployed network (all batched on axis 0)."""

    input: TensorSpec
    outputs: tuple[TensorSpec, ...]

    @property
    def has_map(self) -> bool:
        """Whether the network returns an anomaly map (image models) or only a score (vector models)."""
        return any(o.name == "anomaly_map" for o in self.outputs)

    def example(self, batch: int = 2) -> Tensor:
        """Zeros of the input's shape and dtype, for tracing."""
        dtype = torch.uint8 if self.input.datatype == "UINT8" else torch.float32
        return torch.zeros(batch, *self.input.dims, dtype=dtype)


def image_network_spec(size: int) -> NetworkSpec:
    """Image detectors: uint8 RGB ``(N, S, S, 3)`` in, :class:`InferenceOutput` out."""
    return NetworkSpec(
        TensorSpec(INPUT_NAME, "UINT8", (size, size, 3)),
        (TensorSpec("pred_score", "FP32", (1,)), TensorSpec("anomaly_map", "FP32", (1, size, size))),
    )


def vector_network_spec(length: int) -> NetworkSpec:
    """Vector detectors: float32 features ``(N, D)`` in, the raw score ``(N, 1)`` out."""
    return NetworkSpec(TensorSpec("vector", "FP32", (length,)), (TensorSpec("pred_score", "FP32", (1,)),))


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
