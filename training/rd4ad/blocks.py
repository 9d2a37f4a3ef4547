"""Residual blocks for the one-class bottleneck and the reverse (upsampling) decoder.

The shapes follow torchvision's ResNet blocks so that RD4AD's student mirrors its teacher: a ``BasicBlock``
decoder for ResNet-18-sized teachers, a ``Bottleneck`` decoder for Wide-ResNet-50-2 (width per group 128). In a
decoder block with ``upsample=True`` the strided 3x3 conv becomes a 2x2 transposed conv with stride 2, as in the
RD4AD reference code (``de_resnet.py``).
"""

from __future__ import annotations

from enum import Enum

from torch import Tensor, nn


class BlockType(str, Enum):
    """Residual block family of a bottleneck or decoder."""

    BASIC = "basic"
    BOTTLENECK = "bottleneck"


def _resample(in_ch: int, out_ch: int, stride: int, upsample: bool) -> nn.Module:
    """The spatial conv of a block: stride-2 conv down, 2x2 transposed conv up, or a plain 3x3."""
    if upsample:
        return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2, bias=False)
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _shortcut(in_ch: int, out_ch: int, stride: int, upsample: bool) -> nn.Module | None:
    if upsample:
        return nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2, bias=False), nn.BatchNorm2d(out_ch))
    if stride != 1 or in_ch != out_ch:
        return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
    return None


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (He et al., 2016).

    Args:
        in_ch: Input channels.
        out_ch: Output channels.
        stride: 2 to halve the resolution (ignored when ``upsample``).
        upsample: Double the resolution with transposed convs instead.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, upsample: bool = False) -> None:
        super().__init__()
        self.conv1 = _resample(in_ch, out_ch, stride, upsample)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_ch, out_ch, stride, upsample)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_ch, H, W)`` -> ``(N, out_ch, H', W')``."""
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (or 2x2 transposed) spatial conv, 1x1 expand, with a residual connection.

    Args:
        in_ch: Input channels.
        out_ch: Output channels (4x the inner "planes", as in torchvision).
        stride: 2 to halve the resolution (ignored when ``upsample``).
        upsample: Double the resolution with transposed convs instead.
        width_per_group: 64 for ResNet-50, 128 for Wide-ResNet-50-2.
    """

    expansion = 4

    def __init__(
        self, in_ch: int, out_ch: int, stride: int = 1, upsample: bool = False, width_per_group: int = 64
    ) -> None:
        super().__init__()
        width = (out_ch // self.expansion) * width_per_group // 64
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _resample(width, width, stride, upsample)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_ch, out_ch, stride, upsample)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_ch, H, W)`` -> ``(N, out_ch, H', W')``."""
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_stage(
    block: BlockType,
    in_ch: int,
    out_ch: int,
    num_blocks: int,
    *,
    stride: int = 1,
    upsample: bool = False,
    width_per_group: int = 64,
) -> nn.Sequential:
    """A stage of ``num_blocks`` residual blocks; only the first changes resolution and width.

    Args:
        block: Block family.
        in_ch: Channels entering the stage.
        out_ch: Channels of every block's output.
        num_blocks: Blocks in the stage (at least 1).
        stride: Stride of the first block (downsampling stages).
        upsample: Whether the first block doubles the resolution (decoder stages).
        width_per_group: Bottleneck inner width factor.

    Returns:
        The stage as an ``nn.Sequential``.

    Raises:
        ValueError: If ``num_blocks`` is below 1.
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    layers: list[nn.Module] = []
    for i in range(num_blocks):
        first = i == 0
        kwargs = {"stride": stride if first else 1, "upsample": upsample and first}
        if block is BlockType.BOTTLENECK:
            layers.append(Bottleneck(in_ch if first else out_ch, out_ch, width_per_group=width_per_group, **kwargs))
        else:
            layers.append(BasicBlock(in_ch if first else out_ch, out_ch, **kwargs))
    return nn.Sequential(*layers)
