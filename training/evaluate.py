"""Scoring a list of samples with a deployable detector, and the metrics of the result."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from kdcore.metrics import evaluate
from kdcore.stats import Metrics
from training.data import ImageDataset
from training.inference import DeployableDetector


@dataclass
class Predictions:
    """Raw outputs for a list of samples, in order."""

    scores: np.ndarray
    """``(N,)`` raw image scores."""
    maps: np.ndarray
    """``(N, S, S)`` raw anomaly maps, float32."""
    labels: np.ndarray
    """``(N,)`` 0 good / 1 anomalous."""
    masks: np.ndarray
    """``(N, S, S)`` uint8 ground-truth masks (zeros where none)."""

    @classmethod
    def of_maps(cls, maps: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> Predictions:
        """Predictions whose scores are the maximum of each map ``(N, S, S)``, as the deployed detectors score."""
        return cls(maps.reshape(len(maps), -1).max(axis=1), maps, labels, masks)


@torch.no_grad()
def predict(
    model: DeployableDetector, dataset: ImageDataset, *, batch_size: int = 16, desc: str | None = None
) -> Predictions:
    """Run ``model`` over a dataset in eval mode.

    Args:
        model: The detector with its preprocessing (what gets exported).
        dataset: Images to score, at the model's input size (it caches decoded images, so reuse it across
            repeated evaluations).
        batch_size: Images per forward pass.
        desc: Progress-bar label; ``None`` hides the bar.

    Returns:
        :class:`Predictions` in the dataset's order.
    """
    was_training = model.training
    model.eval()
    size = model.image_size
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    scores, maps, labels, masks = [], [], [], []
    for batch in tqdm(loader, desc=desc, disable=desc is None, leave=False):
        out = model(batch["image"])
        scores.append(out.pred_score[:, 0].numpy())
        maps.append(out.anomaly_map[:, 0].numpy())
        labels.append(batch["label"].numpy())
        masks.append(batch["mask"].numpy())
    model.train(was_training)
    if len(dataset) == 0:
        empty = np.zeros((0, size, size), np.float32)
        return Predictions(np.zeros(0, np.float32), empty, np.zeros(0, np.int64), empty.astype(np.uint8))
    return Predictions(np.concatenate(scores), np.concatenate(maps), np.concatenate(labels), np.concatenate(masks))


def _finite_or_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def split_metrics(
    pred: Predictions, split: str, image_threshold: float, pixel_threshold: float
) -> Metrics:
    """Image AUROC, pixel AUROC, AUPRO and F1 at the given thresholds for one labelled split."""
    values = evaluate(pred.labels, pred.scores, pred.masks, pred.maps, image_threshold, pixel_threshold)
    return Metrics(
        split=split,
        num_good=int((pred.labels == 0).sum()),
        num_anomalous=int((pred.labels == 1).sum()),
        **{k: _finite_or_none(values[k]) for k in ("image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1")},
    )
