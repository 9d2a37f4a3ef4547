"""MKD's training objective: value loss plus direction loss at every tap (after Salehi et al., CVPR 2021, Eq. 1-3).

The paper sums, per tap, the raw mean squared error and one cosine per *sample* over the flattened ``C*H*W``
activations. Trained that way here, the cloner learnt something other than what it is scored on:

* **Raw MSE** weighs each tap by its activation scale (EfficientNet-Lite's taps have mean squares of 25 to 50),
  which buries the direction term (at most 2) at about 1% of the loss, while the anomaly map weighs the two
  alike (:class:`~training.mkd.MKDDetector` divides each tap's value term by its training-set scale).
* **One cosine per sample** is dominated by the few high-norm positions; the map's direction term is a cosine
  per *pixel*. On a sparse texture (few bright features on a uniform ground) the cloner is never asked to get
  the ground's low-norm feature directions right, yet the map scores them: the suspected cause of the image
  AUROC below chance reported on a sparse category (issue 13). That failure did not reproduce on the quality
  benchmark's ``stars`` (0.870 with the paper's loss, 0.848 with this one: within noise on 60 test images).

So the loss here is the mean of the anomaly map's own terms (before upsampling and smoothing): train what is
scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def mkd_loss(
    teacher: Sequence[Tensor],
    student: Sequence[Tensor],
    lambda_direction: float = 0.5,
    scales: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """``sum_i mean_{n,h,w} [ mean_c (t_i - s_i)^2 / scale_i + lambda_direction * (1 - cos_c(t_i, s_i)) ]``.

    Args:
        teacher: Teacher taps ``(N, C_i, H_i, W_i)``.
        student: Cloner outputs of the same shapes.
        lambda_direction: Weight of the direction term (as in the map).
        scales: Per-tap mean squared teacher activation (the map's ``tap_scale``); ``None``: 1 for every tap.

    Returns:
        A scalar tensor; exactly 0 when every student tap equals its teacher tap.
    """
    losses = []
    for i, (t, s) in enumerate(zip(teacher, student, strict=True)):
        value = F.mse_loss(s, t)
        if scales is not None:
            value = value / scales[i]
        direction = torch.mean(1.0 - F.cosine_similarity(t, s, dim=1))
        losses.append(value + lambda_direction * direction)
    return torch.stack(losses).sum()
