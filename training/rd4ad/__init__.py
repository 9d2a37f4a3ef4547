"""RD4AD: reverse distillation from one-class embedding."""

from training.rd4ad.loss import reverse_distillation_loss
from training.rd4ad.model import RD4AD, STUDENT_SPECS, StudentSpec

__all__ = ["RD4AD", "STUDENT_SPECS", "StudentSpec", "reverse_distillation_loss"]
