"""The calibrated network ``<model>_fast``: the scorer's formula in the ONNX graph, held to the scorer within 1e-6."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export.calibrated import calibration_model, check_calibrated, export_calibrated
from export.network import ExportParityError, export_onnx
from export.repository import ExportResult
from kdcore.contract import CALIBRATED_ATOL, IMAGE_INPUT, IS_ANOMALOUS, RAW_PRED, RAW_SCORE, SCORE, OPSET
from kdcore.manifest import MANIFEST_FILE, Manifest, validation_folder
from kdcore.scorer import Scorer
from kdcore.stats import Calibration, load_stats
from training.checkpoint import load_deployable
from training.train import TrainResult


def _run(path: Path, inputs: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(outputs, {IMAGE_INPUT: inputs})


def test_every_image_detector_gets_a_calibrated_network_that_agrees_with_the_scorer(
    exported_all: list[ExportResult],
) -> None:
    """On the stored validation images, ``<model>_fast`` returns the network's raw score, the scorer's calibrated
    score of it within 1e-6 and the scorer's label as its boolean; vector detectors get none."""
    for result in exported_all:
        repo, names = result.repository, result.names
        manifest = Manifest.load(validation_folder(repo, names.name) / MANIFEST_FILE)
        if not manifest.input.datatype == "UINT8":
            assert manifest.profiles.fast is None and not (repo / names.fast).exists(), names.name
            continue
        assert manifest.profiles.fast == names.fast and names.fast in manifest.served_models
        config = (repo / names.fast / "config.pbtxt").read_text()
        # One ONNX model: the NGC image runs it in its C++ ONNX Runtime backend, no ensemble and no Python.
        assert 'platform: "onnxruntime_onnx"' in config and "ensemble" not in config and "python" not in config
        assert 'name: "is_anomalous" data_type: TYPE_BOOL' in config
        inputs = np.load(repo / names.name / "validation" / "samples.npz")["inputs"]
        raw = _run(repo / names.onnx / "1" / "model.onnx", inputs, [RAW_PRED])[0]
        score, decided, echoed = _run(repo / names.fast / "1" / "model.onnx", inputs, [SCORE, IS_ANOMALOUS, RAW_SCORE])
        scored = Scorer(load_stats(repo / names.scorer / "stats.json"))(raw)
        np.testing.assert_allclose(echoed, raw, rtol=0, atol=CALIBRATED_ATOL, err_msg=names.name)
        np.testing.assert_allclose(score, scored.score, rtol=0, atol=CALIBRATED_ATOL, err_msg=names.name)
        np.testing.assert_array_equal(decided, scored.label == b"anomalous", err_msg=names.name)
        assert decided.dtype == np.bool_ and score.dtype == np.float32


def test_calibration_graph_has_the_calibrations_properties(exported_all: list[ExportResult]) -> None:
    """The appended graph alone, for every exported model: the threshold maps to exactly 0.5, one scale below and
    above to 0.1 and 0.9, the output stays in [0, 1] and never decreases, and the decision is ``score >= 0.5``."""
    for result in exported_all:
        stats = load_stats(result.repository / result.names.scorer / "stats.json")
        cal = stats.image_calibration
        session = ort.InferenceSession(calibration_model(cal, opset=OPSET, ir_version=8).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        raw = np.linspace(cal.threshold - 30 * cal.scale, cal.threshold + 30 * cal.scale, 6001, dtype=np.float32)
        raw = np.concatenate([raw, np.float32([cal.threshold, cal.threshold - cal.scale, cal.threshold + cal.scale])])
        score, decided = session.run([SCORE, IS_ANOMALOUS], {RAW_PRED: raw[:, None]})
        assert score[-3, 0] == np.float32(0.5), result.names.name
        np.testing.assert_allclose(score[-2:, 0], [0.1, 0.9], atol=1e-6)
        assert score.min() >= 0 and score.max() <= 1 and np.all(np.diff(score[:6001, 0]) >= 0)
        np.testing.assert_array_equal(decided, score >= 0.5)


def test_the_steps_are_the_documented_formula() -> None:
    """``Calibration.steps`` (what numpy and the graph both run) is the stats JSON's tanh formula."""
    cal = Calibration(threshold=1.7, scale=0.3)
    raw = np.linspace(-5, 8, 2001)
    closed = 0.5 * (1 + np.tanh(cal.gain * (raw - cal.threshold) / (2 * cal.scale)))
    np.testing.assert_allclose(cal.apply(raw), closed, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(cal.decide(raw), raw.astype(np.float32) >= np.float32(cal.threshold))
    assert cal.apply(np.array([1e30, -1e30])).tolist() == [1.0, 0.0]  # no NaN at the extremes
    assert math.isclose(float(cal.apply(np.array([cal.threshold]))[0]), 0.5, abs_tol=0)


def test_a_graph_calibrated_otherwise_is_refused(trained_run: TrainResult, tmp_path: Path) -> None:
    """``check_calibrated`` holds the file to the stats JSON: a graph built from another threshold is an error."""
    model, spec, stats = load_deployable(trained_run.paths.root)
    network = export_onnx(model, spec, tmp_path / "network.onnx")
    cal = stats.image_calibration
    inputs = np.load(trained_run.paths.samples)["inputs"]
    good = export_calibrated(network, cal, tmp_path / "good.onnx")
    figures = check_calibrated(cal, network, good, inputs)
    assert max(figures.values()) <= CALIBRATED_ATOL
    shifted = cal.model_copy(update={"threshold": cal.threshold + cal.scale})
    bad = export_calibrated(network, shifted, tmp_path / "bad.onnx")
    with pytest.raises(ExportParityError, match="disagrees with the scorer"):
        check_calibrated(cal, network, bad, inputs)
