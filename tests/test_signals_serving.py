"""The time-series family end to end: a teacher and a distilled student trained on a small ECG set, their stats JSON,
exported into one repository, served by the real tritonserver, validated by the client, and bad windows refused."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from kdcore.contract import INTERVALS, MAP, PLOT_INPUT, SCORE, SIGNAL_INPUT, ModelNames
from kdcore.intervals import anomalous_intervals, intervals_from_json
from kdcore.stats import load_stats
from serving.embedded import TritonServer
from tests.conftest import SERIES_SMALL as SMALL
from tests.conftest import STUDENT, TEACHER
from training.runs import RunPaths
from training.signals.dataset import load_split, write_signal_dataset
from training.signals.train import (
    TEACHER_LOGITS_FILE,
    SignalTrainConfig,
    train_student,
)

pytestmark = pytest.mark.server
CLIENT = Path(__file__).resolve().parents[1] / "client" / "client.py"
PROTOCOLS = {"http": httpclient, "grpc": grpcclient}
def test_both_runs_write_the_projects_stats_json(series_runs: dict[str, Path]) -> None:
    for name, plotted in ((TEACHER, True), (STUDENT, False)):
        stats = load_stats(RunPaths(series_runs[name]).stats)
        assert stats.model.input_kind == "signal" and stats.model.input_size == 256 and stats.model.channels == 2
        assert (stats.model.plot_size is not None) == plotted
        assert stats.normalization is None and stats.pixel_calibration is not None
        for calibration in (stats.image_calibration, stats.pixel_calibration):
            assert calibration.apply(np.array([calibration.threshold]))[0] == np.float32(0.5)
        # Thresholds come from the validation split: as many samples as its windows / steps.
        validation = load_split(series_runs["data"], "validation")
        assert stats.image_threshold.num_samples == len(validation.labels)
        assert stats.pixel_threshold.num_samples == validation.labels.size
        test = stats.test_metrics
        assert all(0 <= v <= 1 for v in (test.pixel_auroc, test.pixel_auc_pr, test.vus_pr, test.msr))
    logits = np.load(series_runs[TEACHER] / TEACHER_LOGITS_FILE)["train"]
    assert logits.shape == load_split(series_runs["data"], "train").labels.shape


def test_a_student_refuses_a_teacher_trained_on_other_data(series_runs: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    write_signal_dataset(other, SMALL.model_copy(update={"seed": 3}))
    config = SignalTrainConfig(data_root=other, output=tmp_path / "run", epochs=1, lam=1.0,
                               teacher=series_runs[TEACHER])
    with pytest.raises(ValueError, match="other data"):
        train_student(config, progress=False)
    assert not (tmp_path / "run").exists()


def test_the_teacher_is_served_behind_its_renderer(series_server: TritonServer) -> None:
    repo = series_server.model_repository
    names = ModelNames(TEACHER)
    assert (repo / names.renderer / "1" / "kdcore" / "series_plot.py").is_file()
    ensemble = (repo / TEACHER / "config.pbtxt").read_text()
    assert ensemble.index(names.renderer) < ensemble.index(names.onnx) < ensemble.index(names.scorer)
    manifest = json.loads((repo / TEACHER / "validation" / "manifest.json").read_text())
    assert manifest["input"]["name"] == SIGNAL_INPUT and manifest["network_input"]["name"] == PLOT_INPUT
    assert not (repo / ModelNames(STUDENT).renderer).exists()


def test_client_passes_both_detectors_over_both_protocols(series_server: TritonServer) -> None:
    done = subprocess.run(
        [sys.executable, str(CLIENT), "-u", series_server.http_url, "-g", series_server.grpc_url,
         "-r", str(series_server.model_repository)], capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    passes = sorted(line for line in done.stdout.splitlines() if line.startswith("PASS: "))
    assert passes == [f"PASS: {STUDENT}", f"PASS: {TEACHER}"]
    assert "grpc: ecg_teacher_onnx" in done.stdout and "http: ecg_student_torchscript" in done.stdout


@contextlib.contextmanager
def _client(kind: str, server: TritonServer) -> Iterator:
    client = PROTOCOLS[kind].InferenceServerClient(server.url(kind))
    try:
        yield client
    finally:
        client.close()


def _infer(kind: str, server: TritonServer, model: str, windows: np.ndarray) -> dict[str, np.ndarray]:
    module = PROTOCOLS[kind]
    tensor = module.InferInput(SIGNAL_INPUT, list(windows.shape), "FP32")
    tensor.set_data_from_numpy(windows)
    outputs = [SCORE, MAP, INTERVALS]
    with _client(kind, server) as client:
        result = client.infer(model, [tensor], outputs=[module.InferRequestedOutput(o) for o in outputs])
    return {o: result.as_numpy(o) for o in outputs}


@pytest.mark.parametrize("kind", ["http", "grpc"])
@pytest.mark.parametrize("model", [TEACHER, STUDENT])
def test_bad_windows_get_clear_errors_and_the_server_goes_on(series_server: TritonServer, series_runs: dict[str, Path],
                                                             model: str, kind: str) -> None:
    good = load_split(series_runs["data"], "test").signals[:3].astype(np.float32)
    nan = good.copy()
    nan[1, 40, 0] = np.nan
    cases = {
        "wrong length": (good[:, :100], r"shape|dims|256"),
        "wrong channel count": (np.concatenate([good, good[..., :1]], 2), r"shape|dims"),
        "NaN": (nan, r"NaN"),
    }
    for what, (windows, message) in cases.items():
        with pytest.raises(InferenceServerException, match=message):
            _infer(kind, series_server, model, np.ascontiguousarray(windows))
    served = _infer(kind, series_server, model, good)  # still up, and right
    assert served[MAP].shape == (3, 256) and np.all((served[MAP] >= 0) & (served[MAP] <= 1))
    for row, text in zip(served[MAP], served[INTERVALS][:, 0]):
        assert intervals_from_json(text) == anomalous_intervals(row)


def test_kd_health_probes_every_step_of_both_detectors(series_server: TritonServer, capsys) -> None:
    """The liveness check the supervisor and the container run passes on both detectors (the teacher's networks are
    probed with its plots, its renderer alone must give the exact plot)."""
    from client.health import main as health_main

    repo = str(series_server.model_repository)
    for protocol in ("http", "grpc"):
        assert health_main(["-u", series_server.url(protocol), "-i", protocol, "-r", repo]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("HEALTHY: ") for line in lines), lines
