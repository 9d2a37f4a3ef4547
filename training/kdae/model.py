"""KD-AE's two networks on feature vectors: the dense autoencoder teacher and the tiny MLP student.

The teacher's anomaly score is its per-sample reconstruction MSE. The student never reconstructs anything: it
regresses ``log(1 + teacher MSE)`` directly, so deployment needs only the student (64-16-1, about a thousand
parameters), and :class:`KDAEStudentScorer` turns its output back into the teacher's scale,
``exp(pred) - 1``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from training.kdae.data import NUM_FEATURES
from training.runs import RunPaths

#: Hidden width of the student MLP.
STUDENT_HIDDEN = 16
#: Layer widths of the teacher autoencoder, input to output.
TEACHER_WIDTHS = (NUM_FEATURES, 32, 8, 32, NUM_FEATURES)


def teacher_path(run_dir: Path | str) -> Path:
    """Where a KD-AE run keeps its teacher (the student is :attr:`RunPaths.weights`)."""
    return RunPaths(Path(run_dir)).root / "teacher.safetensors"


class DenseAutoencoder(nn.Module):
    """The teacher: ``64-32-8-32-64`` dense layers, ReLU inside, sigmoid output (inputs are in [0, 1])."""

    def __init__(self, widths: tuple[int, ...] = TEACHER_WIDTHS) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers += [nn.Linear(a, b), nn.Sigmoid() if i == len(widths) - 2 else nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction ``(N, 64)`` of ``x`` ``(N, 64)``."""
        return self.net(x)

    def reconstruction_mse(self, x: Tensor) -> Tensor:
        """Per-sample reconstruction MSE ``(N,)``: the teacher's anomaly score."""
        return (self(x) - x).pow(2).mean(dim=1)


class StudentMLP(nn.Module):
    """The student: ``64-hidden-1``, predicting ``log(1 + teacher MSE)``."""

    def __init__(self, hidden: int = STUDENT_HIDDEN, in_features: int = NUM_FEATURES) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 64)`` -> ``(N, 1)`` in log space."""
        return self.net(x)


class KDAEStudentScorer(nn.Module):
    """The deployable network: float32 vectors ``(N, 64)`` in, raw score ``(N, 1)`` out.

    The score is ``exp(student(x)) - 1``, on the teacher's reconstruction-MSE scale (higher is more
    anomalous). It is exported like every deployed network, under :func:`kdcore.contract.vector_network_spec`.

    Args:
        student: The trained student.
    """

    def __init__(self, student: StudentMLP) -> None:
        super().__init__()
        self.student = student
        self.input_size = student.net[0].in_features

    def forward(self, vector: Tensor) -> Tensor:
        """Raw anomaly scores ``(N, 1)``."""
        return torch.exp(self.student(vector)) - 1.0


def load_kdae_student(run_dir: Path | str) -> KDAEStudentScorer:
    """The trained student of a KD-AE run folder, in eval mode (its width is read from the weights).

    Raises:
        FileNotFoundError: If the run folder has no ``model.safetensors``.
    """
    path = RunPaths(Path(run_dir)).weights
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {Path(run_dir)} a finished KD-AE run?")
    state = load_file(str(path))
    hidden, in_features = state["student.net.0.weight"].shape
    scorer = KDAEStudentScorer(StudentMLP(int(hidden), int(in_features)))
    scorer.load_state_dict(state, strict=True)
    return scorer.eval()


def load_kdae_teacher(run_dir: Path | str) -> DenseAutoencoder:
    """The teacher autoencoder of a KD-AE run folder, in eval mode.

    Raises:
        FileNotFoundError: If the run folder has no ``teacher.safetensors``.
    """
    path = teacher_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {Path(run_dir)} a finished KD-AE run?")
    teacher = DenseAutoencoder()
    teacher.load_state_dict(load_file(str(path)), strict=True)
    return teacher.eval()
