"""RD4AD's student decoder: the teacher encoder mirrored, upsampling with transposed convs.

It starts from the one-class embedding at stride 32 and produces one feature map per teacher scale (strides 16,
8, 4), each with the teacher's channel count, so the two can be compared by cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from training.rd4ad.blocks import BlockType, make_stage


class ReverseDecoder(nn.Module):
    """Three upsampling stages, deepest first.

    Args:
        channels: Teacher tap channels, shallowest first ``(c1, c2, c3)``.
        embed_channels: Channels of the bottleneck embedding.
        block: Block family (mirrors the teacher's).
        num_blocks: Blocks per stage, deepest stage first (the reference uses ``[3, 4, 6]`` for
            Wide-ResNet-50-2 and ``[2, 2, 2]`` for ResNet-18).
        width_per_group: Bottleneck inner width factor.
    """

    def __init__(
        self,
        channels: Sequence[int],
        embed_channels: int,
        block: BlockType = BlockType.BASIC,
        num_blocks: Sequence[int] = (2, 2, 2),
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        n3, n2, n1 = num_blocks
        kw = {"upsample": True, "width_per_group": width_per_group}
        self.stage3 = make_stage(block, embed_channels, c3, n3, **kw)
        self.stage2 = make_stage(block, c3, c2, n2, **kw)
        self.stage1 = make_stage(block, c2, c1, n1, **kw)

    def forward(self, embedding: Tensor) -> list[Tensor]:
        """``(N, embed, H/32, W/32)`` -> ``[(N,c1,H/4,W/4), (N,c2,H/8,W/8), (N,c3,H/16,W/16)]``."""
        f3 = self.stage3(embedding)
        f2 = self.stage2(f3)
        f1 = self.stage1(f2)
        return [f1, f2, f3]
