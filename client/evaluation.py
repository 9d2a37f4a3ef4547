"""Evaluation of served outputs against ground truth: does serving reproduce the metrics of the stats JSON?

``score --evaluate <category folder>`` scores ``<category>/test/`` (MVTec AD layout, :mod:`kdcore.layout`)
through the server and computes image AUROC, pixel AUROC, AUPRO and F1 at the served threshold with the
project's metric definitions (:mod:`kdcore.metrics`) from the served outputs alone: raw scores for the
ranking metrics, served labels for the image F1, served 0..1 maps for the pixel metrics (the calibration is
monotonic, so the ranking metrics are those of the raw maps; the pixel threshold is the contract's
:data:`~kdcore.contract.DECISION`). The stats JSON's test metrics were measured on the same folder at training
time, so the two agree to within the export tolerance.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.results import ImageResult
from kdcore.contract import ANOMALOUS, DECISION
from kdcore.imageio import binary_mask, read_image
from kdcore.layout import Sample, scan_split
from kdcore.metrics import aupro, f1_at_threshold, image_auroc, pixel_auroc

#: The largest |served - recorded| difference of a metric accepted as agreement.
AGREEMENT = 0.005
METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1")


def evaluation_samples(category_dir: Path) -> list[Sample]:
    """The labelled images of ``<category>/test/`` with their masks (raises ``DatasetError`` if malformed)."""
    return scan_split(Path(category_dir), "test")


def served_metrics(samples: list[Sample], results: dict[str, ImageResult]) -> dict[str, float]:
    """Metrics of the served outputs of ``samples`` (keyed by path in ``results``; all must be scored).

    Raises:
        ValueError: An image was not scored, or scored without a map.
    """
    missing = [str(s.path) for s in samples if str(s.path) not in results or not results[str(s.path)].ok]
    if missing:
        raise ValueError(f"{len(missing)} evaluation image(s) not scored, e.g. {missing[0]}")
    ordered = [results[str(s.path)] for s in samples]
    if any(r.anomaly_map is None for r in ordered):
        raise ValueError("evaluation needs the served anomaly maps (maps=True)")
    labels = np.array([s.label for s in samples], dtype=np.int64)
    raw = np.array([r.raw_score for r in ordered], dtype=np.float64)
    maps = np.stack([np.asarray(r.anomaly_map, dtype=np.float32).reshape(r.anomaly_map.shape[-2:]) for r in ordered])
    size = maps.shape[-1]
    masks = np.stack([binary_mask(None if s.mask_path is None else read_image(s.mask_path), size) for s in samples])
    served_labels = np.array([r.label == ANOMALOUS for r in ordered], dtype=np.float64)
    values = {
        "image_auroc": image_auroc(labels, raw),
        "pixel_auroc": pixel_auroc(masks, maps),
        "aupro": aupro(masks, maps),
        "image_f1": f1_at_threshold(labels, served_labels, DECISION),
        "pixel_f1": f1_at_threshold(masks, maps, DECISION),
    }
    return {k: float(values[k]) for k in METRICS}


@dataclass
class Comparison:
    """Served metrics next to the stats JSON's test metrics."""

    served: dict[str, float]
    recorded: dict[str, float | None]
    differences: dict[str, float | None]
    agree: bool
    counts_match: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as null)."""

        def clean(d: dict[str, float | None]) -> dict[str, float | None]:
            return {k: (None if v is None or not math.isfinite(v) else v) for k, v in d.items()}

        return {"served": clean(self.served), "recorded": clean(self.recorded),
                "differences": clean(self.differences), "tolerance": AGREEMENT,
                "agree": self.agree, "counts_match": self.counts_match}


def compare(served: dict[str, float], stats: dict[str, Any], samples: list[Sample]) -> Comparison:
    """Compare with ``stats["test_metrics"]``; every metric recorded there must agree within :data:`AGREEMENT`."""
    recorded = stats["test_metrics"]
    differences: dict[str, float | None] = {}
    agree = True
    for k in METRICS:
        want, got = recorded.get(k), served.get(k)
        if want is None or got is None or not math.isfinite(got):
            differences[k] = None
            agree &= want is None and (got is None or not math.isfinite(got))
            continue
        differences[k] = abs(got - want)
        agree &= differences[k] <= AGREEMENT
    n_good = sum(s.label == 0 for s in samples)
    counts_match = (recorded.get("num_good"), recorded.get("num_anomalous")) == (n_good, len(samples) - n_good)
    return Comparison(served, {k: recorded.get(k) for k in METRICS}, differences, agree, counts_match)


def load_stats(path: Path) -> dict[str, Any]:
    """The stats JSON as a dict (only its recorded metrics are read here)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
