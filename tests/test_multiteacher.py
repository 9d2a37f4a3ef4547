"""The multi-teacher detector: shapes, z-score statistics, loss, training, fusion weights and export parity."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch

from export.network import check_parity, export_onnx, export_torchscript
from kdcore.contract import image_network_spec
from training.backbones import BackboneName
from training.inference import DeployableDetector
from training.multiteacher import (
    MultiTeacherDetector,
    distillation_loss,
    kl_to_uniform,
)
from training.multiteacher.model import semi_orthogonal

SIZE = 64


def _images(n: int, seed: int) -> torch.Tensor:
    """Normalised images with some structure (smooth random fields), not white noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
    return ((smooth + 0.1 * torch.rand(n, 3, SIZE, SIZE, generator=g)).clamp(0, 1) - 0.5) / 0.5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def train_batches() -> list[torch.Tensor]:
    return [_images(6, seed) for seed in range(3)]


@pytest.fixture(scope="module")
def prepared(train_batches) -> MultiTeacherDetector:
    torch.manual_seed(0)
    det = MultiTeacherDetector(SIZE)
    det.prepare(iter(train_batches))  # a one-shot iterator: prepare must iterate once
    return det


@pytest.fixture
def detector(prepared) -> MultiTeacherDetector:
    return copy.deepcopy(prepared)


def test_shapes_and_parts(detector):
    assert detector.teacher_names == ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
    assert detector.mean == detector.std == (0.5, 0.5, 0.5)
    x = _images(2, 10)
    detector.eval()
    with torch.no_grad():
        score, amap = detector.predict(x)
        target = detector.target(x)
        student = detector.student(x)
    assert score.shape == (2, 1) and amap.shape == (2, 1, SIZE, SIZE)
    assert torch.equal(score[:, 0], amap.flatten(1).amax(1))
    assert target.shape == student.shape == (2, 64, SIZE // 8, SIZE // 8)
    assert bool((amap >= 0).all())
    n_student = sum(p.numel() for p in detector.student.parameters())
    assert 200_000 <= n_student <= 1_000_000
    trainable = detector.trainable_parameters()
    assert sum(p.numel() for p in trainable) == n_student + 3
    assert any(p is detector.alpha for p in trainable)
    assert all(not p.requires_grad for p in detector.teachers.parameters())
    # Projections, z-score statistics and the flag are buffers: saved, never trained.
    keys = detector.state_dict().keys()
    for k in range(3):
        assert {f"heads.{k}.mean", f"heads.{k}.std", f"heads.{k}.projection"} <= keys
    assert {"alpha", "prepared"} <= keys


@pytest.mark.parametrize(("tap_stride", "channels"), [(4, 16), (16, 32)])
def test_other_taps_land_on_the_stride_8_grid(tap_stride, channels, train_batches):
    det = MultiTeacherDetector(SIZE, teachers=("efficientnet_lite0", "efficientnet_lite2"), channels=channels,
                               tap_stride=tap_stride)
    det.prepare(train_batches[:1])
    assert det._resize
    feats = det.teacher_features(train_batches[0])
    assert [f.shape[1] for f in feats] == ([24, 24] if tap_stride == 4 else [112, 120])
    assert all(f.shape[-2:] == (8, 8) for f in feats)
    det.eval()
    with torch.no_grad():
        score, amap = det.predict(train_batches[0])
    assert det.target(train_batches[0]).shape == (6, channels, 8, 8)
    assert score.shape == (6, 1) and amap.shape == (6, 1, SIZE, SIZE)


def test_prepare_sets_zscore_statistics(prepared, train_batches):
    assert bool(prepared.prepared)
    per_batch = [prepared.teacher_features(x) for x in train_batches]
    for k, head in enumerate(prepared.heads):
        z = torch.cat([head.zscore(feats[k]) for feats in per_batch]).double()
        mean = z.mean(dim=(0, 2, 3))
        std = z.std(dim=(0, 2, 3), unbiased=False)
        assert mean.abs().max() < 1e-4
        assert (std - 1).abs().max() < 1e-3
    # Running sums over all batches: a different batching gives the same statistics.
    other = MultiTeacherDetector(SIZE)
    other.prepare(torch.cat(train_batches).split(5))
    for a, b in zip(prepared.heads, other.heads, strict=True):
        torch.testing.assert_close(a.mean, b.mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.std, b.std, rtol=1e-5, atol=1e-6)
        assert not torch.equal(a.std, torch.ones_like(a.std))


def test_statistics_and_projections_survive_a_state_dict_round_trip(prepared):
    fresh = MultiTeacherDetector(SIZE, seed=1)
    assert not bool(fresh.prepared)
    assert not torch.equal(fresh.heads[0].projection, prepared.heads[0].projection)
    fresh.load_state_dict(prepared.state_dict(), strict=True)
    x = _images(2, 11)
    with torch.no_grad():
        torch.testing.assert_close(fresh.target(x), prepared.target(x), rtol=0, atol=0)
    assert bool(fresh.prepared)


def test_projections_are_fixed_seeded_and_semi_orthogonal():
    g = torch.Generator().manual_seed(0)
    wide = semi_orthogonal(16, 40, g)  # fewer outputs: orthonormal rows
    torch.testing.assert_close(wide @ wide.T, torch.eye(16), rtol=0, atol=1e-5)
    tall = semi_orthogonal(64, 40, g)  # more outputs: orthonormal columns, rows of mean squared norm 1
    torch.testing.assert_close(tall.T @ tall, torch.eye(40) * 64 / 40, rtol=0, atol=1e-5)
    assert tall.square().sum(dim=1).mean().item() == pytest.approx(1.0, abs=1e-5)
    a = MultiTeacherDetector(SIZE, seed=3)
    b = MultiTeacherDetector(SIZE, seed=3)
    for ha, hb in zip(a.heads, b.heads, strict=True):
        assert torch.equal(ha.projection, hb.projection)
    assert not any(p is h.projection for h in a.heads for p in a.parameters())


def test_training_before_prepare_fails():
    det = MultiTeacherDetector(SIZE, teachers=("efficientnet_lite0",))
    with pytest.raises(RuntimeError, match="prepare"):
        det.training_loss(_images(2, 0))
    with pytest.raises(ValueError, match="at least one"):
        det.prepare([])


def test_loss_functions():
    t = torch.randn(3, 8, 4, 4)
    assert distillation_loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(t + 0.5 * torch.randn_like(t), t).item() > 0.1
    # MSE of (-t, t) is 4 * mean(t^2); the cosine term is 2 everywhere.
    expected = 4 * t.square().mean().item() + 2.0
    assert distillation_loss(-t, t).item() == pytest.approx(expected, rel=1e-5)
    assert kl_to_uniform(torch.full((3,), 1 / 3)).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_to_uniform(torch.tensor([1.0, 0.0, 0.0])).item() == pytest.approx(math.log(3), abs=1e-6)


def test_loss_is_zero_when_the_student_equals_the_target(detector, monkeypatch):
    x = _images(4, 12)
    assert detector.training_loss(x).item() > 0.05
    monkeypatch.setattr(detector.student, "forward", lambda inp: detector.target(inp).detach())
    assert detector.training_loss(x).item() == pytest.approx(0.0, abs=1e-5)
    detector.eval()
    with torch.no_grad():
        score, _ = detector.predict(x)
    assert score.abs().max().item() < 1e-5


def test_optimisation_steps_reduce_the_loss(detector):
    torch.manual_seed(0)
    x = _images(6, 13)
    opt = torch.optim.Adam(detector.trainable_parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        detector.train()
        loss = detector.training_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is None for p in detector.teachers.parameters())
    assert detector.alpha.grad is not None and detector.alpha.grad.abs().sum() > 0


def _fit_alpha_only(det: MultiTeacherDetector, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Trains only the fusion logits against a student that is exactly teacher 0's projected features: the
    situation that drives an unregularised fusion onto the teacher the student imitates best."""
    with torch.no_grad():
        features = det.teacher_features(x)  # fixed: cache them, only alpha changes
        easy = det.heads[0](features[0])
    det.teacher_features = lambda inp: features  # type: ignore[method-assign]
    det.student.forward = lambda inp: easy  # type: ignore[method-assign]
    opt = torch.optim.Adam([det.alpha], lr=0.1)
    for _ in range(steps):
        loss = det.training_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return det.fusion_weights().detach()


def test_fusion_weights_do_not_collapse_onto_the_easiest_teacher(prepared):
    # Worst case: the student is exactly teacher 0. Unregularised, the fusion runs away towards teacher 0 for as
    # long as it is trained; with the KL term it settles at an interior (Gibbs) point where every teacher keeps
    # a share: here about (0.92, 0.04, 0.04) with the default weight 0.1.
    x = _images(6, 14)
    free = copy.deepcopy(prepared)
    free.fusion_kl_weight = 0.0
    w_free = [_fit_alpha_only(copy.deepcopy(free), x, steps) for steps in (150, 300)]
    w_reg = [_fit_alpha_only(copy.deepcopy(prepared), x, steps) for steps in (150, 300)]
    for w in (*w_free, *w_reg):
        assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert 0.97 < w_free[0][0] < w_free[1][0]  # still moving towards one-hot
    assert w_free[1].min() < 0.01
    torch.testing.assert_close(w_reg[0], w_reg[1], rtol=0, atol=5e-3)  # converged
    assert w_reg[1].argmax() == 0 and w_reg[1].min() > 0.03
    assert kl_to_uniform(w_reg[1]) < kl_to_uniform(w_free[1]) - 0.1


def test_fusion_weights_stay_spread_in_joint_training(detector):
    torch.manual_seed(0)
    x = _images(6, 15)
    opt = torch.optim.Adam(detector.trainable_parameters(), lr=0.01)
    for _ in range(30):
        detector.train()
        loss = detector.training_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = detector.fusion_weights().detach()
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert not torch.allclose(w, torch.full((3,), 1 / 3))  # the weights do learn
    assert w.min() > 0.2 and w.max() < 0.5


def test_invalid_configurations():
    with pytest.raises(ValueError, match="multiple of 8"):
        MultiTeacherDetector(60)
    with pytest.raises(ValueError, match="tap_stride"):
        MultiTeacherDetector(SIZE, teachers=("efficientnet_lite0",), tap_stride=32)
    with pytest.raises(ValueError, match="not used"):
        MultiTeacherDetector(SIZE, teachers=("efficientnet_lite0",), teacher_weights={"efficientnet_lite1": "x"})
    with pytest.raises(ValueError, match="non-empty"):
        MultiTeacherDetector(SIZE, teachers=())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the random ResNet teacher's warning
        with pytest.raises(ValueError, match="normalisation"):
            MultiTeacherDetector(SIZE, teachers=(BackboneName.EFFICIENTNET_LITE0, BackboneName.RESNET18),
                                 allow_random_init=True)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_export_parity(detector, tmp_path):
    # A trained-looking state: non-uniform fusion weights and updated student BatchNorm statistics.
    opt = torch.optim.Adam(detector.trainable_parameters(), lr=0.01)
    for seed in range(3):
        detector.train()
        loss = detector.training_loss(_images(4, 20 + seed))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model, spec = DeployableDetector(detector).eval(), image_network_spec(SIZE)
    onnx_path = export_onnx(model, spec, tmp_path / "model.onnx")
    ts_path = export_torchscript(model, spec, tmp_path / "model.pt")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, SIZE, SIZE, 3), dtype=np.uint8)
    (scores, maps), reports = check_parity(model, spec, images, onnx_path, ts_path)
    assert scores.shape == (3, 1) and maps.shape == (3, 1, SIZE, SIZE)
    assert {r.format for r in reports} == {"onnx", "torchscript"}
    for report in reports:
        assert set(report.max_abs) == {"pred_score", "anomaly_map"}
        assert max(report.max_abs.values()) <= 1e-4, str(report)
