"""Shared fixtures: a small real dataset, a really trained run, its exported repository and a real server.

Everything is real and small: the demo data at 64 px, a few epochs of RD4AD on the pretrained EfficientNet-Lite0
teacher, the real exporter, and the real tritonserver binary on free loopback ports.
"""

from __future__ import annotations

import contextlib
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from export.repository import ExportResult, export_runs
from serving.embedded import TritonServer, free_port
from training.config import TrainConfig
from training.demo_data import write_demo_dataset
from training.kdae import KDAEConfig, train_kdae
from training.methods import Method
from training.signals.dataset import SignalDataConfig, write_signal_dataset
from training.signals.train import SignalTrainConfig, TeacherTrainConfig, train_student, train_teacher
from training.train import TrainResult, train

IMAGE_SIZE = 64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Small networks gain nothing from a second thread, and on a busy machine it costs a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo dataset; returns the data root (category ``brick``)."""
    root = tmp_path_factory.mktemp("data")
    write_demo_dataset(root, "brick", seed=0, image_size=IMAGE_SIZE, n_train=32, n_test_good=12, n_per_defect=5)
    return root


@pytest.fixture(scope="session")
def trained_run(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """RD4AD trained for a few epochs on the demo data."""
    config = TrainConfig(
        data_root=demo_root,
        category="brick",
        output=tmp_path_factory.mktemp("runs") / "demo",
        image_size=IMAGE_SIZE,
        epochs=6,
        batch_size=8,
        eval_every=2,
        seed=0,
    )
    return train(config, progress=False)


@pytest.fixture(scope="session")
def method_runs(trained_run: TrainResult, demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every other detector, briefly trained: ensemble name -> run folder (RD4AD is ``trained_run``)."""
    root = tmp_path_factory.mktemp("method_runs")
    common = dict(data_root=demo_root, category="brick", image_size=IMAGE_SIZE, epochs=3, batch_size=8, eval_every=3)
    runs = {
        "ad_inference_student": TrainConfig(method=Method.STUDENT, teacher_run=trained_run.paths.root,
                                            output=root / "student",
                                            # 64 px leaves the student an 8x8 grid: it needs more, faster steps.
                                            **{**common, "epochs": 40, "eval_every": 4, "lr": 0.01}),
        "ad_inference_multiteacher": TrainConfig(method=Method.MULTITEACHER, output=root / "multiteacher", **common),
        "ad_inference_mkd": TrainConfig(method=Method.MKD, output=root / "mkd", **common),
    }
    paths = {name: train(config, progress=False).paths.root for name, config in runs.items()}
    paths["kdae_digits"] = train_kdae(KDAEConfig(digit=0, output=root / "kdae", epochs_teacher=60, epochs_student=40)).paths.root
    return paths


@pytest.fixture(scope="session")
def exported_all(
    trained_run: TrainResult, method_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> list[ExportResult]:
    """RD4AD (``ad_inference``) and every other detector exported into one fresh model repository."""
    runs = [(trained_run.paths.root, "ad_inference"), *((path, name) for name, path in method_runs.items())]
    return export_runs(runs, tmp_path_factory.mktemp("repo") / "model_repository", threads=1)


@pytest.fixture(scope="session")
def exported(exported_all: list[ExportResult]) -> ExportResult:
    """The RD4AD part of the repository."""
    return exported_all[0]


@contextlib.contextmanager
def serving(repository: Path, workdir: Path) -> Iterator[TritonServer]:
    """The real tritonserver serving ``repository`` on free loopback ports for the block; a clean stop is asserted."""
    srv = TritonServer(
        repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        workdir=workdir,
        log_path=workdir / "server.log",
    )
    srv.start()
    try:
        srv.wait_ready(timeout=120)
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, f"tritonserver did not shut down cleanly (exit {code}):\n{srv.log_tail()}"


@pytest.fixture(scope="session")
def server(exported: ExportResult, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """The real tritonserver serving the exported repository on free loopback ports."""
    with serving(exported.repository, tmp_path_factory.mktemp("triton")) as srv:
        yield srv


@pytest.fixture(scope="session")
def base_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the project's base install, ``pip install <repo>`` without extras (what the
    client image and the server image install); returns its ``bin`` folder. Packages come from PyPI, or pip's
    cache after the first run."""
    env = tmp_path_factory.mktemp("base-venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(env)
    done = subprocess.run(
        [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
        capture_output=True, text=True, timeout=1200, cwd=env,
    )
    assert done.returncode == 0, f"pip install of the base failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return env / "bin"


#: Reliability figures recorded by tests/test_reliability.py and tests/test_self_healing.py, printed at the end.
RELIABILITY: dict[str, dict[str, int]] = {}


@pytest.fixture(scope="session")
def reliability() -> dict[str, dict[str, int]]:
    """Where reliability tests record what they tried: ``{test: {"inputs": n, "requests": n, ...}}``."""
    return RELIABILITY


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the reliability figures: inputs tried, requests sent, faults injected, failures seen."""
    if not RELIABILITY:
        return
    terminalreporter.section("reliability figures")
    keys = ("inputs", "requests", "faults", "failures")
    terminalreporter.write_line(f"{'test':72s} " + " ".join(f"{k:>9s}" for k in keys))
    for name, figures in sorted(RELIABILITY.items()):
        more = ", ".join(f"{k} {v}" for k, v in figures.items() if k not in keys)  # e.g. times to recover
        terminalreporter.write_line(f"{name:72s} " + " ".join(f"{figures.get(k, 0):9d}" for k in keys)
                                    + (f"   {more}" if more else ""))
    totals = {k: sum(f.get(k, 0) for f in RELIABILITY.values()) for k in keys}
    terminalreporter.write_line(f"{'total':72s} " + " ".join(f"{totals[k]:9d}" for k in keys))


# ---------------------------------------------------------------------------------------------- time series
TEACHER, STUDENT = "ecg_teacher", "ecg_student"
#: Small, with the two kinds a small model learns in seconds (the served checks want a model that separates).
SERIES_SMALL = SignalDataConfig(records={"train": 4, "validation": 1, "test": 1}, windows_per_record=20, anomaly_fraction=0.5,
                         seed=2, plots=False, kinds=("flatline", "amplitude_drop"))


@pytest.fixture(scope="session")
def series_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The time-series family: a teacher (4 epochs of its head) and a student distilled from it (lam 0.5), on a small set."""
    root = tmp_path_factory.mktemp("series")
    write_signal_dataset(root / "ecg", SERIES_SMALL)
    teacher = root / "teacher"
    train_teacher(TeacherTrainConfig(data_root=root / "ecg", output=teacher, epochs=4, batch_size=16), progress=False)
    student = root / "student"
    train_student(SignalTrainConfig(data_root=root / "ecg", output=student, epochs=15, batch_size=16, hidden=32,
                                    lr=1e-2, lam=0.5, teacher=teacher), progress=False)
    return {"data": root / "ecg", TEACHER: teacher, STUDENT: student}


@pytest.fixture(scope="session")
def series_server(series_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = tmp_path_factory.mktemp("series_repo") / "model_repository"
    export_runs([(series_runs[TEACHER], TEACHER), (series_runs[STUDENT], STUDENT)], repo)
    with serving(repo, tmp_path_factory.mktemp("series_triton")) as server:
        yield server
