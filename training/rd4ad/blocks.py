"""Residual stages for the one-class bottleneck and the reverse (upsampling) decoder.

The student mirrors its teacher with the teacher's own residual blocks (:class:`~training.backbones.BasicBlock`
for ResNet-18-sized teachers, :class:`~training.backbones.Bottleneck` with width per group 128 for
Wide-ResNet-50-2). In a decoder block the strided 3x3 conv and the shortcut become 2x2 transposed convs with
stride 2, as in the RD4AD reference code (``de_resnet.py``); everything else, ``forward`` included, is inherited.
"""

from __future__ import annotations

from enum import Enum

from torch import nn

from training.backbones import BasicBlock, Bottleneck


class BlockType(str, Enum):
    """Residual block family of a bottleneck or decoder."""

    BASIC = "basic"
    BOTTLENECK = "bottleneck"


def _up_shortcut(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2, bias=False), nn.BatchNorm2d(out_ch))


class UpBasicBlock(BasicBlock):
    """:class:`BasicBlock` that doubles the resolution: ``(N, in_ch, H, W) -> (N, planes, 2H, 2W)``."""

    def __init__(self, in_ch: int, planes: int) -> None:
        super().__init__(in_ch, planes, downsample=_up_shortcut(in_ch, planes))
        self.conv1 = nn.ConvTranspose2d(in_ch, planes, 2, stride=2, bias=False)


class UpBottleneck(Bottleneck):
    """:class:`Bottleneck` that doubles the resolution: ``(N, in_ch, H, W) -> (N, 4 * planes, 2H, 2W)``."""

    def __init__(self, in_ch: int, planes: int, base_width: int = 64) -> None:
        super().__init__(in_ch, planes, downsample=_up_shortcut(in_ch, planes * self.expansion), base_width=base_width)
        width = self.conv2.in_channels
        self.conv2 = nn.ConvTranspose2d(width, width, 2, stride=2, bias=False)


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
        out_ch: Channels of every block's output (a multiple of 4 for bottlenecks).
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
    bottleneck = block is BlockType.BOTTLENECK
    planes = out_ch // Bottleneck.expansion if bottleneck else out_ch
    kw = {"base_width": width_per_group} if bottleneck else {}
    plain = Bottleneck if bottleneck else BasicBlock
    if upsample:
        first: nn.Module = (UpBottleneck if bottleneck else UpBasicBlock)(in_ch, planes, **kw)
    else:
        shortcut = None
        if stride != 1 or in_ch != out_ch:
            shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
        first = plain(in_ch, planes, stride, shortcut, **kw)
    return nn.Sequential(first, *(plain(out_ch, planes, **kw) for _ in range(num_blocks - 1)))
