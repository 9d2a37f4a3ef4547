"""Loss, anomaly map and fusion regulariser of the multi-teacher detector.

The student regresses the fused, z-scored teacher features. Both the training loss and the anomaly map combine a
squared error (sensitive to how far the student's features are from the target) with ``1 - cos`` over channels
(sensitive to their direction whatever the scale, as in RD4AD), so training minimises exactly what scoring
measures.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def discrepancy_map(student: Tensor, target: Tensor) -> Tensor:
    """Per-pixel student-teacher discrepancy: mean over channels of ``(S - T)^2`` plus ``1 - cos(S, T)``.

    Args:
        student: Student features ``(N, C, H, W)``.
        target: Fused teacher features, same shape.

    Returns:
        ``(N, 1, H, W)``, non-negative; zero where the student equals the target.
    """
    squared = (student - target).pow(2).mean(dim=1, keepdim=True)
    cosine = 1.0 - F.cosine_similarity(student, target, dim=1).unsqueeze(1)
    return squared + cosine


def distillation_loss(student: Tensor, target: Tensor) -> Tensor:
    """``MSE(S, T) + mean over pixels of (1 - cos over channels)``: the mean of :func:`discrepancy_map`.

    Args:
        student: Student features ``(N, C, H, W)``.
        target: Fused teacher features, same shape (no gradient is needed through it).

    Returns:
        A scalar, zero when ``student`` equals ``target``.
    """
    return discrepancy_map(student, target).mean()


def kl_to_uniform(weights: Tensor) -> Tensor:
    """``KL(w || uniform) = log K - H(w)`` of a probability vector: 0 at uniform, ``log K`` at one-hot.

    An entropy bonus written so that it is zero at the uniform initialisation and the loss stays non-negative;
    its gradient is the entropy bonus's.

    Args:
        weights: ``(K,)``, non-negative, summing to 1.

    Returns:
        A scalar in ``[0, log K]``.
    """
    entropy = -(weights * torch.log(weights.clamp_min(1e-12))).sum()
    return math.log(weights.numel()) - entropy
