"""The wire contract: every tensor name, model name, label word and decision line the parts agree on.

Training names the network's input and outputs with it, the exporter writes the Triton configs and the
repository manifest from it, the Python-backend scorer and decoder read their tensors by it (this file is
shipped into the repository beside them), and the client builds its requests with it. Nothing else in the
project types one of these names: a test greps the source for them.

Standard library only, so it can be shipped into a model folder and imported by a Triton Python backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# ---------------------------------------------------------------------------------------------- tensors
#: The image networks' input: uint8 RGB ``(N, S, S, 3)``.
IMAGE_INPUT = "image"
#: The vector networks' input: float32 features ``(N, D)``.
VECTOR_INPUT = "vector"
#: The encoded-image ensembles' input: one encoded file (PNG, JPEG, ...) per batch row, ``BYTES (N, 1)``.
ENCODED_INPUT = "image_bytes"
#: The time-series detectors' input: float32 windows ``(N, T, C)`` (steps, leads).
SIGNAL_INPUT = "signal"
#: The plot of a window as the vision teacher reads it: uint8 RGB ``(N, S, S, 3)``, drawn by the renderer step
#: (:mod:`kdcore.series_plot`) inside the teacher's ensemble.
PLOT_INPUT = "plot"

#: The network's raw image score ``(N, 1)`` float32: the maximum of the raw map.
RAW_PRED = "pred_score"
#: The network's raw anomaly map ``(N, 1, S, S)`` float32 (image networks only).
RAW_MAP = "anomaly_map"

#: Scorer and ensemble outputs: the calibrated 0..1 score ``(N, 1)`` FP32.
SCORE = "score"
#: The calibrated 0..1 map ``(N, 1, S, S)`` FP32 (same name as the network's raw map, on the other side of the scorer).
MAP = "anomaly_map"
#: The calibrated map as UINT8 0..255 (``v / 255`` reads it back).
MAP_U8 = "anomaly_map_u8"
#: The decision as text, ``BYTES (N, 1)``: :data:`ANOMALOUS` or :data:`NORMAL`.
LABEL = "label"
#: The raw score echoed by the scorer, so every ensemble output comes from one step.
RAW_SCORE = "raw_score"
#: The decision as a boolean ``BOOL (N, 1)``, true for anomalous: the calibrated network's answer instead of the
#: :data:`LABEL` text (one byte a row, computed in the graph; :func:`label_of` turns either into the label word).
IS_ANOMALOUS = "is_anomalous"

#: The anomalous intervals of a time-series window, ``BYTES (N, 1)``: one JSON list per row of objects
#: ``{"start", "end", "peak", "score"}`` (steps, ``end`` inclusive; see :mod:`kdcore.intervals`).
INTERVALS = "intervals"
#: The anomalous regions of an image, ``BYTES (N, 1)``: one JSON list per row of objects ``{"x0", "y0", "x1", "y1",
#: "area", "peak", "peak_x", "peak_y", "mean"}`` (8-connected components of the calibrated map at or above
#: :data:`DECISION`, in pixels of the map, box end exclusive; see :mod:`kdcore.regions`). Image detectors only,
#: computed only when asked for.
REGIONS = "regions"

#: Triton's datatype names as the configs and the KServe v2 protocol spell them.
UINT8, FP32, BYTES, BOOL = "UINT8", "FP32", "BYTES", "BOOL"

# ---------------------------------------------------------------------------------------------- decisions
#: The label words (str on the client; the scorer sends them UTF-8 encoded).
ANOMALOUS, NORMAL = "anomalous", "normal"
LABELS = (ANOMALOUS, NORMAL)
#: Every calibrated output has its decision threshold at exactly this value.
DECISION = 0.5
#: Largest difference between the calibrated network (``<model>_fast``) and the Python scorer on the same raw
#: scores: the two run one formula (``kdcore.stats.Calibration.steps``), so only float32 rounding separates them.
CALIBRATED_ATOL = 1e-6

#: The ensemble config's parameter that carries a patch-trained detector's grid (JSON ``{"columns", "rows",
#: "overlap"}``, :class:`kdcore.stats.PatchGrid`): the client reads it from the server and tiles frames by it.
PATCH_GRID_PARAMETER = "patch_grid"

#: ONNX opset: supported by the NGC 24.10 image's ONNX Runtime (1.19, up to opset 21) and by torch's exporter.
OPSET = 17

#: Output profiles of an image detector's ensembles: every output, the score alone (no map computed), the UINT8 map.
FULL_PROFILE, SCORE_PROFILE, MAP8_PROFILE = "full", "score", "map8"
Profile = Literal["full", "score", "map8"]
#: Which scorer outputs each profile's ensemble returns.
PROFILES: dict[str, tuple[str, ...]] = {
    # intervals: time-series detectors only; regions: image detectors only (the score-only profile stays map-free)
    FULL_PROFILE: (SCORE, MAP, INTERVALS, REGIONS, LABEL, RAW_SCORE),
    SCORE_PROFILE: (SCORE, LABEL, RAW_SCORE),
    MAP8_PROFILE: (SCORE, MAP_U8, LABEL, RAW_SCORE),
}


def torchscript_output_name(name: str, index: int) -> str:
    """Triton's PyTorch backend finds outputs by the ``<name>__<index>`` convention."""
    return f"{name}__{index}"


def base_output_name(name: str) -> str:
    """A served output's name without the PyTorch backend's ``__<index>`` suffix."""
    return name.split("__", 1)[0]


def label_text(value: bytes | str) -> str:
    """A served label as text (gRPC and HTTP hand back bytes; numpy may hand back str)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def label_of(outputs: Mapping[str, Any], row: int) -> str:
    """Row ``row``'s label word from a reply's outputs: the :data:`LABEL` text of the scorer's models, or the
    :data:`IS_ANOMALOUS` boolean of the calibrated network (``outputs[name][row, 0]``)."""
    if IS_ANOMALOUS in outputs:
        return ANOMALOUS if bool(outputs[IS_ANOMALOUS][row, 0]) else NORMAL
    return label_text(outputs[LABEL][row, 0])


# ---------------------------------------------------------------------------------------------- networks
@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a deployed network, without the batch axis."""

    name: str
    datatype: str
    """Triton's name for the dtype: ``UINT8``, ``FP32`` or ``BYTES``."""
    dims: tuple[int, ...]


@dataclass(frozen=True)
class NetworkSpec:
    """The input and outputs of a deployed network (all batched on axis 0)."""

    input: TensorSpec
    outputs: tuple[TensorSpec, ...]

    @property
    def has_map(self) -> bool:
        """Whether the network returns an anomaly map (image models) or only a score (vector models)."""
        return any(o.name == RAW_MAP for o in self.outputs)

    @property
    def is_image(self) -> bool:
        """Whether the network takes camera images (and so gets the output profiles and encoded input)."""
        return self.input.name == IMAGE_INPUT

    @property
    def is_series(self) -> bool:
        """Whether the network scores every step of a time-series window (a 1-D map, plus intervals)."""
        dims = self.map_dims
        return dims is not None and len(dims) == 1

    @property
    def map_dims(self) -> tuple[int, ...] | None:
        """The raw map's dims without the batch axis, or ``None``."""
        return next((o.dims for o in self.outputs if o.name == RAW_MAP), None)


def image_network_spec(size: int) -> NetworkSpec:
    """Image detectors: uint8 RGB ``(N, S, S, 3)`` in, the raw score and map out."""
    return NetworkSpec(
        TensorSpec(IMAGE_INPUT, UINT8, (size, size, 3)),
        (TensorSpec(RAW_PRED, FP32, (1,)), TensorSpec(RAW_MAP, FP32, (1, size, size))),
    )


def calibrated_network_spec(size: int) -> NetworkSpec:
    """The calibrated network (``<model>_fast``): uint8 RGB in; the calibrated score, the decision and the raw score
    out, the score-only ensemble's outputs with the decision as :data:`IS_ANOMALOUS` instead of the label text."""
    return NetworkSpec(
        TensorSpec(IMAGE_INPUT, UINT8, (size, size, 3)),
        (TensorSpec(SCORE, FP32, (1,)), TensorSpec(IS_ANOMALOUS, BOOL, (1,)), TensorSpec(RAW_SCORE, FP32, (1,))),
    )


def vector_network_spec(length: int) -> NetworkSpec:
    """Vector detectors: float32 features ``(N, D)`` in, the raw score ``(N, 1)`` out."""
    return NetworkSpec(TensorSpec(VECTOR_INPUT, FP32, (length,)), (TensorSpec(RAW_PRED, FP32, (1,)),))


def signal_network_spec(steps: int, channels: int) -> NetworkSpec:
    """Time-series detectors reading the signal: float32 ``(N, T, C)`` in, the raw window score and the raw
    per-step scores ``(N, T)`` out."""
    return NetworkSpec(
        TensorSpec(SIGNAL_INPUT, FP32, (steps, channels)),
        (TensorSpec(RAW_PRED, FP32, (1,)), TensorSpec(RAW_MAP, FP32, (steps,))),
    )


def plot_network_spec(size: int, steps: int) -> NetworkSpec:
    """Time-series detectors reading the plot (the vision teacher): uint8 RGB ``(N, S, S, 3)`` in, the same raw
    outputs as :func:`signal_network_spec`. Served behind the renderer step, which takes the signal."""
    return NetworkSpec(
        TensorSpec(PLOT_INPUT, UINT8, (size, size, 3)),
        (TensorSpec(RAW_PRED, FP32, (1,)), TensorSpec(RAW_MAP, FP32, (steps,))),
    )


def signal_input_spec(steps: int, channels: int) -> TensorSpec:
    """What clients send a time-series detector: float32 windows ``(N, T, C)``."""
    return TensorSpec(SIGNAL_INPUT, FP32, (steps, channels))


def encoded_input_spec() -> TensorSpec:
    """The encoded-image ensembles' input."""
    return TensorSpec(ENCODED_INPUT, BYTES, (1,))


# ---------------------------------------------------------------------------------------------- models
#: The stats JSON's name inside the scorer's model folder (``<model>_scorer/stats.json``).
SCORER_STATS_FILE = "stats.json"


@dataclass(frozen=True)
class ModelNames:
    """Names of the models that serve one detector under the ensemble name ``name``."""

    name: str

    @property
    def onnx(self) -> str:
        """The network as ONNX (the one the ensembles use)."""
        return f"{self.name}_onnx"

    @property
    def torchscript(self) -> str:
        """The same network as TorchScript."""
        return f"{self.name}_torchscript"

    @property
    def scorer(self) -> str:
        """The Python-backend calibration step."""
        return f"{self.name}_scorer"

    @property
    def ensemble(self) -> str:
        """What clients call with decoded pixels."""
        return self.name

    @property
    def score_only(self) -> str:
        """The ensemble that returns score, label and raw score alone: no map is computed or sent."""
        return f"{self.name}_score"

    @property
    def map8(self) -> str:
        """The ensemble that returns the map as UINT8 0..255 (a quarter of the FP32 map's bytes)."""
        return f"{self.name}_map8"

    @property
    def fast(self) -> str:
        """The calibrated network: one ONNX model, pixels in, score and decision out, no ensemble and no Python
        step (the score-only path of image models on the NGC image)."""
        return f"{self.name}_fast"

    @property
    def decoder(self) -> str:
        """The Python-backend step that decodes encoded images (image models only)."""
        return f"{self.name}_decoder"

    @property
    def renderer(self) -> str:
        """The Python-backend step that draws a signal's plot for a plot-reading network (the vision teacher)."""
        return f"{self.name}_renderer"

    @property
    def encoded(self) -> str:
        """What clients call with encoded image files (PNG, JPEG, ...): decoder -> network -> scorer."""
        return f"{self.name}_encoded"

    @property
    def encoded_score(self) -> str:
        """Encoded image files in, the score alone out (a camera stream that needs no maps)."""
        return f"{self.name}_encoded_score"

    @property
    def networks(self) -> list[str]:
        """Both exports of the network."""
        return [self.onnx, self.torchscript]

    def profile(self, profile: str, *, encoded: bool = False) -> str:
        """The ensemble serving output ``profile`` (see :data:`PROFILES`), for pixels or for encoded files.

        Raises:
            ValueError: Encoded input has the ``full`` and ``score`` profiles only.
        """
        if encoded:
            if profile == MAP8_PROFILE:
                raise ValueError("encoded input has the 'full' and 'score' profiles only")
            return self.encoded_score if profile == SCORE_PROFILE else self.encoded
        return {FULL_PROFILE: self.ensemble, SCORE_PROFILE: self.score_only, MAP8_PROFILE: self.map8}[profile]

    def folders(self, *, image: bool, rendered: bool = False) -> list[str]:
        """Every model folder of the detector (image models add the output profiles and encoded input; a
        plot-reading time-series network adds its renderer)."""
        base = [self.onnx, self.torchscript, self.scorer, self.ensemble]
        extra = [self.score_only, self.map8, self.fast, self.decoder, self.encoded, self.encoded_score]
        return [*base, *extra] if image else [*base, self.renderer] if rendered else base
