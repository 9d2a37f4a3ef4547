"""RD4AD's one-class bottleneck embedding (OCBE).

Multi-scale feature fusion (MFF) brings the two shallower teacher scales down to the deepest one with strided
3x3 convs, concatenates the three, and one-class embedding (OCE) residual blocks compress them to a compact
code at stride 32. The student decoder must rebuild every teacher scale from that code alone, which is what
keeps it from reproducing anomalous patterns (Deng & Li, CVPR 2022, Sec. 3.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from training.layers import conv_bn_relu
from training.rd4ad.blocks import BlockType, make_stage


class OneClassBottleneck(nn.Module):
    """Fuses three teacher scales into one embedding.

    For a teacher with tap channels ``(c1, c2, c3)`` this is exactly the reference design: ``c1 -> c2 -> c3`` and
    ``c2 -> c3`` by stride-2 convs, concatenation to ``3 * c3`` channels, then an OCE stage (stride 2) to
    ``embed_channels`` (``2 * c3`` by default: 512 for ResNet-18, 2048 for Wide-ResNet-50-2).

    Args:
        channels: Teacher tap channels, shallowest first.
        block: Block family of the OCE stage.
        num_blocks: Blocks in the OCE stage.
        embed_channels: Output channels; defaults to ``2 * channels[2]``.
        width_per_group: Bottleneck inner width factor.
    """

    def __init__(
        self,
        channels: Sequence[int],
        block: BlockType = BlockType.BASIC,
        num_blocks: int = 2,
        embed_channels: int | None = None,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.embed_channels = embed_channels or 2 * c3
        self.down1 = nn.Sequential(conv_bn_relu(c1, c2, 2), conv_bn_relu(c2, c3, 2))
        self.down2 = conv_bn_relu(c2, c3, 2)
        self.oce = make_stage(
            block, 3 * c3, self.embed_channels, num_blocks, stride=2, width_per_group=width_per_group
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """``[(N,c1,H/4,W/4), (N,c2,H/8,W/8), (N,c3,H/16,W/16)]`` -> ``(N, embed, H/32, W/32)``."""
        f1, f2, f3 = features
        fused = torch.cat([self.down1(f1), self.down2(f2), f3], dim=1)
        return self.oce(fused)
