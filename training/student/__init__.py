"""The score-regressing student: a compact CNN distilled from a trained RD4AD's anomaly maps."""

from training.student.model import ScoreRegressor

__all__ = ["ScoreRegressor"]
