"""The ResNet teachers in torchvision's layout: ResNet-18 and Wide-ResNet-50-2, up to ``layer3``.

* ResNet-18: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
* Wide-ResNet-50-2: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (the torchvision variant:
  ResNet-50 bottlenecks with twice the inner width).

The modules carry torchvision's names, so torchvision's ImageNet checkpoints load directly (no torchvision
needed); ``layer4`` and ``fc`` are not built. The RD4AD student reuses :class:`BasicBlock` and
:class:`Bottleneck` for its decoder.
"""

from __future__ import annotations

from torch import Tensor, nn

from training.backbones.encoder import BackboneName, FeatureEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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

    def taps_through(self, x: Tensor, stride: int) -> list[Tensor]:
        """See :meth:`FeatureEncoder.taps_through`; stops after the layer that produces ``stride``."""
        last = self._tap_index(stride)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        taps = []
        for layer in (self.layer1, self.layer2, self.layer3)[: last + 1]:
            x = layer(x)
            taps.append(x)
        return taps



def build_resnet(name: BackboneName) -> ResNetEncoder:
    """The randomly initialised encoder of a ResNet backbone.

    Args:
        name: :attr:`BackboneName.RESNET18` or :attr:`BackboneName.WIDE_RESNET50_2`.

    Returns:
        The encoder, before any weights are loaded.

    Raises:
        ValueError: If ``name`` is not a ResNet.
    """
    if name is BackboneName.RESNET18:
        return ResNetEncoder(name.value, BasicBlock, (2, 2, 2))
    if name is BackboneName.WIDE_RESNET50_2:
        return ResNetEncoder(name.value, Bottleneck, (3, 4, 6), width_per_group=128)
    raise ValueError(f"{name.value} is not a ResNet")
