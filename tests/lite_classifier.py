"""The complete EfficientNet-Lite ImageNet classifiers, built from the encoders' own block code.

Only the tests need them: classifying real photos with the shipped checkpoints proves that the architecture,
the weights and the TensorFlow numerics (SAME padding, BatchNorm epsilon) are right, which the teacher
encoders alone, with no labels to compare against, cannot show.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.backbones import LITE_SCALING, BackboneName, Conv2dSame, default_weights_path, load_state_dict_file
from training.backbones.efficientnet_lite import (
    LITE_HEAD,
    add_stem_and_blocks,
    lite_block_args,
    lite_variant,
    tf_batchnorm,
)
from training.backbones.weights import candidate_weight_paths, lite_distribution


class EfficientNetLiteClassifier(nn.Module):
    """A complete EfficientNet-Lite ImageNet classifier, on the blocks the teacher encoder is built from.

    Args:
        variant: Which Lite model (a :class:`BackboneName` of :data:`LITE_SCALING`, or its value).
        num_classes: Size of the final linear layer.

    Raises:
        ValueError: If ``variant`` is not an EfficientNet-Lite model.
    """

    def __init__(self, variant: str | BackboneName = BackboneName.EFFICIENTNET_LITE0,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.variant = lite_variant(variant)
        scaling = LITE_SCALING[self.variant]
        block_args = lite_block_args(self.variant)
        self.resolution = scaling.resolution
        add_stem_and_blocks(self, block_args)
        self._conv_head = Conv2dSame(block_args[-1].out_ch, LITE_HEAD, 1)
        self._bn1 = tf_batchnorm(LITE_HEAD)
        self._dropout = nn.Dropout(scaling.dropout)
        self._fc = nn.Linear(LITE_HEAD, num_classes)

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
        backbone = lite_variant(variant)
        if weights is not None:
            path: Path | None = Path(weights).expanduser()
            searched = [path]
        else:
            path = default_weights_path(backbone)
            searched = candidate_weight_paths(backbone)
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"{backbone.value} weights not found; looked in: {', '.join(map(str, searched))}. Install "
                f"{lite_distribution(backbone)} or pass the checkpoint's path."
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
        if lite_variant(variant) is not BackboneName.EFFICIENTNET_LITE0:
            raise ValueError(f"EfficientNetLite0Classifier is Lite0 only, got {variant!r}")
        super().__init__(variant, num_classes)
