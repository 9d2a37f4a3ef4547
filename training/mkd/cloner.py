"""MKD's cloner: a compact VGG-like CNN whose intermediate outputs imitate the teacher's taps.

Salehi et al. clone VGG16 with a much narrower VGG (16-channel 3x3 conv stacks that widen only where they are
compared with the teacher). Here the same idea meets our teachers' taps at strides 4, 8 and 16: plain
3x3 conv-BN-ReLU stacks, downsampling with stride-2 convs, and at each tap a 1x1 conv (with bias, no
activation, since the teachers' taps are signed linear-bottleneck or post-ReLU features alike) to the teacher's
channel count.

With ``width = w`` the stages run at ``w/2`` (stride 2), ``w`` (stride 4), ``2w`` (stride 8) and ``4w``
(stride 16) channels. At the default ``w = 32`` and 256 px this is about 190 M multiply-adds and 0.3 M
parameters, against about 320 M and 0.7 M for EfficientNet-Lite0 up to its stride-16 tap; on CPU the dense
convs also run faster than the teacher's depthwise ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from training.layers import conv_bn_relu


class Cloner(nn.Module):
    """The student network.

    Args:
        out_channels: The teacher's tap channels, shallowest first (three taps at strides 4, 8, 16).
        width: Channels at the stride-4 stage; the stages use ``w/2, w, 2w, 4w``.

    Raises:
        ValueError: If ``width`` is below 2 or there are not exactly three taps.
    """

    def __init__(self, out_channels: Sequence[int], width: int = 32) -> None:
        super().__init__()
        if width < 2:
            raise ValueError(f"width must be >= 2, got {width}")
        if len(out_channels) != 3:
            raise ValueError(f"the cloner matches three teacher taps, got {len(out_channels)}")
        c1, c2, c3 = (int(c) for c in out_channels)
        half = width // 2
        self.stage1 = nn.Sequential(  # stride 4
            conv_bn_relu(3, half, stride=2), conv_bn_relu(half, width, stride=2), conv_bn_relu(width, width)
        )
        self.stage2 = nn.Sequential(conv_bn_relu(width, 2 * width, stride=2), conv_bn_relu(2 * width, 2 * width))
        self.stage3 = nn.Sequential(conv_bn_relu(2 * width, 4 * width, stride=2), conv_bn_relu(4 * width, 4 * width))
        self.heads = nn.ModuleList(
            [nn.Conv2d(width, c1, 1), nn.Conv2d(2 * width, c2, 1), nn.Conv2d(4 * width, c3, 1)]
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(N, 3, H, W)`` -> ``[(N,c1,H/4,W/4), (N,c2,H/8,W/8), (N,c3,H/16,W/16)]`` (ceil for other sizes)."""
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        return [head(f) for head, f in zip(self.heads, (f1, f2, f3), strict=True)]
