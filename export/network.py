"""The network as ONNX and TorchScript, with a parity check against eager torch before anything is kept.

Scores that change after export are the most frequent complaint about anomaly-detection deploy paths, so an
export that does not reproduce the eager model on real images is an error, not a warning.
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

from training.inference import INPUT_NAME, OUTPUT_NAMES, DeployableDetector

log = logging.getLogger(__name__)

#: ONNX opset: supported by the NGC 24.10 image's ONNX Runtime (1.19, up to opset 21) and by torch's exporter.
OPSET = 17
#: Largest accepted difference between an exported model and eager torch, on raw scores and raw maps.
PARITY_ATOL = 1e-3


class ExportParityError(RuntimeError):
    """An exported network whose outputs differ from the eager model's."""


class _TupleOutput(nn.Module):
    """TorchScript and ONNX take plain tuples; the field order is :data:`OUTPUT_NAMES`."""

    def __init__(self, model: DeployableDetector) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(image)
        return out.pred_score, out.anomaly_map


def export_onnx(model: DeployableDetector, path: Path) -> Path:
    """Export to ONNX with a dynamic batch axis and the uint8 NHWC input.

    Args:
        model: The detector in eval mode.
        path: Where to write ``model.onnx`` (weights embedded, no external data file).

    Returns:
        ``path``.
    """
    size = model.image_size
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    axes = {INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)  # the TorchScript-based exporter's notice
        torch.onnx.export(
            _TupleOutput(model).eval(),
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return path


def export_torchscript(model: DeployableDetector, path: Path) -> Path:
    """Trace to TorchScript (what Triton's ``pytorch_libtorch`` backend loads).

    Args:
        model: The detector in eval mode.
        path: Where to write ``model.pt``.

    Returns:
        ``path``.
    """
    size = model.image_size
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracing is deprecated upstream but is what libtorch serving loads
        traced = torch.jit.trace(_TupleOutput(model).eval(), (example,), check_trace=False)
    traced.save(str(path))
    return path


@dataclass(frozen=True)
class ParityReport:
    """Largest absolute differences between an export and eager torch."""

    format: str
    max_abs_score: float
    max_abs_map: float

    def __str__(self) -> str:
        return f"{self.format}: max |diff| score {self.max_abs_score:.2e}, map {self.max_abs_map:.2e}"


def _compare(name: str, expected: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray]) -> ParityReport:
    for e, g in zip(expected, got, strict=True):
        if e.shape != g.shape:
            raise ExportParityError(f"{name}: output shape {g.shape} differs from eager {e.shape}")
    report = ParityReport(
        name, float(np.max(np.abs(expected[0] - got[0]))), float(np.max(np.abs(expected[1] - got[1])))
    )
    if not (report.max_abs_score <= PARITY_ATOL and report.max_abs_map <= PARITY_ATOL):
        raise ExportParityError(f"{report} exceeds the tolerance {PARITY_ATOL:g}; nothing was written")
    return report


@torch.no_grad()
def check_parity(
    model: DeployableDetector, images: np.ndarray, onnx_path: Path, torchscript_path: Path
) -> tuple[tuple[np.ndarray, np.ndarray], list[ParityReport]]:
    """Run both exports and eager torch on ``images`` and require them to agree.

    Args:
        model: The eager detector in eval mode.
        images: ``(N, S, S, 3)`` uint8 real images (at least 2, so a batch axis is exercised).
        onnx_path: The exported ONNX file.
        torchscript_path: The exported TorchScript file.

    Returns:
        The eager ``(scores (N, 1), maps (N, 1, S, S))`` and one :class:`ParityReport` per format.

    Raises:
        ExportParityError: A difference above :data:`PARITY_ATOL` or a shape mismatch.
    """
    x = torch.from_numpy(np.ascontiguousarray(images))
    eager = tuple(t.numpy() for t in model(x))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_out = tuple(session.run(list(OUTPUT_NAMES), {INPUT_NAME: images}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # libtorch serving still loads TorchScript
        scripted = torch.jit.load(str(torchscript_path), map_location="cpu")
    ts_out = tuple(t.numpy() for t in scripted(x))
    reports = [_compare("onnx", eager, onnx_out), _compare("torchscript", eager, ts_out)]
    for r in reports:
        log.info("parity %s", r)
    return eager, reports
