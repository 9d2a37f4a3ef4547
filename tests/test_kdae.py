"""KD-AE on scikit-learn digits: splits, networks, student training, the run folder and the ONNX student."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file
from scipy.stats import spearmanr

from export.network import export_onnx
from kdcore.contract import RAW_PRED, VECTOR_INPUT, vector_network_spec
from kdcore.stats import load_stats
from training.kdae import (
    DenseAutoencoder,
    KDAEConfig,
    KDAEResult,
    KDAEStudentScorer,
    StudentMLP,
    load_kdae_student,
    load_kdae_teacher,
    make_digit_splits,
    perturb_normals,
    student_loss,
    train_kdae,
)
from training.kdae.__main__ import build_parser
from training.kdae.data import digits_fingerprint
from training.runs import RunPaths

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> KDAEResult:
    """Digit 0 trained end to end with the default settings."""
    return train_kdae(KDAEConfig(digit=0, seed=0, output=tmp_path_factory.mktemp("kdae") / "digit0"))


def test_splits_are_disjoint_deterministic_and_sized() -> None:
    s = make_digit_splits(3, seed=0)
    parts = [s.train_index, s.holdout_index, s.val_index, s.test_index]
    everything = np.concatenate(parts)
    assert np.unique(everything).size == everything.size == 1797
    n_normal = len(s.train) + len(s.holdout) + int((s.val_y == 0).sum()) + int((s.test_y == 0).sum())
    assert len(s.train) == round(0.55 * n_normal) and len(s.holdout) == round(0.10 * n_normal)
    n_anomalous = int(s.val_y.sum() + s.test_y.sum())
    assert int(s.val_y.sum()) == round(0.4 * n_anomalous)
    assert s.train.dtype == np.float32 and s.train.shape[1] == 64 and 0 <= s.train.min() and s.train.max() <= 1
    again = make_digit_splits(3, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, [again.train_index, again.holdout_index,
                                                            again.val_index, again.test_index], strict=True))
    assert not np.array_equal(make_digit_splits(3, seed=1).train_index, s.train_index)
    assert digits_fingerprint(3) == digits_fingerprint(3) != digits_fingerprint(4)


def test_shapes_and_perturbations() -> None:
    x = torch.from_numpy(make_digit_splits(0, seed=0).train[:5])
    teacher, student = DenseAutoencoder(), StudentMLP()
    assert teacher(x).shape == (5, 64) and teacher.reconstruction_mse(x).shape == (5,)
    assert student(x).shape == (5, 1) and KDAEStudentScorer(student)(x).shape == (5, 1)
    rng = np.random.default_rng(0)
    p = perturb_normals(x.numpy(), rng)
    assert p.shape == (5, 64) and p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1
    assert not np.array_equal(p, x.numpy())


def test_student_loss_decreases() -> None:
    torch.manual_seed(0)
    x = make_digit_splits(0, seed=0).train
    batch = torch.from_numpy(np.concatenate([x, perturb_normals(x, np.random.default_rng(0))]))
    teacher, student = DenseAutoencoder().eval(), StudentMLP()
    opt = torch.optim.Adam(student.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        loss = student_loss(student, teacher, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is None for p in teacher.parameters())


def test_run_folder_and_stats(run: KDAEResult) -> None:
    paths = RunPaths(run.paths.root)
    for p in (paths.weights, paths.config, paths.stats, paths.samples, paths.root / "teacher.safetensors"):
        assert p.is_file(), p
    stats = load_stats(paths.stats, input_size=64, backbone="mlp")
    assert stats.model.method == "kdae_vector" and stats.model.input_kind == "vector"
    assert stats.normalization is None and stats.pixel_scores is None and stats.pixel_calibration is None
    assert stats.test_metrics.image_auroc > 0.85
    assert stats.test_metrics.pixel_auroc is None and stats.test_metrics.image_f1 is not None
    assert stats.validation_metrics.num_anomalous > 0 and stats.image_threshold.method.value == "f1_optimal"
    assert stats.image_calibration.threshold == stats.image_threshold.value
    assert stats.training.dataset.startswith("sklearn.datasets.load_digits")
    assert len(stats.training.dataset_fingerprint) == 64
    assert stats.model.parameters == sum(p.numel() for p in run.student.parameters())
    assert KDAEConfig.model_validate(json.loads(paths.config.read_text())) == KDAEConfig(
        digit=0, seed=0, output=paths.root
    )
    samples = np.load(paths.samples)
    assert samples["inputs"].dtype == np.float32 and samples["inputs"].shape == (6, 64)
    assert samples["labels"].tolist() == [0, 0, 0, 1, 1, 1] and len(samples["names"]) == 6
    assert set(load_file(str(paths.weights))) == set(run.student.state_dict())


def test_reloaded_student_and_teacher_reproduce_scores(run: KDAEResult) -> None:
    x = torch.from_numpy(run.fitted.splits.test_x[:20])
    with torch.no_grad():
        assert torch.equal(load_kdae_student(run.paths.root)(x), run.student(x))
        assert torch.equal(load_kdae_teacher(run.paths.root).reconstruction_mse(x),
                           run.teacher.reconstruction_mse(x))


def test_student_ranks_like_the_teacher(run: KDAEResult) -> None:
    test_x = run.fitted.splits.test_x
    rho = spearmanr(run.fitted.student_scores(test_x), run.fitted.teacher_scores(test_x))[0]
    assert rho > 0.7


def test_student_onnx_matches_eager(run: KDAEResult, tmp_path) -> None:
    path = export_onnx(run.student, vector_network_spec(run.student.input_size), tmp_path / "student.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [VECTOR_INPUT] == ["vector"]
    assert [o.name for o in session.get_outputs()] == [RAW_PRED] == ["pred_score"]
    x = run.fitted.splits.test_x[:7]  # a batch size other than the export example's
    (got,) = session.run([RAW_PRED], {VECTOR_INPUT: x})
    with torch.no_grad():
        eager = run.student(torch.from_numpy(x)).numpy()
    assert got.shape == (7, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, eager, atol=1e-5, rtol=0)


def test_generic_exporter_takes_the_student(run: KDAEResult, tmp_path) -> None:
    from export.network import check_parity, export_onnx, export_torchscript
    from training.checkpoint import load_deployable

    model, spec, stats = load_deployable(run.paths.root)
    assert stats.model.input_kind == "vector" and spec.input.name == "vector"
    onnx_path = export_onnx(model, spec, tmp_path / "model.onnx")
    ts_path = export_torchscript(model, spec, tmp_path / "model.pt")
    (scores,), reports = check_parity(model, spec, run.fitted.splits.test_x[:5], onnx_path, ts_path)
    assert scores.shape == (5, 1) and len(reports) == 2


def test_kd_train_trains_the_epochs_and_batch_size_it_is_given(tmp_path) -> None:
    from training.cli import main

    out = tmp_path / "digit1"
    argv = ["--method", "kdae_vector", "--category", "1", "--epochs", "3", "--batch-size", "64", "--output", str(out)]
    assert main(argv) == 0
    stats = load_stats(RunPaths(out).stats)
    assert stats.training.epochs == 3 and stats.training.batch_size == 64
    history = json.loads(RunPaths(out).history.read_text())
    for network in ("teacher", "student"):
        assert [h["epoch"] for h in history if h["network"] == network] == [1, 2, 3]


def test_kd_train_keeps_kdae_defaults_and_refuses_an_image_size(tmp_path, capsys) -> None:
    from training.cli import kdae_config, main
    from training.config import TrainConfig

    plain = kdae_config(TrainConfig(method="kdae_vector", category="4", output=tmp_path))
    assert plain == KDAEConfig(digit=4, output=tmp_path)  # no --epochs / --batch-size: KD-AE's own defaults
    out = tmp_path / "sized"
    assert main(["--method", "kdae_vector", "--category", "4", "--image-size", "64", "--output", str(out)]) == 2
    assert "--image-size" in capsys.readouterr().err
    assert not out.exists()


def test_cli_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--digit", "--seed", "--epochs-teacher", "--epochs-student", "--lr", "--batch-size", "--output",
                 "--all-digits", "--threads"):
        assert flag in text
    assert build_parser().parse_args(["--digit", "3", "--output", "runs/kdae_digits"]).digit == 3
    with pytest.raises(Exception):
        KDAEConfig(digit=0, unknown=1)
