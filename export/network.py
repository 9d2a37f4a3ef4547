"""The network as ONNX and TorchScript, with a parity check against eager torch before anything is kept.

Scores that change after export are the most frequent complaint about anomaly-detection deploy paths, so an
export that does not reproduce the eager model on real inputs is an error, not a warning.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from kdcore.contract import IMAGE_INPUT, OPSET, PLOT_INPUT, SIGNAL_INPUT, UINT8, VECTOR_INPUT, NetworkSpec

log = logging.getLogger(__name__)

#: Largest accepted difference between an exported model and eager torch, on raw scores and raw maps.
PARITY_ATOL = 1e-3


class ExportParityError(RuntimeError):
    """An exported network whose outputs differ from the eager model's."""


class _TupleOutput(nn.Module):
    """TorchScript and ONNX take plain tuples, in the spec's output order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.model(x)
        return (out,) if isinstance(out, Tensor) else tuple(out)


class _ImageInput(_TupleOutput):
    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        return super().forward(image)


class _VectorInput(_TupleOutput):
    def forward(self, vector: Tensor) -> tuple[Tensor, ...]:
        return super().forward(vector)


class _SignalInput(_TupleOutput):
    def forward(self, signal: Tensor) -> tuple[Tensor, ...]:
        return super().forward(signal)


class _PlotInput(_TupleOutput):
    def forward(self, plot: Tensor) -> tuple[Tensor, ...]:
        return super().forward(plot)


#: Triton's PyTorch backend binds inputs to ``forward``'s argument names, so each input name needs its own
#: wrapper whose argument carries it (the stand-in backend binds by position, which these satisfy too).
_TORCHSCRIPT_WRAPPERS: dict[str, type[_TupleOutput]] = {
    IMAGE_INPUT: _ImageInput, VECTOR_INPUT: _VectorInput, SIGNAL_INPUT: _SignalInput, PLOT_INPUT: _PlotInput,
}


def example_input(spec: NetworkSpec, batch: int = 2) -> Tensor:
    """Zeros of the spec's input shape and dtype, for tracing."""
    dtype = torch.uint8 if spec.input.datatype == UINT8 else torch.float32
    return torch.zeros(batch, *spec.input.dims, dtype=dtype)


def export_onnx(model: nn.Module, spec: NetworkSpec, path: Path) -> Path:
    """Export to ONNX with a dynamic batch axis.

    Args:
        model: The deployable network in eval mode (preprocessing included).
        spec: Its input and output names and shapes.
        path: Where to write ``model.onnx`` (weights embedded, no external data file).

    Returns:
        ``path``.
    """
    names = [spec.input.name, *(o.name for o in spec.outputs)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)  # the TorchScript-based exporter's notice
        torch.onnx.export(
            _TupleOutput(model).eval(),
            (example_input(spec),),
            str(path),
            input_names=[spec.input.name],
            output_names=[o.name for o in spec.outputs],
            dynamic_axes={n: {0: "batch"} for n in names},
            opset_version=OPSET,
            dynamo=False,
        )
    return path


def export_torchscript(model: nn.Module, spec: NetworkSpec, path: Path) -> Path:
    """Trace to TorchScript (what Triton's ``pytorch_libtorch`` backend loads).

    Args:
        model: The deployable network in eval mode.
        spec: Its input and output names and shapes.
        path: Where to write ``model.pt``.

    Returns:
        ``path``.
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracing is deprecated upstream but is what libtorch serving loads
        wrapper = _TORCHSCRIPT_WRAPPERS[spec.input.name](model).eval()
        traced = torch.jit.trace(wrapper, (example_input(spec),), check_trace=False)
    traced.save(str(path))
    return path


@dataclass(frozen=True)
class ParityReport:
    """Largest absolute difference per output between an export and eager torch."""

    format: str
    max_abs: dict[str, float]

    def __str__(self) -> str:
        return f"{self.format}: max |diff| " + ", ".join(f"{k} {v:.2e}" for k, v in self.max_abs.items())


def _compare(fmt: str, spec: NetworkSpec, expected: tuple[np.ndarray, ...], got: tuple[np.ndarray, ...]) -> ParityReport:
    diffs = {}
    for out, e, g in zip(spec.outputs, expected, got, strict=True):
        if e.shape != g.shape:
            raise ExportParityError(f"{fmt}: output '{out.name}' has shape {g.shape}, eager {e.shape}")
        diffs[out.name] = float(np.max(np.abs(e - g))) if e.size else 0.0
    report = ParityReport(fmt, diffs)
    if not all(d <= PARITY_ATOL for d in diffs.values()):
        raise ExportParityError(f"{report} exceeds the tolerance {PARITY_ATOL:g}; nothing was written")
    return report


@torch.no_grad()
def check_parity(
    model: nn.Module, spec: NetworkSpec, inputs: np.ndarray, onnx_path: Path, torchscript_path: Path
) -> tuple[tuple[np.ndarray, ...], list[ParityReport]]:
    """Run both exports and eager torch on ``inputs`` and require them to agree.

    Args:
        model: The eager network in eval mode.
        spec: Its input and output names.
        inputs: A batch of real inputs (at least 2, so a batch axis is exercised).
        onnx_path: The exported ONNX file.
        torchscript_path: The exported TorchScript file.

    Returns:
        The eager outputs (in spec order) and one :class:`ParityReport` per format.

    Raises:
        ExportParityError: A difference above :data:`PARITY_ATOL` or a shape mismatch.
    """
    x = torch.from_numpy(np.ascontiguousarray(inputs))
    eager = tuple(t.numpy() for t in _TupleOutput(model).eval()(x))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_out = tuple(session.run([o.name for o in spec.outputs], {spec.input.name: inputs}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # libtorch serving still loads TorchScript
        scripted = torch.jit.load(str(torchscript_path), map_location="cpu")
    ts_out = tuple(t.numpy() for t in scripted(x))
    reports = [_compare("onnx", spec, eager, onnx_out), _compare("torchscript", spec, eager, ts_out)]
    for r in reports:
        log.info("parity %s", r)
    return eager, reports
