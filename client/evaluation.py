"""Evaluation of served outputs against ground truth: does serving reproduce the metrics of the stats JSON?

``score --evaluate <category folder>`` scores ``<category>/test/`` (MVTec AD layout, :mod:`kdcore.layout`)
through the server and computes image AUROC, pixel AUROC, AUPRO and F1 at the served threshold with the
project's metric definitions (:mod:`kdcore.metrics`) from the served outputs alone: raw scores for the
ranking metrics, served labels for the image F1, served 0..1 maps for the pixel metrics (the calibration is
monotonic, so the ranking metrics are those of the raw maps; the pixel threshold is the contract's
:data:`~kdcore.contract.DECISION`). The stats JSON's test metrics were measured on the same folder at training
time, so the two agree to within the export tolerance.

It also measures detection (:mod:`kdcore.detection`): the served regions (:mod:`kdcore.regions`, found on the
served maps) against the components of the ground-truth masks, and with ``--compare-boxes FILE`` another
detector's boxes by the same rule, side by side. Everything is measured in the frame of each served map (the
model's input size, or a tiled frame's full resolution): masks resized nearest-neighbour as for the pixel
metrics, the other detector's boxes scaled from image pixels by ``map width / image width`` and ``map height /
image height``. The stats JSON's own region figures are shown beside the served ones (:func:`recorded_detection`).

**The boxes file** (:class:`BoxesFile`, COCO's results format with file names): a JSON list of predictions ::

    [{"image": "test/crack/000.png", "bbox": [x, y, width, height], "score": 0.93}, ...]

``image`` is the image's path relative to the category folder (``test/crack/000.png``), relative to its ``test``
folder (``crack/000.png``), absolute, or its file name alone where that is unique in the split; ``bbox`` is COCO's
``[x, y, width, height]`` in pixels of the image file (top left corner, width and height > 0); ``score`` is the
detector's confidence (any scale, higher is surer). COCO's own results (``"image_id"`` instead of ``"image"``,
``"category_id"`` accepted and ignored: the evaluation is class-agnostic) work when the file is an object that also
carries COCO's ``images`` list: ``{"images": [{"id": 1, "file_name": "test/crack/000.png"}, ...], "predictions":
[...]}``. Any other key, a missing or malformed field, an unknown image or an ambiguous file name refuses the
file with a message naming the field (``predictions.3.bbox``). The predictions with ``score >= --boxes-threshold``
count for precision, recall, F1 and the filled-box mask of the segmentation F1; AP ranks them all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from client.results import ImageResult
from kdcore.contract import ANOMALOUS, DECISION
from kdcore.detection import (
    DEFAULT_INTERPOLATION,
    DEFAULT_RULE,
    IOU_THRESHOLD,
    Detection,
    OverlapRule,
    box_mask,
    detection_figures,
    region_detections,
    segmentation_f1,
)
from kdcore.imageio import binary_mask, read_image
from kdcore.layout import Sample, scan_split
from kdcore.metrics import aupro, f1_at_threshold, image_auroc, pixel_auroc
from kdcore.regions import anomalous_regions
from kdcore.tiling import evaluation_side

#: The largest |served - recorded| difference of a metric accepted as agreement.
AGREEMENT = 0.005
METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1")


def evaluation_samples(category_dir: Path) -> list[Sample]:
    """The labelled images of ``<category>/test/`` with their masks (raises ``DatasetError`` if malformed)."""
    return scan_split(Path(category_dir), "test")


def _mask_at(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """``sample``'s ground truth as ``{0, 1}`` at a map's ``(height, width)`` (:func:`kdcore.imageio.binary_mask`:
    nearest-neighbour resizing, pixels above half the mask's maximum)."""
    if sample.mask_path is None:
        return np.zeros(shape, dtype=np.uint8)
    mask = read_image(sample.mask_path)
    if shape[0] == shape[1]:
        return binary_mask(mask, shape[0])
    if mask.shape[:2] != shape:  # a tiled frame's map that is not square: resized the same way, to its shape
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return binary_mask(mask, None)


def _served(samples: list[Sample], results: dict[str, ImageResult]) -> tuple[list[ImageResult], list[np.ndarray],
                                                                             list[np.ndarray]]:
    """The results of ``samples`` in order, their served maps (2-D: at the model's input size, or a tiled frame's
    full resolution) and the masks at each map's size.

    Raises:
        ValueError: An image was not scored, or scored without a map.
    """
    missing = [str(s.path) for s in samples if str(s.path) not in results or not results[str(s.path)].ok]
    if missing:
        raise ValueError(f"{len(missing)} evaluation image(s) not scored, e.g. {missing[0]}")
    ordered = [results[str(s.path)] for s in samples]
    if any(r.anomaly_map is None for r in ordered):
        raise ValueError("evaluation needs the served anomaly maps (maps=True)")
    maps = [np.asarray(r.anomaly_map, dtype=np.float32).reshape(r.anomaly_map.shape[-2:]) for r in ordered]
    masks = [_mask_at(s, m.shape) for s, m in zip(samples, maps)]
    return ordered, maps, masks


def served_metrics(samples: list[Sample], results: dict[str, ImageResult], side: int | None = None
                   ) -> dict[str, float]:
    """Metrics of the served outputs of ``samples`` (keyed by path in ``results``; all must be scored).

    ``side``: measure the maps resized (area) to ``side`` x ``side``, with the masks read at that side, as training
    measured a patch-trained model (:func:`patch_evaluation_side`); ``None`` measures them as served.

    Raises:
        ValueError: An image was not scored, or scored without a map.
    """
    ordered, maps, masks = _served(samples, results)
    if side is not None:
        maps = [cv2.resize(m, (side, side), interpolation=cv2.INTER_AREA) for m in maps]
        masks = [_mask_at(s, (side, side)) for s in samples]
    if len({m.shape for m in maps}) > 1:
        raise ValueError(f"the evaluation images' maps differ in size ({sorted({m.shape for m in maps})}): the pixel "
                         "metrics need one size")
    maps, masks = np.stack(maps), np.stack(masks)
    labels = np.array([s.label for s in samples], dtype=np.int64)
    raw = np.array([r.raw_score for r in ordered], dtype=np.float64)
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


def patch_evaluation_side(stats: dict[str, Any] | None) -> int | None:
    """The side a patch-trained model's training report measured whole frames at (``None``: a whole-image model,
    measured at its input size as served)."""
    grid = (stats or {}).get("training", {}).get("patch_grid")
    if not grid:
        return None
    return evaluation_side(int(stats["model"]["input_size"]), int(grid["columns"]), int(grid["rows"]))


# ---------------------------------------------------------------------------------------------- detection
class BoxesFileError(ValueError):
    """A ``--compare-boxes`` file that cannot be used; the message names the file and the field."""


class BoxPrediction(BaseModel):
    """One box of another detector (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str | None = Field(None, min_length=1, description="the image: path relative to the category folder or "
                              "to its test folder, absolute, or a file name that is unique in the split")
    image_id: int | str | None = Field(None, description="COCO: the id of an entry of the file's 'images' list")
    bbox: list[float] = Field(min_length=4, max_length=4, description="COCO's [x, y, width, height] in image pixels")
    score: float = Field(allow_inf_nan=False, description="confidence, higher is surer")
    category_id: int | str | None = Field(None, description="COCO's category (ignored: class-agnostic)")

    @field_validator("bbox")
    @classmethod
    def _finite_box(cls, bbox: list[float]) -> list[float]:
        if not all(math.isfinite(v) for v in bbox):
            raise ValueError("bbox values must be finite numbers")
        if bbox[2] <= 0 or bbox[3] <= 0:
            raise ValueError(f"bbox width and height must be > 0, got {list(bbox[2:])}")
        return bbox

    @model_validator(mode="after")
    def _one_image(self) -> BoxPrediction:
        if (self.image is None) == (self.image_id is None):
            raise ValueError("give either 'image' (a path or file name) or 'image_id' (with an 'images' list)")
        return self


class BoxImage(BaseModel):
    """An entry of COCO's ``images`` list (its other keys, such as width and height, are not needed)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: int | str
    file_name: str = Field(min_length=1)


class BoxesFile(BaseModel):
    """A ``--compare-boxes`` file: the predictions, and COCO's images list when they name images by id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    images: list[BoxImage] = Field(default_factory=list)
    predictions: list[BoxPrediction]


def load_boxes(path: Path) -> BoxesFile:
    """Read and validate a boxes file (a list of predictions, or an object with ``predictions`` and ``images``).

    Raises:
        BoxesFileError: Unreadable, not JSON, or not the documented schema; the message names every bad field.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise BoxesFileError(f"{path}: cannot read the boxes file ({e.strerror})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BoxesFileError(f"{path}: not a JSON file ({e})") from e
    try:
        return BoxesFile.model_validate({"predictions": raw} if isinstance(raw, list) else raw)
    except ValidationError as e:
        fields = "; ".join(f"field '{'.'.join(map(str, x['loc'])) or '<root>'}': {x['msg']}" for x in e.errors())
        raise BoxesFileError(f"{path}: invalid boxes file: {fields}") from e


def _name_key(name: str) -> str:
    key = name.replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    return key


def boxes_by_image(boxes: BoxesFile, samples: Sequence[Sample], category_dir: Path,
                   source: str = "boxes file") -> dict[str, list[Detection]]:
    """The predictions of ``boxes`` per image of ``samples`` (keyed by ``str(sample.path)``; every sample gets a
    list, empty when the file has no box on it), boxes in pixels of the image file.

    Raises:
        BoxesFileError: A prediction names an unknown image id, an image outside the split, or a file name that
            more than one image of the split has; the message names the field.
    """
    category_dir = Path(category_dir)
    lookup: dict[str, Sample | None] = {}
    for s in samples:
        for key in (s.path.resolve().as_posix(), s.path.as_posix()):
            lookup[key] = s
        for base in (category_dir, category_dir / "test"):
            try:
                lookup[s.path.relative_to(base).as_posix()] = s
            except ValueError:
                pass
    names: dict[str, list[Sample]] = {}
    for s in samples:
        names.setdefault(s.path.name, []).append(s)
    ids: dict[str, str] = {}
    for i, image in enumerate(boxes.images):
        if str(image.id) in ids:
            raise BoxesFileError(f"{source}: field 'images.{i}.id': {image.id!r} appears twice")
        ids[str(image.id)] = image.file_name
    out: dict[str, list[Detection]] = {str(s.path): [] for s in samples}
    for i, p in enumerate(boxes.predictions):
        field = f"predictions.{i}.image_id" if p.image is None else f"predictions.{i}.image"
        name = p.image
        if name is None:
            if str(p.image_id) not in ids:
                raise BoxesFileError(f"{source}: field '{field}': {p.image_id!r} is not the id of an entry of 'images'")
            name = ids[str(p.image_id)]
        key = _name_key(name)
        sample = lookup.get(key)
        if sample is None and "/" not in key:
            same = names.get(key, [])
            if len(same) > 1:
                raise BoxesFileError(f"{source}: field '{field}': {name!r} names {len(same)} images of "
                                     f"the split; give its path relative to {category_dir} (e.g. "
                                     f"{same[0].path.relative_to(category_dir).as_posix()})")
            sample = same[0] if same else None
        if sample is None:
            raise BoxesFileError(f"{source}: field '{field}': {name!r} is not an image of "
                                 f"{category_dir / 'test'}")
        out[str(sample.path)].append(Detection.from_xywh(*p.bbox, p.score))
    return out


def _image_shape(sample: Sample, result: ImageResult) -> tuple[int, int]:
    """The image file's ``(height, width)``: from the result, else read (encoded input does not decode)."""
    if result.height and result.width:
        return int(result.height), int(result.width)
    return read_image(sample.path).shape[:2]


def _figures(images: list[tuple[list[Detection], np.ndarray]], predicted: list[np.ndarray], masks: list[np.ndarray],
             *, rule: OverlapRule, threshold: float | None) -> dict[str, Any]:
    figures = detection_figures(images, rule=rule, threshold=threshold).to_dict()
    seg = segmentation_f1(masks, predicted)
    return {**figures, "segmentation_f1": None if not math.isfinite(seg) else seg}


#: The figures of a detection report, as the score command prints them: (key, label).
DETECTION_ROWS = (("precision", "region precision"), ("recall", "region recall"), ("f1", "region F1"),
                  ("ap", "mAP"), ("segmentation_f1", "segmentation F1"))
#: Where the stats JSON's test metrics record the same figures (the training report's, by the default rule).
RECORDED_DETECTION = {"precision": "region_precision", "recall": "region_recall", "f1": "region_f1",
                      "ap": "detection_ap", "segmentation_f1": "segmentation_f1"}


def recorded_detection(stats: dict[str, Any]) -> dict[str, float | None] | None:
    """The region figures the stats JSON's test metrics recorded, keyed as a detection report's (``None`` for a stats
    JSON from before they existed). Shown beside the served ones, not held to them: a region is a discrete thing,
    one pixel crossing 0.5 by a rounding difference adds or removes one, and a patch-trained model's training
    report measures its frames at a reduced size."""
    recorded = stats.get("test_metrics", {})
    if all(recorded.get(k) is None for k in RECORDED_DETECTION.values()):
        return None
    return {k: recorded.get(v) for k, v in RECORDED_DETECTION.items()}


def detection_metrics(samples: list[Sample], results: dict[str, ImageResult], *,
                      boxes: dict[str, list[Detection]] | None = None, rule: OverlapRule = DEFAULT_RULE,
                      boxes_threshold: float = DECISION) -> dict[str, Any]:
    """Region precision, recall, F1, mAP and segmentation F1 of the served regions against the masks, and of
    another detector's ``boxes`` (from :func:`boxes_by_image`) by the same rule (:mod:`kdcore.detection`).

    The served regions are those of the served maps ranked by peak score; all count (they reach 0.5 by definition)
    and their segmentation F1 is that of the map >= 0.5 (the served pixel F1). The boxes are scaled from image
    pixels to the map's frame; those scoring at least ``boxes_threshold`` count for precision, recall, F1 and the
    filled mask of the segmentation F1, AP ranks them all.

    Returns:
        ``{"rule", "iou_threshold", "interpolation", "rank_by", "frame", "regions": {...}, "boxes": {...} or None,
        "boxes_threshold"}`` where each detector's figures are ``precision``, ``recall``, ``f1``, ``ap``,
        ``segmentation_f1``, ``true_positives``, ``predictions``, ``true_regions`` (NaN as ``None``).

    Raises:
        ValueError: An image was not scored, or scored without a map.
    """
    ordered, maps, masks = _served(samples, results)
    ours = [region_detections(anomalous_regions(m)) for m in maps]
    sizes = {m.shape for m in maps}
    report: dict[str, Any] = {
        "rule": rule, "iou_threshold": IOU_THRESHOLD if rule == "iou" else None,
        "interpolation": DEFAULT_INTERPOLATION, "rank_by": "peak",
        "frame": f"served map, {maps[0].shape[1]}x{maps[0].shape[0]} px" if len(sizes) == 1 else "served maps",
        "regions": _figures(list(zip(ours, masks)), maps, masks, rule=rule, threshold=None),
        "boxes": None, "boxes_threshold": None,
    }
    if boxes is not None:
        theirs = []
        for sample, result, amap in zip(samples, ordered, maps):
            height, width = _image_shape(sample, result)
            sx, sy = amap.shape[1] / width, amap.shape[0] / height
            theirs.append([d.scaled(sx, sy) for d in boxes.get(str(sample.path), [])])
        filled = [box_mask(d, m.shape, boxes_threshold) for d, m in zip(theirs, maps)]
        report["boxes"] = _figures(list(zip(theirs, masks)), filled, masks, rule=rule, threshold=boxes_threshold)
        report["boxes_threshold"] = boxes_threshold
    return report

