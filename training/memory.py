"""A memory of the teacher's good tap vectors, whose nearest-neighbour distance joins a detector's map.

Why: on a stochastic texture the benchmark's ``meadow`` cut-paste defect (the image's own grass, rotated and
rescaled) is reconstructed by RD4AD's decoder nearly as well as normal grass, because the decoder learned to
invert the teacher's features in general. A distance to the nearest training tap vector cannot generalise
that way: on meadow's validation split the teacher's own taps (strides 8 and 16, pooled to stride 16) with a
nearest-neighbour distance, PatchCore's principle, separate cut-paste pixels at 0.96 AUROC against RD4AD's 0.84.
Where RD4AD is better (sparse textures, printed text) validation keeps the weight at 0, and the memory is dropped.

The combined map is ``z(map) + weight * z(blur(upsample(distance)))``, each ``z`` a global z-score against the
good training images' maps (the distances of a training image measured against the other images' vectors, or
it would find itself). Both the bank and the statistics are buffers, so they travel in the checkpoint and the
exported graph; an empty bank is the identity, so a detector without a memory computes exactly what it did.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.anomaly_map import GaussianBlur2d

#: The weights of the distance term validation chooses from, in this order (a tie keeps the first: no memory).
MEMORY_WEIGHTS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)

#: Most vectors the bank keeps (a seeded random subset above it). Why a cap: each image's query vectors are
#: compared with every bank vector (about 1.7 GFLOP per 256 px image at 21 760 vectors of 152 channels).
MAX_BANK = 32768


class TapMemory(nn.Module):
    """Nearest-neighbour distances of tap vectors to a bank of good training vectors, added to a detector's map.

    Args:
        size: Side of the (square) maps.
        sigma: Gaussian smoothing of the upsampled distance map, the detector map's own.
    """

    def __init__(self, size: int, sigma: float = 4.0) -> None:
        super().__init__()
        self.size = int(size)
        self.blur = GaussianBlur2d(sigma, (self.size, self.size))
        self.register_buffer("bank", torch.zeros(0, 0))
        # Bank and queries are compared relative to the bank's mean: the expanded squared distance below cancels
        # less of |q|^2 + |b|^2 then (a demo run's float32 error fell from 1.1e-4 to 3e-5 against float64).
        self.register_buffer("center", torch.zeros(0))
        self.register_buffer("bank_sq", torch.zeros(0))
        # map mean, map 1/std, distance mean, distance 1/std, weight of the distance term
        self.register_buffer("coefficients", torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]))
        self._has_bank = False

    @property
    def active(self) -> bool:
        """Whether the memory changes the map: a Python flag kept with the bank, so tracing and export take the
        branch once, as a constant (a tensor's shape would be a traced value)."""
        return self._has_bank

    @property
    def weight(self) -> float:
        """The distance term's weight (0 when inactive)."""
        return float(self.coefficients[4]) if self.active else 0.0

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], *args: Any) -> None:
        if not any(key.startswith(prefix) for key in state_dict):
            self.reset()  # a checkpoint from before the memory existed: none, as it was trained
            return
        # The bank's size is the training set's: take the checkpoint's shapes before the copy checks them.
        for name in ("bank", "bank_sq", "center"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key]))
        uncentred = prefix + "center" not in state_dict  # written before the bank was centred: its mean was 0
        if uncentred:
            self.center = torch.zeros(state_dict[prefix + "bank"].shape[1:])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args)
        if uncentred and prefix + "center" in missing_keys:
            missing_keys.remove(prefix + "center")
        self._has_bank = self.bank.shape[0] > 0

    def _squared(self, vectors: Tensor) -> Tensor:
        """Squared distances ``(..., Q, M)`` of query vectors ``(..., Q, C)`` to every bank vector.

        ``|q - b|^2 = |q|^2 - 2 q.b + |b|^2`` as one matrix product: no ``cdist``, so the graph exports to
        ONNX opset 17 as plain MatMul and ReduceMin.
        """
        query = vectors - self.center
        return (query * query).sum(-1, keepdim=True) - 2.0 * torch.matmul(query, self.bank.t()) + self.bank_sq

    def distances(self, taps: Tensor) -> Tensor:
        """Distance of each tap vector ``(N, C, h, w)`` to its nearest bank vector, as ``(N, 1, h, w)``."""
        n, _, h, w = taps.shape
        nearest = torch.amin(self._squared(taps.flatten(2).transpose(1, 2)), dim=-1).clamp_min(0.0)
        return torch.sqrt(nearest).reshape(n, 1, h, w)

    def distance_map(self, taps: Tensor) -> Tensor:
        """The smoothed distance map ``(N, 1, S, S)`` at the input size, before its z-score."""
        up = F.interpolate(self.distances(taps), size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.blur(up)

    def combine(self, amap: Tensor, distance_map: Tensor, weight: float | Tensor | None = None) -> Tensor:
        """``z(amap) + weight * z(distance_map)`` with the fitted statistics (``weight``: the buffer's by default)."""
        k = self.coefficients
        weight = k[4] if weight is None else weight
        return (amap - k[0]) * k[1] + weight * (distance_map - k[2]) * k[3]

    def forward(self, amap: Tensor, taps: Tensor) -> Tensor:
        """The combined map for a detector map ``(N, 1, S, S)`` and its taps; ``amap`` itself when inactive."""
        if not self.active:
            return amap
        return self.combine(amap, self.distance_map(taps))

    @torch.no_grad()
    def fit(self, taps: Tensor, maps: Tensor, *, seed: int = 0, max_bank: int = MAX_BANK) -> Tensor:
        """Fill the bank from good training taps and fit both z-scores; the weight stays to be chosen.

        Args:
            taps: The training images' taps ``(N, C, h, w)`` (at least two images).
            maps: Their detector maps ``(N, 1, S, S)`` (as scored without the memory).
            seed: Seed of the subset kept when there are more than ``max_bank`` vectors.
            max_bank: The bank's cap.

        Returns:
            The training images' distance maps ``(N, 1, S, S)``, each measured against the other images' vectors.

        Raises:
            ValueError: With fewer than two training images (a left-out image needs others to be compared with).
        """
        n, c, h, w = taps.shape
        if n < 2:
            raise ValueError(f"a tap memory needs at least two training images, got {n}")
        vectors = taps.flatten(2).transpose(1, 2).reshape(-1, c)
        owner = torch.arange(n).repeat_interleave(h * w)
        if len(vectors) > max_bank:
            keep = torch.randperm(len(vectors), generator=torch.Generator().manual_seed(seed))[:max_bank]
            vectors, owner = vectors[keep], owner[keep]
        self.center = vectors.float().mean(0)
        self.bank = (vectors.float() - self.center).contiguous()
        self.bank_sq = (self.bank * self.bank).sum(-1)
        self._has_bank = True
        # Left-out distances: each training image against the vectors of the others.
        left_out = []
        for i in range(n):
            squared = self._squared(taps[i].flatten(1).t())
            squared[:, owner == i] = float("inf")
            left_out.append(torch.sqrt(torch.amin(squared, dim=-1).clamp_min(0.0)).reshape(1, 1, h, w))
        up = F.interpolate(torch.cat(left_out), size=(self.size, self.size), mode="bilinear", align_corners=False)
        distance_maps = self.blur(up)
        maps = maps.to(torch.float64)
        dist = distance_maps.to(torch.float64)
        self.coefficients.copy_(torch.tensor([
            float(maps.mean()), 1.0 / max(float(maps.std()), 1e-12),
            float(dist.mean()), 1.0 / max(float(dist.std()), 1e-12), 0.0,
        ]))
        return distance_maps

    def set_weight(self, weight: float) -> None:
        """Use the fitted bank with this weight; 0 empties the bank, so the memory is gone from the graph."""
        if weight == 0.0:
            self.reset()
            return
        self.coefficients[4] = float(weight)

    def reset(self) -> None:
        """Back to no memory (the identity)."""
        self.bank = torch.zeros(0, 0)
        self.bank_sq = torch.zeros(0)
        self.center = torch.zeros(0)
        self._has_bank = False
        self.coefficients.copy_(torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]))
