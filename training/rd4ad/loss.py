"""RD4AD's training objective."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def reverse_distillation_loss(teacher: Sequence[Tensor], student: Sequence[Tensor], pixelwise: bool = False) -> Tensor:
    """Sum over scales of the batch mean of ``1 - cos`` between flattened teacher and student features.

    Flattening each sample's ``(C, H, W)`` features into one vector (rather than comparing pixel by pixel)
    is the published loss: it constrains the overall feature direction and lets the student stay loose locally.

    Args:
        teacher: Feature maps ``(N, C_i, H_i, W_i)``, one per scale.
        student: Feature maps of the same shapes.
        pixelwise: Also add, per scale, the mean over pixels of ``1 - cos`` between the feature vectors at
            each pixel (denoising training: the changed blobs are a small share of the flattened vector).

    Returns:
        A scalar tensor; 0 when every student map is a positive multiple of its teacher map (pixel by pixel,
        with ``pixelwise``).
    """
    losses = [
        torch.mean(1.0 - F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1))
        for t, s in zip(teacher, student, strict=True)
    ]
    if pixelwise:
        losses += [torch.mean(1.0 - F.cosine_similarity(t, s, dim=1)) for t, s in zip(teacher, student, strict=True)]
    return torch.stack(losses).sum()
