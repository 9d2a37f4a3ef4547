"""Frozen, pretrained teacher encoders in plain PyTorch (no torchvision or timm).

Each encoder returns three feature maps at strides 4, 8 and 16 and builds nothing past the last one (see
:class:`FeatureEncoder`). The parts:

* :mod:`~training.backbones.encoder`: the backbone names and the frozen-encoder base class.
* :mod:`~training.backbones.resnet`: ResNet-18 and Wide-ResNet-50-2 (torchvision layout).
* :mod:`~training.backbones.efficientnet_lite`: EfficientNet-Lite0/1/2 (EfficientNet-PyTorch layout).
* :mod:`~training.backbones.weights`: where the pretrained checkpoints are found, and reading them.
* :mod:`~training.backbones.build`: :func:`build_encoder`, the one way the methods get a teacher.
"""

from training.backbones.build import build_encoder
from training.backbones.efficientnet_lite import (
    LITE_SCALING,
    TF_LITE_MEAN,
    TF_LITE_STD,
    Conv2dSame,
    EfficientNetLiteEncoder,
    LiteScaling,
    MBConvBlock,
    round_filters,
    round_repeats,
)
from training.backbones.encoder import TAP_STRIDES, BackboneName, FeatureEncoder
from training.backbones.resnet import IMAGENET_MEAN, IMAGENET_STD, BasicBlock, Bottleneck, ResNetEncoder
from training.backbones.weights import default_weights_path, load_state_dict_file

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LITE_SCALING",
    "TAP_STRIDES",
    "TF_LITE_MEAN",
    "TF_LITE_STD",
    "BackboneName",
    "BasicBlock",
    "Bottleneck",
    "Conv2dSame",
    "EfficientNetLiteEncoder",
    "FeatureEncoder",
    "LiteScaling",
    "MBConvBlock",
    "ResNetEncoder",
    "build_encoder",
    "default_weights_path",
    "load_state_dict_file",
    "round_filters",
    "round_repeats",
]
