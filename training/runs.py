"""The layout of a run folder: every artifact path comes from here, so writers and readers always agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    """Files of one training run."""

    root: Path

    @property
    def weights(self) -> Path:
        """Full network state (teacher included) in safetensors: loads without the teacher's weight file."""
        return self.root / "model.safetensors"

    @property
    def config(self) -> Path:
        """The :class:`~training.config.TrainConfig` that made the run."""
        return self.root / "train_config.json"

    @property
    def stats(self) -> Path:
        """The stats JSON (:mod:`kdcore.stats`)."""
        return self.root / "stats.json"

    @property
    def history(self) -> Path:
        """Per-epoch loss and validation metrics."""
        return self.root / "history.json"

    @property
    def samples(self) -> Path:
        """A few validation inputs (key ``inputs``) with ``labels`` and ``names``, shipped for the client to check."""
        return self.root / "validation_samples.npz"

    @property
    def plots(self) -> Path:
        """Loss curve, score histograms and example heatmaps."""
        return self.root / "plots"
