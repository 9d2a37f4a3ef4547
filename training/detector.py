"""The contract every image detector trained here fulfils, so one training loop, one exporter and one scorer
serve them all.

A detector scores *normalised* batches; :class:`~training.inference.DeployableDetector` adds the uint8 ->
normalised preprocessing in front of it, using the detector's own ``mean`` and ``std``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from torch import Tensor, nn

from training.distributed import take_rows


class DistillationDetector(nn.Module):
    """Base class of the image detectors (RD4AD, the score-regressing student, multi-teacher, MKD).

    Attributes:
        image_size: Square input side in pixels.
        mean: Per-channel mean on [0, 1] RGB that the network expects (applied in the exported graph).
        std: Per-channel standard deviation, likewise.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimiser updates (frozen teachers excluded)."""
        raise NotImplementedError

    def prepare(self, batches: Iterable[Tensor]) -> None:
        """Measure whatever the method needs from the training images before training (default: nothing).

        Args:
            batches: Normalised training batches ``(N, 3, S, S)``; iterate at most once.
        """

    def steps_per_epoch(self, loader_steps: int) -> int:
        """Optimiser steps in one epoch, given the training loader's batches per epoch (default: one per batch)."""
        return loader_steps

    def epoch_batches(self, batches: Iterator[Tensor]) -> Iterator[Any]:
        """What one epoch's :meth:`training_loss` calls receive (default: the normalised training batches).

        A method that trains on material of its own, prepared once in :meth:`prepare`, yields that instead and
        leaves ``batches`` unread (the images are then not decoded again).
        """
        return batches

    def training_loss(self, x: Any) -> Tensor:
        """The scalar loss on one item of :meth:`epoch_batches`: by default a normalised batch ``(N, 3, S, S)`` of
        good training images."""
        raise NotImplementedError

    def shard_loss(self, item: Any, rows: slice) -> Tensor:
        """The training loss of ``rows`` of one :meth:`epoch_batches` item, for data-parallel training
        (:mod:`training.distributed`): each process computes its rows' loss, and their average must be one
        process's gradient of the whole item.

        That holds when :meth:`training_loss` is a mean over the item's rows (plus terms that do not depend on
        them), which every method's is. By default the loss of the rows alone; a method that draws randomness
        per row in order overrides this to draw the whole item's, as one process would, and keep its rows' draws.

        Args:
            item: One whole item of :meth:`epoch_batches`, the same on every process.
            rows: This process's rows of it.

        Returns:
            The scalar loss over ``rows``.
        """
        return self.training_loss(take_rows(item, rows))

    def use_map_scales(self, which: str) -> bool:
        """Make the map sum only some of the teacher's scales (``"all"``, ``"without_finest"``, ``"coarsest"``).

        Returns:
            Whether the method has this choice (default: no, and nothing changes).
        """
        return False

    def predict_and_taps(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """:meth:`predict`'s score and map, and the teacher tap vectors a :class:`~training.memory.TapMemory`
        compares with its bank, ``(N, C, h, w)``, from the same pass (default: none, the method has no memory)."""
        return (*self.predict(x), None)

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Raw image scores ``(N, 1)`` and raw anomaly maps ``(N, 1, S, S)`` for a normalised batch.

        Higher is more anomalous; the image score is the maximum of the map. Must be exportable to ONNX
        (opset 17) and traceable to TorchScript for a fixed input size.
        """
        raise NotImplementedError
