"""The recurrent student of the time-series family: it reads the raw two-lead signal and scores every step.

As in the source (../shared/seeds/003, ``RNNAnomalyDetector``): ``LSTM(input C, hidden 128, 2 layers,
bidirectional, dropout 0.3)`` and a ``Linear(256, 1)`` per step, trained on the labels with binary cross-entropy
and, for distillation, on its teacher's softened probabilities:

    loss = (1 - lam) * BCE(student, labels) + lam * T^2 * BCE(student / T, sigmoid(teacher / T)),  T = 2

so ``lam = 0`` learns from the labels alone and ``lam = 1`` from the teacher alone. The logits are the raw
per-step scores (higher is more anomalous); the window's score is their maximum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: The source's distillation temperature.
TEMPERATURE = 2.0


class RecurrentStudent(nn.Module):
    """Per-step anomaly logits ``(N, T)`` for signals ``(N, T, C)``.

    Args:
        channels: Leads per step.
        hidden: LSTM width per direction.
        layers: Stacked LSTM layers.
        dropout: Between the LSTM layers (training only).
    """

    def __init__(self, channels: int = 2, hidden: int = 128, layers: int = 2, dropout: float = 0.3) -> None:
        super().__init__()
        self.lstm = nn.LSTM(channels, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(2 * hidden, 1)

    def forward(self, signal: Tensor) -> Tensor:
        """Logits ``(N, T)``."""
        features, _ = self.lstm(signal)
        return self.head(features).squeeze(-1)


def distillation_loss(student: Tensor, labels: Tensor, teacher: Tensor | None = None, lam: float = 0.0,
                      temperature: float = TEMPERATURE) -> Tensor:
    """The source's loss on logits ``(N, T)``: hard labels, the teacher's softened probabilities, or a mix.

    Raises:
        ValueError: ``lam > 0`` without teacher logits, or ``lam`` outside [0, 1].
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    hard = F.binary_cross_entropy_with_logits(student, labels.float())
    if lam == 0.0:
        return hard
    if teacher is None:
        raise ValueError("lam > 0 distils from a teacher: give its logits")
    soft = F.binary_cross_entropy_with_logits(student / temperature, torch.sigmoid(teacher / temperature))
    return (1.0 - lam) * hard + lam * temperature**2 * soft
