"""MKD's training objective: value loss plus direction loss at every tap (Salehi et al., CVPR 2021, Eq. 1-3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def mkd_loss(teacher: Sequence[Tensor], student: Sequence[Tensor], lambda_direction: float = 0.5) -> Tensor:
    """``sum_i [ MSE(t_i, s_i) + lambda_direction * mean_n (1 - cos(vec(t_i[n]), vec(s_i[n]))) ]``.

    Exactly the paper's formulation:

    * value loss ``L_val``: the mean squared error over all elements (batch, channels, positions) of tap
      ``i``, on the raw activations (no per-tap rescaling, as published);
    * direction loss ``L_dir``: one cosine per *sample* between the flattened ``(C*H*W)`` teacher and student
      activations of tap ``i``, ``1 - cos`` averaged over the batch (as in the authors' code, rather than a
      cosine per pixel over channels).

    Args:
        teacher: Teacher taps ``(N, C_i, H_i, W_i)``.
        student: Cloner outputs of the same shapes.
        lambda_direction: Weight of the direction loss.

    Returns:
        A scalar tensor; exactly 0 when every student tap equals its teacher tap.
    """
    losses = []
    for t, s in zip(teacher, student, strict=True):
        value = F.mse_loss(s, t)
        direction = torch.mean(1.0 - F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1))
        losses.append(value + lambda_direction * direction)
    return torch.stack(losses).sum()
