"""MKD: multiresolution knowledge distillation (Salehi et al., CVPR 2021)."""

from training.mkd.cloner import Cloner
from training.mkd.loss import mkd_loss
from training.mkd.model import MKDDetector

__all__ = ["Cloner", "MKDDetector", "mkd_loss"]
