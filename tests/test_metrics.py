"""Tests for kdcore.metrics."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

from bench.metrics import synthetic_maps
from kdcore.metrics import (
    aupro,
    evaluate,
    f1_at_threshold,
    f1_optimal_threshold,
    image_auroc,
    image_auroc_by_defect,
    pixel_auroc,
)


def _masks_and_maps(n: int = 6, size: int = 48, noise: float = 0.8, seed: int = 0):
    """Masks with a few disc/rectangle regions of various sizes and noisy, smoothed maps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n // 2):
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.integers(5, size - 5, size=2)
            radius = rng.integers(2, 9)
            masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 1
    maps = ndimage.gaussian_filter(masks.astype(float), sigma=(0, 1.5, 1.5)) + rng.normal(0, noise, masks.shape) * 0.3
    return masks, maps


def _reference_aupro(masks, maps, fpr_limit=0.3, n_thresholds=3000):
    """Slow, literal implementation: loop over thresholds and regions."""
    thresholds = np.unique(maps)
    if thresholds.size > n_thresholds:
        thresholds = thresholds[np.linspace(0, thresholds.size - 1, n_thresholds).round().astype(int)]
    regions = []
    for mask, amap in zip(masks, maps):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [amap[labelled == r] for r in range(1, count + 1)]
    normal = maps[masks == 0]
    points = [(0.0, 0.0)]
    for t in thresholds:
        fpr = float(np.mean(normal >= t))
        pro = float(np.mean([np.mean(region >= t) for region in regions]))
        points.append((fpr, pro))
    points.sort()
    fprs, pros = np.array(points).T
    keep = fprs <= fpr_limit
    x, y = list(fprs[keep]), list(pros[keep])
    nxt = int(np.argmax(fprs > fpr_limit))
    x.append(fpr_limit)
    y.append(np.interp(fpr_limit, [fprs[nxt - 1], fprs[nxt]], [pros[nxt - 1], pros[nxt]]))
    area = sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1))
    return area / fpr_limit


# --------------------------------------------------------------------------- AUROC
def test_auroc_perfect_reversed_and_ties():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert image_auroc(labels, scores) == 1.0
    assert image_auroc(labels, -scores) == 0.0
    assert image_auroc(labels, np.ones(5)) == 0.5  # all tied: chance
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # many ties
    assert image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_pixel_auroc_matches_sklearn():
    masks, maps = _masks_and_maps()
    assert pixel_auroc(masks, masks.astype(float)) == 1.0
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert pixel_auroc(masks[0], maps[0]) == pytest.approx(roc_auc_score(masks[0].ravel(), maps[0].ravel()))


# --------------------------------------------------------------------------- AUPRO
def test_aupro_perfect_and_reversed():
    masks, _ = _masks_and_maps()
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert aupro(masks, 1.0 - masks) == pytest.approx(0.0)


def test_aupro_weights_regions_equally():
    mask = np.zeros((1, 40, 40), dtype=np.uint8)
    mask[0, 2:22, 2:22] = 1  # large region, missed
    mask[0, 30:33, 30:33] = 1  # small region, found
    amap = np.zeros((1, 40, 40))
    amap[0, 30:33, 30:33] = 1.0
    # Curve: (0, 0) -> (0, 0.5) -> (1, 1); PRO at FPR 0.3 is 0.65; area 0.3 * (0.5 + 0.65) / 2.
    assert aupro(mask, amap) == pytest.approx(0.575)
    assert aupro(mask, amap, fpr_limit=1.0) == pytest.approx(0.75)


def test_aupro_noisy_matches_reference():
    masks, maps = _masks_and_maps(noise=1.5, seed=3)
    value = aupro(masks, maps)
    assert 0.0 < value < 1.0
    assert value == pytest.approx(_reference_aupro(masks, maps), abs=0.01)
    assert aupro(masks, maps, fpr_limit=0.1) == pytest.approx(_reference_aupro(masks, maps, 0.1), abs=0.01)


def test_aupro_on_an_mvtec_sized_set():
    # Its speed is a figure of kd-bench-metrics, not an assertion here: CI machines differ.
    masks, maps = synthetic_maps(60, 256)
    value = aupro(masks, maps)
    assert 0.5 < value < 1.0
    assert aupro(masks, maps + 5.0 * masks) > value  # clearer defects, higher overlap


# --------------------------------------------------------------------------- F1
def test_f1_optimal_threshold_separable():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.2, 0.6, 0.9, 0.7])
    threshold, f1 = f1_optimal_threshold(labels, scores)
    assert f1 == 1.0
    assert threshold in scores
    assert ((scores >= threshold) == labels.astype(bool)).all()
    assert f1_at_threshold(labels, scores, threshold) == 1.0


def test_f1_optimal_matches_sklearn_curve():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + 1.2 * y, 2)
    threshold, f1 = f1_optimal_threshold(y, s)
    precision, recall, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        reference = np.nanmax(2 * precision * recall / (precision + recall))
    assert f1 == pytest.approx(reference)
    assert f1_at_threshold(y, s, threshold) == pytest.approx(f1)


def test_f1_at_threshold():
    labels = np.array([0, 1, 1, 0])
    scores = np.array([0.5, 0.5, 0.2, 0.1])
    # threshold 0.5: TP 1, FP 1, FN 1 -> F1 = 2 / 4
    assert f1_at_threshold(labels, scores, 0.5) == 0.5
    assert f1_at_threshold(labels, scores, 10.0) == 0.0


# --------------------------------------------------------------------------- undefined / invalid
def test_undefined_metrics_return_nan(caplog):
    zeros = np.zeros((2, 8, 8), dtype=np.uint8)
    maps = np.random.default_rng(0).random((2, 8, 8))
    with caplog.at_level(logging.WARNING, logger="kdcore.metrics"):
        assert math.isnan(image_auroc([0, 0, 0], [0.1, 0.2, 0.3]))
        assert math.isnan(image_auroc([1, 1], [0.1, 0.2]))
        assert math.isnan(pixel_auroc(zeros, maps))
        assert math.isnan(aupro(zeros, maps))
        assert math.isnan(aupro(np.ones_like(zeros), maps))
        assert all(math.isnan(v) for v in f1_optimal_threshold([0, 0], [0.1, 0.2]))
        assert math.isnan(f1_at_threshold([0, 0], [0.1, 0.2], 0.15))
    assert len(caplog.records) == 7
    result = evaluate([0, 0], [0.1, 0.2], zeros, maps, 0.15, 0.5)
    assert set(result) == {"image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1"}
    assert all(math.isnan(v) for v in result.values())


def test_invalid_inputs_raise():
    with pytest.raises(ValueError):
        image_auroc([0, 1], [0.1])
    with pytest.raises(ValueError):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        image_auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError):
        aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))


def test_evaluate():
    masks, maps = _masks_and_maps()
    labels = masks.reshape(len(masks), -1).max(axis=1)
    scores = maps.reshape(len(maps), -1).max(axis=1)
    image_threshold, _ = f1_optimal_threshold(labels, scores)
    pixel_threshold, pixel_best = f1_optimal_threshold(masks, maps)
    result = evaluate(labels, scores, masks, maps, image_threshold, pixel_threshold)
    assert result["image_auroc"] == pytest.approx(image_auroc(labels, scores))
    assert result["pixel_auroc"] == pytest.approx(pixel_auroc(masks, maps))
    assert result["aupro"] == pytest.approx(aupro(masks, maps))
    assert result["pixel_f1"] == pytest.approx(pixel_best)
    assert 0.0 <= result["image_f1"] <= 1.0
    image_only = evaluate(labels, scores, None, None, image_threshold, pixel_threshold)
    assert math.isnan(image_only["aupro"]) and image_only["image_auroc"] == result["image_auroc"]


def test_image_auroc_by_defect_scores_each_kind_against_all_good_images():
    defects = ["good", "good", "good", "spots", "spots", "streak", "streak"]
    scores = np.array([0.1, 0.2, 0.3, 0.25, 0.05, 0.9, 0.8])
    by = image_auroc_by_defect(defects, scores)
    assert list(by) == ["spots", "streak"]
    assert by["streak"] == 1.0
    assert by["spots"] == pytest.approx(roc_auc_score([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.25, 0.05]))
    with pytest.raises(ValueError, match="defect names"):
        image_auroc_by_defect(defects[:-1], scores)
    assert all(math.isnan(v) for v in image_auroc_by_defect(["spots"], np.array([1.0])).values())
