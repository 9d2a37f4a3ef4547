"""The score-regressing student: shapes, cost, perturbations, learning from a teacher, export parity."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from export.network import check_parity, export_onnx, export_torchscript
from kdcore.contract import image_network_spec
from training.backbones import TF_LITE_MEAN, TF_LITE_STD, build_encoder
from training.inference import DeployableDetector
from training.rd4ad import RD4AD
from training.student import ScoreRegressor
from training.student.perturb import perturb
from training.train import TrainResult


def _flops(model: torch.nn.Module, size: int) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, size, size, 3, dtype=torch.uint8))
    return counter.get_total_flops()


def test_shapes_and_score_is_the_map_maximum() -> None:
    student = ScoreRegressor(64, TF_LITE_MEAN, TF_LITE_STD).eval()
    with torch.no_grad():
        score, amap = student.predict(torch.randn(3, 3, 64, 64))
    assert score.shape == (3, 1) and amap.shape == (3, 1, 64, 64)
    assert torch.all(amap > -1)  # exp(log map) - 1
    torch.testing.assert_close(score[:, 0], amap.flatten(1).amax(1))


def test_student_costs_well_under_a_tenth_of_the_teacher() -> None:
    teacher = DeployableDetector(RD4AD(build_encoder("efficientnet_lite0"), 256)).eval()
    student = DeployableDetector(ScoreRegressor(256, TF_LITE_MEAN, TF_LITE_STD)).eval()
    ratio = _flops(student, 256) / _flops(teacher, 256)
    print(f"student / teacher FLOPs at 256 px: {ratio:.3f}")
    assert ratio < 0.1


def test_perturbations_are_local_seeded_and_leave_the_input_alone() -> None:
    x = torch.randn(4, 3, 64, 64)
    original = x.clone()
    a = perturb(x, torch.Generator().manual_seed(1))
    b = perturb(x, torch.Generator().manual_seed(1))
    assert torch.equal(x, original) and torch.equal(a, b)
    changed = (a != x).any(1).float().mean((1, 2))
    assert torch.all(changed > 0) and torch.all(changed < 0.5)  # every image changed, only locally


def test_student_learns_its_teachers_maps(trained_run: TrainResult) -> None:
    teacher = trained_run.model
    student = ScoreRegressor(64, teacher.detector.mean, teacher.detector.std, seed=0)
    student.attach_teacher(teacher)
    assert "teacher" not in dict(student.named_modules()) and not any("teacher" in k for k in student.state_dict())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    images = torch.from_numpy(np.load(trained_run.paths.samples)["inputs"])
    x = DeployableDetector(student).normalize(images)
    opt = torch.optim.Adam(student.trainable_parameters(), lr=3e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(25):
        loss = student.training_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the teacher must stay as trained"


def test_export_parity(tmp_path) -> None:
    model = DeployableDetector(ScoreRegressor(64, TF_LITE_MEAN, TF_LITE_STD)).eval()
    spec = image_network_spec(64)
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    onnx_path = export_onnx(model, spec, tmp_path / "s.onnx")
    ts_path = export_torchscript(model, spec, tmp_path / "s.pt")
    _, reports = check_parity(model, spec, images, onnx_path, ts_path)
    assert all(max(r.max_abs.values()) < 1e-4 for r in reports)
