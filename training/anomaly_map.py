"""Anomaly maps from feature discrepancies, shared by the distillation detectors.

RD4AD (Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class Embedding", CVPR 2022) scores a
pixel by how badly the student reconstructs the teacher's features there: per scale ``1 - cos`` over channels,
bilinearly upsampled to the input size, summed over scales and smoothed with a Gaussian of sigma 4. The image
score is the maximum of the smoothed map. Everything here is plain torch so the scoring exports with the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gaussian_kernel_1d(sigma: float, truncate: float = 4.0) -> Tensor:
    """A normalised 1-D Gaussian kernel with scipy's ``gaussian_filter`` support.

    Args:
        sigma: Standard deviation in pixels.
        truncate: Kernel half-width in standard deviations (scipy's default is 4, i.e. 33 taps at sigma 4).

    Returns:
        Tensor of shape ``(2 * radius + 1,)`` summing to 1.
    """
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(torch.float32)


class GaussianBlur2d(nn.Module):
    """Separable Gaussian smoothing of single-channel maps, equal to ``scipy.ndimage.gaussian_filter``.

    Two 1-D passes instead of one 33x33 kernel: the same result at a fraction of the cost (about 20% of a
    small RD4AD's CPU time went to the 2-D blur). Borders use scipy's default half-sample symmetric
    reflection (``d c b a | a b c d``), done with a constant gather because torch's ``reflect`` pad mode
    is the other kind. Kernel and indices are buffers built once, not on every forward.

    Args:
        sigma: Standard deviation in pixels (RD4AD uses 4).
        size: ``(H, W)`` of the maps, fixed for the model's input size.

    Raises:
        ValueError: If a side is shorter than the kernel radius.
    """

    def __init__(self, sigma: float, size: tuple[int, int]) -> None:
        super().__init__()
        kernel = gaussian_kernel_1d(sigma)
        self.radius = r = (kernel.numel() - 1) // 2
        if min(size) < r:
            raise ValueError(f"maps of size {size} are smaller than the blur radius {r}")
        self.register_buffer("kernel_h", kernel.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("kernel_v", kernel.view(1, 1, -1, 1), persistent=False)
        self.register_buffer("rows", self._symmetric_index(size[0], r), persistent=False)
        self.register_buffer("cols", self._symmetric_index(size[1], r), persistent=False)

    @staticmethod
    def _symmetric_index(n: int, r: int) -> Tensor:
        idx = torch.arange(-r, n + r)
        idx = torch.where(idx < 0, -idx - 1, idx)
        return torch.where(idx >= n, 2 * n - idx - 1, idx)

    def forward(self, x: Tensor) -> Tensor:
        """Blur ``x`` of shape ``(N, 1, H, W)``; returns the same shape."""
        x = F.conv2d(torch.index_select(x, 3, self.cols), self.kernel_h)
        return F.conv2d(torch.index_select(x, 2, self.rows), self.kernel_v)


def cosine_distance_maps(
    teacher: Sequence[Tensor], student: Sequence[Tensor], size: tuple[int, int], weights: Tensor | None = None
) -> Tensor:
    """Sum over scales of ``1 - cos`` over channels, each upsampled to ``size``.

    Args:
        teacher: Feature maps ``(N, C_i, H_i, W_i)``, one per scale.
        student: Feature maps of the same shapes.
        size: Output ``(H, W)``, the network's input size.
        weights: Optional weight per scale ``(len(teacher),)``; ``None`` weighs every scale 1.

    Returns:
        Unsmoothed anomaly map of shape ``(N, 1, H, W)``, in ``[0, 2 * len(teacher)]``.
    """
    total: Tensor | None = None
    for i, (t, s) in enumerate(zip(teacher, student, strict=True)):
        distance = 1.0 - F.cosine_similarity(t, s, dim=1).unsqueeze(1)
        distance = F.interpolate(distance, size=size, mode="bilinear", align_corners=True)
        if weights is not None:
            distance = distance * weights[i]
        total = distance if total is None else total + distance
    assert total is not None, "at least one scale is required"
    return total


#: Which teacher scales an anomaly map sums, finest first dropped (see :meth:`AnomalyMapGenerator.use_scales`).
MAP_SCALES = ("all", "without_finest", "coarsest")


class AnomalyMapGenerator(nn.Module):
    """Turns teacher and student features into a smoothed anomaly map and an image score.

    Args:
        image_size: ``(H, W)`` of the network input; the map has this size.
        num_scales: How many feature scales the map sums (finest first).
        sigma: Gaussian smoothing in pixels.
    """

    def __init__(self, image_size: tuple[int, int], num_scales: int, sigma: float = 4.0) -> None:
        super().__init__()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.blur = GaussianBlur2d(sigma, self.image_size)
        # A buffer, not a constructor argument: the scales are chosen on validation after training, and the
        # choice must travel in the checkpoint and the exported graph like the weights do.
        self.register_buffer("scale_weights", torch.ones(num_scales))

    def use_scales(self, which: str) -> None:
        """Sum ``"all"`` scales, all ``"without_finest"``, or the ``"coarsest"`` alone.

        The finest tap describes the smallest patches: it finds the smallest defects (a sparse texture's spots)
        but is also the noisiest on a stochastic texture's good images, where coarser scales separate better.

        Raises:
            ValueError: For another name, or one that would leave no scale.
        """
        n = self.scale_weights.numel()
        dropped = {"all": 0, "without_finest": 1, "coarsest": n - 1}.get(which)
        if dropped is None or dropped >= n:
            raise ValueError(f"map scales must be one of {MAP_SCALES} with {n} scale(s), got {which!r}")
        weights = torch.ones(n)
        weights[:dropped] = 0.0
        self.scale_weights.copy_(weights)

    def forward(self, teacher: Sequence[Tensor], student: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Returns ``(score (N, 1), map (N, 1, H, W))``; the score is the map's maximum."""
        amap = self.blur(cosine_distance_maps(teacher, student, self.image_size, self.scale_weights))
        score = torch.amax(amap, dim=(2, 3))
        return score, amap

