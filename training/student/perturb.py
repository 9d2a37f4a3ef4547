"""Synthetic perturbations of good images, so the score-regressing student sees non-zero teacher maps.

The family is deliberately unlike the demo's test defects (scratches, holes, stains, pasted foreign
textures): Gaussian-noise patches, locally blurred patches, pixel-shuffled patches and same-image cut-paste
rectangles. The student learns "how the teacher reacts to local change" without ever seeing the test defects,
so the test split stays honest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _box(size: int, generator: torch.Generator, min_frac: float = 0.08, max_frac: float = 0.3) -> tuple[int, int, int, int]:
    h = int(size * (min_frac + (max_frac - min_frac) * torch.rand((), generator=generator)))
    w = int(size * (min_frac + (max_frac - min_frac) * torch.rand((), generator=generator)))
    y = int(torch.randint(0, size - h + 1, (), generator=generator))
    x = int(torch.randint(0, size - w + 1, (), generator=generator))
    return y, x, max(h, 2), max(w, 2)


def perturb(x: Tensor, generator: torch.Generator) -> Tensor:
    """A perturbed copy of a normalised batch ``(N, 3, S, S)``: one random local change per image.

    Args:
        x: Normalised images.
        generator: Source of randomness (seeded by the caller for reproducibility).

    Returns:
        A new tensor of the same shape.
    """
    out = x.clone()
    n, _, size, _ = x.shape
    for i in range(n):
        y, xx, h, w = _box(size, generator)
        patch = out[i, :, y : y + h, xx : xx + w]
        kind = int(torch.randint(0, 4, (), generator=generator))
        if kind == 0:  # sensor-like noise
            patch += torch.randn(patch.shape, generator=generator) * (0.3 + 0.7 * torch.rand((), generator=generator))
        elif kind == 1:  # out-of-focus region
            k = 2 * int(torch.randint(2, 6, (), generator=generator)) + 1
            patch.copy_(F.avg_pool2d(patch[None], k, stride=1, padding=k // 2, count_include_pad=False)[0])
        elif kind == 2:  # scrambled structure, same colours
            flat = patch.reshape(3, -1)
            patch.copy_(flat[:, torch.randperm(flat.shape[1], generator=generator)].reshape(patch.shape))
        else:  # a rectangle of the same image, moved
            sy, sx, _, _ = _box(size, generator)
            sy, sx = min(sy, size - h), min(sx, size - w)
            patch.copy_(x[i, :, sy : sy + h, sx : sx + w].flip(-1))
    return out
