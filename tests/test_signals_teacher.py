"""The vision teacher: the source's loss on smoothed labels, and a network that reads the plot's columns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdcore.series_plot import render_plots
from training.backbones import build_encoder
from training.signals.teacher import COLUMNS, SMOOTH_WIDTH, PlotTeacher, smooth_labels, teacher_loss


def test_smoothing_keeps_labels_and_decays_within_half_the_width() -> None:
    labels = torch.zeros(1, 64)
    labels[0, 30] = 1
    labels[0, 50:54] = 1
    smooth = smooth_labels(labels)
    assert smooth[0, 30] == 1 and torch.all(smooth[0, 50:54] == 1)
    assert 0 < smooth[0, 31] < 1 and smooth[0, 31] == smooth[0, 29]  # symmetric decay
    half = SMOOTH_WIDTH // 2
    assert smooth[0, 30 - half - 1] == 0 and smooth[0, 30 - half] > 0
    assert torch.all((smooth >= 0) & (smooth <= 1))
    with pytest.raises(ValueError, match="odd"):
        smooth_labels(labels, 4)


def test_the_loss_is_the_sources_mix_of_cosine_and_bce() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 40), torch.zeros(3, 40)
    labels[1, 10:14] = 1
    target = smooth_labels(labels)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    cos = F.cosine_similarity(torch.sigmoid(logits).reshape(1, -1), target.reshape(1, -1))[0]
    assert torch.isclose(teacher_loss(logits, labels, alpha=0.0), bce)
    assert torch.isclose(teacher_loss(logits, labels, alpha=1.0), 1 - cos)
    assert torch.isclose(teacher_loss(logits, labels, alpha=0.5), 0.5 * (1 - cos) + 0.5 * bce)
    # A batch without anomalous steps has no defined cosine: its BCE alone still teaches quiet.
    assert torch.isclose(teacher_loss(logits, torch.zeros(3, 40), alpha=1.0),
                         F.binary_cross_entropy_with_logits(logits, torch.zeros(3, 40)))
    with pytest.raises(ValueError, match="alpha"):
        teacher_loss(logits, labels, alpha=2.0)
    with pytest.raises(ValueError, match="shape"):
        teacher_loss(logits, labels[:, :10])


def test_the_teacher_reads_plots_into_per_step_logits_and_only_its_head_learns() -> None:
    teacher = PlotTeacher(build_encoder("efficientnet_lite0", allow_random_init=True), leads=2, steps=256)
    rng = np.random.default_rng(0)
    plots = torch.from_numpy(render_plots(rng.normal(0, 0.5, (2, 256, 2)).astype(np.float32)))
    columns = teacher.frozen_features(plots)
    assert columns.shape == (2, COLUMNS, PlotTeacher.column_features(teacher.encoder.out_channels, 2))
    logits = teacher(plots)
    assert logits.shape == (2, 256) and torch.isfinite(logits).all()
    labels = torch.zeros(2, 256)
    labels[0, 100:120] = 1
    teacher_loss(logits, labels).backward()
    assert all(p.grad is None for p in teacher.encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in teacher.head.parameters())
