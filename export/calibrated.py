"""The calibrated network: the exported ONNX graph with the stats JSON's calibration and decision appended.

``<model>_fast`` is one ONNX model, pixels in, the calibrated score, the decision (``BOOL``) and the raw score
out: on the NGC image a score-only request runs in Triton's C++ ONNX Runtime backend alone, with no ensemble
step and no Python; on the embedded server it is one stand-in hop instead of three. The formula is not written
here: the graph's nodes are :meth:`kdcore.stats.Calibration.steps` and :meth:`~kdcore.stats.Calibration.decision`,
the very steps the Python scorer runs with numpy, and :func:`check_calibrated` holds every export to the scorer
within :data:`CALIBRATED_ATOL` before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, compose, helper, numpy_helper

from export.network import ExportParityError
from kdcore.contract import CALIBRATED_ATOL, IMAGE_INPUT, IS_ANOMALOUS, RAW_PRED, RAW_SCORE, SCORE
from kdcore.stats import Calibration, Step

#: The batch axis's name in the appended graph (the network's own, so the merged model keeps one symbol).
_BATCH = "batch"


def _nodes(steps: tuple[Step, ...], source: str, target: str, prefix: str) -> tuple[list, list]:
    """ONNX nodes (and their float32 constants) computing ``steps`` from tensor ``source`` into ``target``."""
    nodes, constants, current = [], [], source
    for i, (op, constant) in enumerate(steps):
        out = target if i == len(steps) - 1 else f"{prefix}/{i}_{op}"
        operands = [current]
        if constant is not None:
            name = f"{prefix}/{i}_{op}_constant"
            constants.append(numpy_helper.from_array(np.asarray(constant, dtype=np.float32), name))
            operands.append(name)
        nodes.append(helper.make_node(op, operands, [out], name=f"{prefix}/{i}_{op}"))
        current = out
    return nodes, constants


def calibration_model(calibration: Calibration, *, opset: int, ir_version: int) -> onnx.ModelProto:
    """The calibration alone as an ONNX model: raw score ``(N, 1)`` in, score, decision and raw score out.

    Kept separate so that its properties can be checked on any raw score (:func:`check_calibrated`), then merged
    after the network (:func:`calibrated_network`).
    """
    score_nodes, score_constants = _nodes(calibration.steps(), RAW_PRED, SCORE, "calibration/score")
    decide_nodes, decide_constants = _nodes((calibration.decision(),), RAW_PRED, IS_ANOMALOUS, "calibration/decision")
    echo = helper.make_node("Identity", [RAW_PRED], [RAW_SCORE], name="calibration/raw_score")
    column = [_BATCH, 1]
    graph = helper.make_graph(
        [*score_nodes, *decide_nodes, echo], "calibration",
        [helper.make_tensor_value_info(RAW_PRED, TensorProto.FLOAT, column)],
        [helper.make_tensor_value_info(SCORE, TensorProto.FLOAT, column),
         helper.make_tensor_value_info(IS_ANOMALOUS, TensorProto.BOOL, column),
         helper.make_tensor_value_info(RAW_SCORE, TensorProto.FLOAT, column)],
        initializer=[*score_constants, *decide_constants],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version,
                              producer_name="kd-export")
    onnx.checker.check_model(model)
    return model


def _tail_for(network: onnx.ModelProto, calibration: Calibration) -> onnx.ModelProto:
    """:func:`calibration_model` at the network's own opset and IR version (what merging it after the network needs)."""
    opset = next(o.version for o in network.opset_import if o.domain in ("", "ai.onnx"))
    return calibration_model(calibration, opset=opset, ir_version=network.ir_version)


def calibrated_network(network: onnx.ModelProto, calibration: Calibration) -> onnx.ModelProto:
    """The network with the calibration appended to its raw score; its raw map is no longer an output."""
    tail = _tail_for(network, calibration)
    merged = compose.merge_models(network, tail, io_map=[(RAW_PRED, RAW_PRED)],
                                  outputs=[SCORE, IS_ANOMALOUS, RAW_SCORE], producer_name="kd-export")
    onnx.checker.check_model(merged)
    return merged


def export_calibrated(network_path: Path, calibration: Calibration, path: Path) -> Path:
    """Write the calibrated network of the ONNX file ``network_path`` to ``path`` (weights embedded)."""
    onnx.save(calibrated_network(onnx.load(str(network_path)), calibration), str(path))
    return path


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def check_calibrated(calibration: Calibration, network_path: Path, calibrated_path: Path,
                     inputs: np.ndarray) -> dict[str, float]:
    """Hold a calibrated network to the Python scorer; raises :class:`ExportParityError` on any difference.

    Two checks: (1) the appended graph alone, on raw scores spread around the threshold, equals
    :meth:`Calibration.apply` and :meth:`Calibration.decide` within :data:`CALIBRATED_ATOL`, maps the threshold
    to exactly 0.5, stays in [0, 1] and never decreases; (2) the whole calibrated network, on real images,
    gives the network's raw score, and the scorer's calibration and decision of it.

    Returns:
        The largest differences found: calibrated scores on the sweep (``sweep``) and on the images (``images``),
        raw scores on the images (``raw``).
    """
    scale, steps = float(calibration.scale), 4001
    sweep = np.concatenate([
        np.linspace(calibration.threshold - 20 * scale, calibration.threshold + 20 * scale, steps),
        [calibration.threshold, -1e30, 1e30],
    ]).astype(np.float32)[:, None]
    tail = _session(_tail_for(onnx.load(str(network_path), load_external_data=False), calibration))
    score, decided, raw = tail.run([SCORE, IS_ANOMALOUS, RAW_SCORE], {RAW_PRED: sweep})
    diff = float(np.max(np.abs(score - calibration.apply(sweep))))
    at_threshold = score[np.flatnonzero(sweep[:, 0] == np.float32(calibration.threshold))[0], 0]
    problems = []
    if diff > CALIBRATED_ATOL:
        problems.append(f"score differs from the scorer's by {diff:.2e}")
    if not np.array_equal(decided, calibration.decide(sweep)):
        problems.append("the decision differs from the scorer's")
    if at_threshold != np.float32(0.5):
        problems.append(f"the threshold maps to {at_threshold!r}, not 0.5")
    if not (np.all((score >= 0) & (score <= 1)) and np.all(np.diff(score[:steps, 0]) >= 0)):
        problems.append("scores leave [0, 1] or decrease as the raw score grows")
    if not np.array_equal(raw, sweep):
        problems.append("the raw score is not echoed unchanged")

    want_raw = _session(network_path).run([RAW_PRED], {IMAGE_INPUT: inputs})[0]
    score, decided, raw = _session(calibrated_path).run([SCORE, IS_ANOMALOUS, RAW_SCORE], {IMAGE_INPUT: inputs})
    raw_diff = float(np.max(np.abs(raw - want_raw)))
    network_diff = float(np.max(np.abs(score - calibration.apply(raw))))
    if raw_diff > CALIBRATED_ATOL:
        problems.append(f"raw score differs from the network's by {raw_diff:.2e}")
    if network_diff > CALIBRATED_ATOL or not np.array_equal(decided, calibration.decide(raw)):
        problems.append(f"on the images, score differs from the scorer's by {network_diff:.2e} or the decision does")
    if problems:
        raise ExportParityError(f"{calibrated_path}: the calibrated network disagrees with the scorer: "
                                + "; ".join(problems) + "; nothing was written")
    return {"sweep": diff, "images": network_diff, "raw": raw_diff}
