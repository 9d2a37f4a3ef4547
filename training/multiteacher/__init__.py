"""Multi-teacher student-teacher anomaly detection (several frozen teachers, one compact student)."""

from training.multiteacher.loss import discrepancy_map, distillation_loss, kl_to_uniform
from training.multiteacher.model import DEFAULT_TEACHERS, CompactStudent, MultiTeacherDetector, TeacherHead

__all__ = [
    "DEFAULT_TEACHERS",
    "CompactStudent",
    "MultiTeacherDetector",
    "TeacherHead",
    "discrepancy_map",
    "distillation_loss",
    "kl_to_uniform",
]
