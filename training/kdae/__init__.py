"""KD-AE on feature vectors: a dense autoencoder teacher and a tiny MLP student that regresses its error.

The student learns ``log(1 + reconstruction MSE)`` of the teacher with an L1 loss and is what gets deployed;
``exp(pred) - 1`` is its raw anomaly score, on the teacher's scale. The demo data is scikit-learn's 8x8
digits in the one-class setting (one digit normal, the other nine anomalous); ``python -m training.kdae``
trains one digit or sweeps all ten.
"""

from training.kdae.data import DigitSplits, make_digit_splits, perturb_normals
from training.kdae.model import (
    DenseAutoencoder,
    KDAEStudentScorer,
    StudentMLP,
    load_kdae_student,
    load_kdae_teacher,
)
from training.kdae.train import (
    DigitAUROC,
    FittedKDAE,
    KDAEConfig,
    KDAEResult,
    auroc_per_digit,
    fit_kdae,
    student_loss,
    train_kdae,
)

__all__ = [
    "DenseAutoencoder",
    "DigitAUROC",
    "DigitSplits",
    "FittedKDAE",
    "KDAEConfig",
    "KDAEResult",
    "KDAEStudentScorer",
    "StudentMLP",
    "auroc_per_digit",
    "fit_kdae",
    "load_kdae_student",
    "load_kdae_teacher",
    "make_digit_splits",
    "perturb_normals",
    "student_loss",
    "train_kdae",
]
