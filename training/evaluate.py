"""Scoring a list of samples with a deployable detector, and the metrics of the result."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from kdcore.detection import detection_figures, region_detections, segmentation_f1
from kdcore.metrics import evaluate
from kdcore.regions import anomalous_regions
from kdcore.stats import Calibration, Metrics
from kdcore.tiling import MapStitcher
from kdcore.tiling import evaluation_side as tiling_evaluation_side
from training.data import ImageDataset, load_mask
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


def evaluation_side(dataset: ImageDataset) -> int:
    """Side of a patch-grid dataset's whole-frame maps (:func:`kdcore.tiling.evaluation_side`)."""
    return tiling_evaluation_side(dataset.image_size, dataset.grid.columns, dataset.grid.rows)


@torch.no_grad()
def predict_frames(model: DeployableDetector, dataset: ImageDataset, *, batch_size: int = 16,
                   desc: str | None = None) -> Predictions:
    """Whole images of a patch-grid dataset, scored as the client scores a tiled frame.

    Each image's window maps are stitched at full resolution with :class:`kdcore.tiling.MapStitcher` (overlaps
    averaged, the client's code), then resized (area) to :func:`evaluation_side`; the image's score is its highest
    window score, and its mask is read at that side.
    """
    windows = predict(model, dataset, batch_size=batch_size, desc=desc)
    side = evaluation_side(dataset)
    frames = [MapStitcher(h, w) for h, w in dataset.frame_sizes]
    scores = np.full(len(frames), -np.inf, dtype=np.float64)
    for item, (frame, box) in enumerate(dataset.windows):
        frames[frame].add(box, windows.maps[item])
        scores[frame] = max(scores[frame], float(windows.scores[item]))
    maps = np.stack([cv2.resize(f.result(), (side, side), interpolation=cv2.INTER_AREA) for f in frames])
    masks = np.stack([load_mask(s.mask_path, side) for s in dataset.samples])
    labels = np.array([s.label for s in dataset.samples], dtype=np.int64)
    return Predictions(scores.astype(np.float32), maps.astype(np.float32), labels, masks)


def _finite_or_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def region_metrics(pred: Predictions, pixel_calibration: Calibration) -> dict[str, float | None]:
    """Region-level figures of a split (:mod:`kdcore.detection`, its default rule): the anomalous regions of each
    calibrated map (:mod:`kdcore.regions`, what the client reports) against the mask's regions, and the pixel F1 of
    the calibrated maps at 0.5."""
    calibrated = [pixel_calibration.apply(m) for m in pred.maps]
    figures = detection_figures([(region_detections(anomalous_regions(c)), mask)
                                 for c, mask in zip(calibrated, pred.masks)])
    values = {"region_precision": figures.precision, "region_recall": figures.recall, "region_f1": figures.f1,
              "detection_ap": figures.ap, "segmentation_f1": segmentation_f1(list(pred.masks), calibrated)}
    return {k: _finite_or_none(v) for k, v in values.items()}


def split_metrics(
    pred: Predictions, split: str, image_threshold: float, pixel_threshold: float,
    pixel_calibration: Calibration | None = None,
) -> Metrics:
    """Image AUROC, pixel AUROC, AUPRO and F1 at the given thresholds for one labelled split; with the pixel
    calibration, the region-level figures too (:func:`region_metrics`)."""
    values = evaluate(pred.labels, pred.scores, pred.masks, pred.maps, image_threshold, pixel_threshold)
    regions = region_metrics(pred, pixel_calibration) if pixel_calibration is not None else {}
    return Metrics(
        split=split,
        num_good=int((pred.labels == 0).sum()),
        num_anomalous=int((pred.labels == 1).sum()),
        **{k: _finite_or_none(values[k]) for k in ("image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1")},
        **regions,
    )
