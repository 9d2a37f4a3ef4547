"""The stats JSON: score statistics, thresholds, calibration and metrics of one trained detector.

This module is the single definition of the schema *and* of the 0..1 calibration formula. Training writes
the file with it; the exporter copies this very file next to the Triton scorer, which loads the JSON with it,
so the two sides cannot drift. It must therefore import nothing but the standard library, numpy and pydantic.

Calibration (see :class:`Calibration`)::

    p = 1 / (1 + exp(-ln(9) * (s - t) / w))      computed as 0.5 * (1 + tanh(ln(9) * (s - t) / (2 w)))

with ``s`` the raw score, ``t`` the decision threshold and ``w = t - median(held-out good scores)`` (the
good images' standard deviation where that is not positive). So ``p(t) = 0.5`` exactly, the median good image
maps to 0.1, a score as far above the threshold maps to 0.9, ``p`` is strictly increasing and stays in [0, 1].
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1
#: ``ln(9)``: a score one scale below the threshold maps to 0.1, one above to 0.9.
DEFAULT_GAIN = math.log(9.0)
#: Quantiles recorded for every score population, as ``{"q50": ...}``.
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class StatsError(ValueError):
    """A stats JSON that is missing, malformed or does not match the model it is loaded for."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class ScoreStatistics(_Strict):
    """Summary of a population of scores (image scores, or all pixels of the maps)."""

    count: int = Field(ge=1)
    min: FiniteFloat
    max: FiniteFloat
    mean: FiniteFloat
    std: FiniteFloat = Field(ge=0)
    quantiles: dict[str, FiniteFloat]

    @model_validator(mode="after")
    def _ordered(self) -> ScoreStatistics:
        if not self.min <= self.mean <= self.max:
            raise ValueError(f"expected min <= mean <= max, got {self.min}, {self.mean}, {self.max}")
        return self

    @classmethod
    def of(cls, values: np.ndarray) -> ScoreStatistics:
        """Statistics of ``values`` (any shape, flattened).

        Raises:
            ValueError: If ``values`` is empty or not finite.
        """
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0 or not np.all(np.isfinite(v)):
            raise ValueError("score statistics need a non-empty array of finite values")
        qs = np.quantile(v, QUANTILES)
        return cls(
            count=int(v.size),
            min=float(v.min()),
            max=float(v.max()),
            mean=float(np.clip(v.mean(), v.min(), v.max())),
            std=float(v.std()),
            quantiles={quantile_key(q): float(x) for q, x in zip(QUANTILES, qs, strict=True)},
        )

    @property
    def median(self) -> float:
        """The 0.5 quantile."""
        return self.quantiles[quantile_key(0.5)]


def quantile_key(q: float) -> str:
    """``0.5 -> "q50"``, ``0.995 -> "q99.5"``."""
    return f"q{q * 100:g}"


class ThresholdMethod(str, Enum):
    """How a decision threshold was chosen (always on validation data, never on the test split)."""

    F1_OPTIMAL = "f1_optimal"
    """Maximises F1 over the validation split's labelled good and anomalous samples."""
    GOOD_QUANTILE = "good_quantile"
    """A quantile of held-out good scores, used when no anomalous validation samples exist."""


class Threshold(_Strict):
    """A decision threshold: ``raw >= value`` is anomalous."""

    value: FiniteFloat
    method: ThresholdMethod
    quantile: float | None = Field(default=None, gt=0, lt=1)
    validation_f1: float | None = Field(default=None, ge=0, le=1)
    num_samples: int = Field(ge=1, description="validation samples (images or pixels) it was chosen on")


class Calibration(_Strict):
    """Monotonic map of raw scores to [0, 1] with the threshold at exactly 0.5 (formula in the module doc)."""

    threshold: FiniteFloat
    scale: FiniteFloat = Field(gt=0, description="raw-score distance from the threshold that maps to 0.1 / 0.9")
    gain: FiniteFloat = Field(default=DEFAULT_GAIN, gt=0)
    formula: Literal["0.5 * (1 + tanh(gain * (raw - threshold) / (2 * scale)))"] = (
        "0.5 * (1 + tanh(gain * (raw - threshold) / (2 * scale)))"
    )

    def steps(self) -> tuple[Step, ...]:
        """The formula as elementwise float32 steps: ``1 / (1 + exp(-(gain / scale) * (raw - threshold)))``.

        :meth:`apply` runs them with numpy and the exporter appends them to the network's ONNX graph as nodes
        (``export/calibrated.py``), so the scorer and the calibrated network compute one formula, op for op.
        """
        # 0.5 * (1 + tanh(z)) == 1 / (1 + exp(-2 z)); this form keeps float32 precision far below the threshold,
        # where the tanh form rounds every value to 0 and ties pixels that rank differently (pixel metrics).
        slope = float(np.float32(self.gain / self.scale))
        return (("Sub", self.threshold), ("Mul", -slope), ("Exp", None), ("Add", 1.0), ("Reciprocal", None))

    def decision(self) -> Step:
        """The anomalous/normal rule as one step: ``raw >= threshold`` (in float32, where the calibrated score is
        exactly 0.5), so the label and the calibrated score can never disagree."""
        return ("GreaterOrEqual", self.threshold)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated float32 scores in [0, 1], same shape as ``raw``."""
        with np.errstate(over="ignore"):  # exp overflows far below the threshold: 1 / inf is the right 0
            return run_steps(self.steps(), raw)

    def decide(self, raw: np.ndarray) -> np.ndarray:
        """``True`` where ``raw`` is anomalous, same shape as ``raw``."""
        return run_steps((self.decision(),), raw)


#: One elementwise step of the calibration: an ONNX operator name and its constant second operand (or ``None``).
Step = tuple[str, float | None]

#: The operators the steps may use, with numpy's equivalents (ONNX Runtime computes the same IEEE float32 ops).
ELEMENTWISE: dict[str, Callable[..., np.ndarray]] = {
    "Sub": np.subtract, "Mul": np.multiply, "Exp": np.exp, "Add": np.add, "Reciprocal": np.reciprocal,
    "GreaterOrEqual": np.greater_equal,
}


def run_steps(steps: tuple[Step, ...], raw: np.ndarray) -> np.ndarray:
    """Apply ``steps`` in order to ``raw`` as float32 (constants rounded to float32, as in the graph)."""
    x = np.asarray(raw, dtype=np.float32)
    for op, constant in steps:
        x = ELEMENTWISE[op](x) if constant is None else ELEMENTWISE[op](x, np.float32(constant))
    return x


class Normalization(_Strict):
    """How the network turns its uint8 input into the teacher's input (done inside the exported graph)."""

    input_format: Literal["uint8_rgb_nhwc"] = "uint8_rgb_nhwc"
    mean: tuple[FiniteFloat, FiniteFloat, FiniteFloat]
    std: tuple[FiniteFloat, FiniteFloat, FiniteFloat]

    @field_validator("std")
    @classmethod
    def _positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError("every std must be positive")
        return v


class ModelInfo(_Strict):
    """Which network produced the scores."""

    method: str = Field(description="detector family, e.g. 'rd4ad'")
    backbone: str
    input_kind: Literal["image", "vector", "signal"] = Field(
        "image", description="uint8 RGB images, float32 feature vectors, or float32 time-series windows (steps, leads)"
    )
    input_size: int = Field(gt=0, description="square image side in pixels, the vector length, or the window's steps")
    channels: int | None = Field(None, gt=0, description="leads per step (time-series models only)")
    plot_size: int | None = Field(
        None, gt=0, description="side of the plot image the network reads (time-series models drawn by the renderer "
        "step, kdcore.series_plot); None: the network reads the signal itself"
    )
    parameters: int = Field(ge=0, description="parameter count of the deployed network")
    trainable_parameters: int = Field(ge=0)


class Metrics(_Strict):
    """Metrics on one labelled split; ``None`` where a metric is undefined (e.g. no anomalous samples)."""

    split: str
    num_good: int = Field(ge=0)
    num_anomalous: int = Field(ge=0)
    image_auroc: float | None = None
    pixel_auroc: float | None = None
    aupro: float | None = Field(default=None, description="area under PRO up to FPR 0.3, normalised")
    image_f1: float | None = Field(default=None, description="F1 at the stored image threshold")
    pixel_f1: float | None = Field(default=None, description="F1 at the stored pixel threshold")
    region_precision: float | None = Field(
        default=None, description="anomalous regions (calibrated map >= 0.5) matching a true region (kdcore.detection)"
    )
    region_recall: float | None = Field(default=None, description="true regions matched by an anomalous region")
    region_f1: float | None = Field(default=None, description="F1 of the region precision and recall")
    detection_ap: float | None = Field(default=None, description="average precision of the regions ranked by peak")
    segmentation_f1: float | None = Field(default=None, description="pixel F1 of the calibrated map >= 0.5")
    pixel_auc_pr: float | None = Field(default=None, description="time series: per-step average precision")
    vus_pr: float | None = Field(default=None, description="time series: volume under the range-PR surface")
    msp: float | None = Field(default=None, description="time series: mean squeezed precision (kdcore.series_metrics)")
    msr: float | None = Field(default=None, description="time series: mean squeezed recall")


class PatchGrid(_Strict):
    """Patch training's grid: every image was cut into ``columns`` x ``rows`` overlapping windows at the model's input
    size (:mod:`kdcore.tiling`), and whole images are scored by stitching their windows' maps (the image score is the
    highest window score). The client tiles served frames by it."""

    columns: int = Field(ge=1)
    rows: int = Field(ge=1)
    overlap: float = Field(ge=0, lt=0.9, description="fraction of a window shared with its neighbour")


class TrainingFacts(_Strict):
    """How the weights were made, enough to reproduce them."""

    epochs: int = Field(ge=0)
    best_epoch: int = Field(ge=0, description="epoch whose weights were kept (best on validation)")
    steps: int = Field(ge=0)
    seconds: float = Field(ge=0)
    seed: int
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    final_loss: FiniteFloat
    dataset: str = Field(description="dataset root and category the model was trained on")
    dataset_fingerprint: str = Field(min_length=16, description="sha256 of the data's paths and bytes")
    num_train: int = Field(ge=1)
    positional_normalization: bool = Field(
        False, description="maps are per-pixel z-scores against the training images' maps (in the graph)"
    )
    map_scales: Literal["all", "without_finest", "coarsest"] = Field(
        "all", description="which of the teacher's scales the map sums (rd4ad; the finest is stride 4)"
    )
    denoising: Literal["off", "structural", "broad"] = Field(
        "off", description="rd4ad: the perturbation family its decoder learned to undo ('off': the paper's training); "
        "with kd-train's 'auto', the training validation chose"
    )
    tap_memory_weight: float = Field(
        0.0, ge=0, description="rd4ad: weight of the teacher-tap nearest-neighbour distance in the map, chosen on "
        "validation (0: no memory in the graph)"
    )
    tap_memory_vectors: int = Field(0, ge=0, description="good training tap vectors the memory holds (0: none)")
    patch_grid: PatchGrid | None = Field(
        None, description="patch training's grid (None: whole images resized to the input); the thresholds, "
        "calibration and metrics are then for whole images scored through it"
    )
    torch_version: str


class Stats(_Strict):
    """The whole stats JSON (version :data:`SCHEMA_VERSION`)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    model: ModelInfo
    normalization: Normalization | None = Field(description="image models only")
    image_scores: ScoreStatistics = Field(
        description="raw image scores of held-out good images (holdout + validation); time series: window scores "
        "(the highest step) of the validation windows without an anomalous step"
    )
    pixel_scores: ScoreStatistics | None = Field(
        description="raw map values of held-out good images (holdout + validation); time series: the per-step scores "
        "of the validation steps labelled normal; absent for vector models"
    )
    image_threshold: Threshold
    pixel_threshold: Threshold | None = Field(description="image and time-series models (per step)")
    image_calibration: Calibration
    pixel_calibration: Calibration | None = Field(description="image and time-series models (per step)")
    validation_metrics: Metrics
    test_metrics: Metrics
    training: TrainingFacts
    created_at: str

    @model_validator(mode="after")
    def _consistent(self) -> Stats:
        kind = self.model.input_kind
        needed = {"normalization": kind == "image", "pixel_scores": kind != "vector",
                  "pixel_threshold": kind != "vector", "pixel_calibration": kind != "vector",
                  "model.channels": kind == "signal"}
        for name, need in needed.items():
            value = getattr(self.model, name.split(".")[1]) if name.startswith("model.") else getattr(self, name)
            if (value is not None) != need:
                raise ValueError(f"field '{name}': a model with input_kind '{kind}' {'needs' if need else 'must not have'} it")
        if self.model.plot_size is not None and kind != "signal":
            raise ValueError(f"field 'model.plot_size': a model with input_kind '{kind}' must not have it")
        for name, thr, cal in (
            ("image", self.image_threshold, self.image_calibration),
            ("pixel", self.pixel_threshold, self.pixel_calibration),
        ):
            if thr is None or cal is None:
                continue
            if not math.isclose(thr.value, cal.threshold, rel_tol=1e-9, abs_tol=1e-12):
                raise ValueError(
                    f"{name}_calibration.threshold ({cal.threshold}) differs from {name}_threshold.value ({thr.value})"
                )
        return self


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid stats JSON ({error.error_count()} problem(s))"]
    for e in error.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  field '{field}': {e['msg']}")
    return "\n".join(lines)


def parse_stats(text: str, source: str = "stats JSON") -> Stats:
    """Validate a stats document.

    Args:
        text: The JSON text.
        source: Where it came from, for messages.

    Returns:
        The validated :class:`Stats`.

    Raises:
        StatsError: Not JSON, a field missing or out of range, or another schema version; the message names
            every offending field.
    """
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise StatsError(f"{source}: not valid JSON ({e})") from e
    if isinstance(raw, dict) and raw.get("schema_version") not in (None, SCHEMA_VERSION):
        raise StatsError(
            f"{source}: field 'schema_version' is {raw.get('schema_version')!r}; this code reads version {SCHEMA_VERSION}"
        )
    try:
        return Stats.model_validate(raw)
    except ValidationError as e:
        raise StatsError(_describe(e, source)) from e


def load_stats(path: Path | str, *, input_size: int | None = None, backbone: str | None = None) -> Stats:
    """Read and validate a stats JSON, optionally checking it belongs to the model at hand.

    Args:
        path: The file.
        input_size: If given, ``model.input_size`` must equal it.
        backbone: If given, ``model.backbone`` must equal it.

    Returns:
        The validated :class:`Stats`.

    Raises:
        StatsError: Missing, malformed or mismatched file; the message names the field.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise StatsError(f"{path}: cannot read stats JSON ({e.strerror})") from e
    stats = parse_stats(text, str(path))
    if input_size is not None and stats.model.input_size != input_size:
        raise StatsError(f"{path}: field 'model.input_size' is {stats.model.input_size}, the model takes {input_size}")
    if backbone is not None and stats.model.backbone != backbone:
        raise StatsError(f"{path}: field 'model.backbone' is {stats.model.backbone!r}, the model is {backbone!r}")
    return stats


def save_stats(stats: Stats, path: Path | str) -> Path:
    """Write ``stats`` atomically (a temporary file renamed into place) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(stats.model_dump_json(indent=2))
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
