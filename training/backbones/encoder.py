"""What every teacher backbone is: its name, and the frozen three-tap encoder it builds.

RD4AD (Deng & Li, CVPR 2022) and the other image methods compare a frozen ImageNet encoder with a student at
three scales. Each encoder returns exactly those three feature maps, at strides 4, 8 and 16, and builds nothing
past the last one, so it costs no more than it must.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from pathlib import Path

from torch import Tensor, nn

TAP_STRIDES = (4, 8, 16)


class BackboneName(str, Enum):
    """Teacher backbones that :func:`~training.backbones.build_encoder` can build."""

    RESNET18 = "resnet18"
    WIDE_RESNET50_2 = "wide_resnet50_2"
    EFFICIENTNET_LITE0 = "efficientnet_lite0"
    EFFICIENTNET_LITE1 = "efficientnet_lite1"
    EFFICIENTNET_LITE2 = "efficientnet_lite2"


def parse_backbone(name: str | BackboneName) -> BackboneName:
    """The :class:`BackboneName` that ``name`` spells.

    Args:
        name: A :class:`BackboneName` or its value.

    Returns:
        The backbone.

    Raises:
        ValueError: If ``name`` is not a known backbone; the message lists the choices.
    """
    try:
        return BackboneName(name)
    except ValueError:
        choices = ", ".join(b.value for b in BackboneName)
        raise ValueError(f"Unknown backbone {name!r}; choose one of: {choices}") from None


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
        signed_taps: Whether the taps are linear (signed) features rather than post-ReLU ones; a decoder that
            reconstructs them needs a linear output layer (see :class:`training.rd4ad.RD4AD`).
    """

    name: str
    out_channels: tuple[int, int, int]
    strides: tuple[int, int, int] = TAP_STRIDES
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    signed_taps: bool = False
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
        return self.taps_through(x, stride)[-1]

    def taps_through(self, x: Tensor, stride: int) -> list[Tensor]:
        """The feature maps up to and including ``stride``, skipping the layers after it where the subclass can.

        Args:
            x: Normalised images ``(N, 3, H, W)``.
            stride: One of :attr:`strides`.

        Returns:
            The same tensors as ``self(x)[: self.strides.index(stride) + 1]``.

        Raises:
            ValueError: If ``stride`` is not one of :attr:`strides`.
        """
        return self(x)[: self._tap_index(stride) + 1]

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
