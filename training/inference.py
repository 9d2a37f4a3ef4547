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
from training.memory import TapMemory


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


class PositionalNormalizer(nn.Module):
    """Per-pixel z-score of anomaly maps against the maps of good training images: ``(map - mean) / std``.

    Why: where the images are aligned (objects, a fixed camera) and at the image borders (zero padding in every
    convolution), some positions are always harder for the student to reconstruct, and their raw discrepancy
    on good images outranks real defects elsewhere (the benchmark's ``stars``: every false alarm sat on a border).
    Measuring the typical discrepancy per pixel on the training images and scoring the deviation from it removes
    that. Starts as the identity (mean 0, std 1); :meth:`fit` sets it. Both tensors are persistent buffers, so
    they travel in the checkpoint and in the exported graph.

    Args:
        size: Side of the (square) maps.
    """

    #: The std floor as a fraction of the mean std: positions that never vary must not turn into huge z-scores.
    STD_FLOOR = 1e-3
    #: The std floor as a fraction of the map's mean magnitude. Why: two runtimes agree on a float32 map to about
    #: 1e-6 of its value, and dividing by a spread far below that value amplifies the disagreement into the score
    #: (a near-constant map of an untrained student put ONNX 4e-3 off eager, failing the export's parity check).
    #: No model of the quality benchmark comes near it (the smallest spread there is 3% of the mean).
    RELATIVE_STD_FLOOR = 1e-2

    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, 1, size, size))
        self.register_buffer("inv_std", torch.ones(1, 1, size, size))

    @torch.no_grad()
    def fit(self, maps: Tensor) -> None:
        """Set the statistics from raw maps ``(N, S, S)`` or ``(N, 1, S, S)`` of good training images."""
        maps = maps.reshape(maps.shape[0], 1, *self.mean.shape[-2:]).to(torch.float64)
        std = maps.std(dim=0, keepdim=True)
        mean = maps.mean(dim=0, keepdim=True)
        std = torch.clamp(std + self.STD_FLOOR * std.mean(), min=self.RELATIVE_STD_FLOOR * float(mean.abs().mean()))
        self.mean.copy_(mean.to(torch.float32))
        self.inv_std.copy_((1.0 / std).to(torch.float32))

    def reset(self) -> None:
        """Back to the identity."""
        self.mean.zero_()
        self.inv_std.fill_(1.0)

    @property
    def is_identity(self) -> bool:
        """Whether :meth:`fit` is not in effect."""
        return bool((self.mean == 0).all() and (self.inv_std == 1).all())

    def forward(self, amap: Tensor) -> Tensor:
        """Normalise maps ``(N, 1, S, S)``."""
        return (amap - self.mean) * self.inv_std


class DeployableDetector(nn.Module):
    """A detector with its preprocessing and map normalisation, returning :class:`InferenceOutput`.

    Args:
        detector: The network; its ``mean`` and ``std`` set the normalisation.
    """

    def __init__(self, detector: DistillationDetector) -> None:
        super().__init__()
        self.detector = detector
        self.normalize = ImageNormalizer(detector.mean, detector.std)
        self.image_size = int(detector.image_size)
        self.positional = PositionalNormalizer(self.image_size)
        self.memory = TapMemory(self.image_size, float(getattr(detector, "sigma", 4.0)))

    def raw_maps(self, image: Tensor) -> Tensor:
        """The detector's own maps ``(N, 1, S, S)`` before positional normalisation (what :meth:`PositionalNormalizer.fit` takes)."""
        return self.detector.predict(self.normalize(image))[1]

    def scored_maps(self, normalized: Tensor) -> Tensor:
        """The maps ``(N, 1, S, S)`` the score is taken from, for images already through :attr:`normalize`.

        One place for the composition, because a student distilling this detector learns exactly these maps:
        the network's map, positionally normalised where that was chosen, then joined by the tap memory's
        distances where validation gave them a weight.
        """
        if not self.memory.active:
            return self.positional(self.detector.predict(normalized)[1])
        _, raw, taps = self.detector.predict_and_taps(normalized)
        assert taps is not None, "a tap memory on a detector without taps"
        return self.memory(self.positional(raw), taps)

    def forward(self, image: Tensor) -> InferenceOutput:
        """Score uint8 RGB images ``(N, S, S, 3)``; the score is the maximum of the normalised map."""
        amap = self.scored_maps(self.normalize(image))
        return InferenceOutput(torch.amax(amap, dim=(2, 3)), amap)


# The field names are the network's output names on the wire: a rename on either side must fail at import.
assert InferenceOutput._fields == (RAW_PRED, RAW_MAP), InferenceOutput._fields
