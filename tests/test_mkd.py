"""MKD: cloner shapes, the value + direction loss, training, the frozen teacher and export parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export.network import check_parity, export_onnx, export_torchscript
from kdcore.contract import image_network_spec
from training.backbones import BackboneName, build_encoder
from training.inference import DeployableDetector
from training.mkd import MKDDetector, mkd_loss

SIZE = 64



pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def detector() -> MKDDetector:
    torch.manual_seed(0)
    return MKDDetector(build_encoder(BackboneName.EFFICIENTNET_LITE0), image_size=SIZE)


def test_shapes_and_score_is_map_max(detector: MKDDetector) -> None:
    x = torch.randn(2, 3, SIZE, SIZE)
    detector.eval()
    with torch.no_grad():
        teacher, student = detector(x)
        score, amap = detector.predict(x)
    assert [t.shape for t in teacher] == [s.shape for s in student]
    assert [t.shape[1] for t in teacher] == list(detector.encoder.out_channels)
    assert [t.shape[-1] for t in teacher] == [16, 8, 4]
    assert score.shape == (2, 1) and amap.shape == (2, 1, SIZE, SIZE)
    assert torch.allclose(score[:, 0], amap.flatten(1).amax(1))
    assert (amap >= 0).all()
    assert detector.mean == detector.encoder.mean and detector.std == detector.encoder.std
    assert set(map(id, detector.trainable_parameters())) == set(map(id, detector.cloner.parameters()))


def test_cloner_is_cheaper_than_teacher(detector: MKDDetector) -> None:
    def n(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert n(detector.cloner) < 0.5 * n(detector.encoder)


def test_loss_is_zero_for_an_exact_clone_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    teacher = [torch.randn(4, c, s, s) for c, s in ((8, 16), (16, 8), (32, 4))]
    assert mkd_loss(teacher, [t.clone() for t in teacher]).item() == pytest.approx(0.0, abs=1e-6)
    # A scaled clone keeps the direction: only the value loss remains, mean((0.5 t)^2) per tap.
    half = mkd_loss(teacher, [0.5 * t for t in teacher], lambda_direction=0.5).item()
    assert half == pytest.approx(sum(float((0.5 * t).pow(2).mean()) for t in teacher), rel=1e-5)
    # The opposite direction costs 2 per tap in the direction term.
    neg = mkd_loss(teacher, [-t for t in teacher], lambda_direction=1.0).item()
    assert neg == pytest.approx(sum(float((2 * t).pow(2).mean()) + 2.0 for t in teacher), rel=1e-5)
    # Value terms are relative to each tap's scale, as in the anomaly map.
    scales = [float(t.pow(2).mean()) for t in teacher]
    rel = mkd_loss(teacher, [0.5 * t for t in teacher], scales=torch.tensor(scales)).item()
    assert rel == pytest.approx(0.25 * 3, rel=1e-5)


def test_loss_is_the_mean_of_the_map_terms(detector: MKDDetector) -> None:
    """Train what is scored: the loss equals the unsmoothed map's terms averaged, at every tap's own grid."""
    torch.manual_seed(1)
    detector.tap_scale.copy_(torch.tensor([3.0, 5.0, 7.0]))
    t = [torch.randn(2, c, SIZE // s, SIZE // s) for c, s in zip(detector.encoder.out_channels, (4, 8, 16))]
    st = [x + 0.3 * torch.randn_like(x) for x in t]
    # Only low-norm positions disagree in direction: the per-sample cosine of the paper hardly sees them.
    t[0][:, :, :4] *= 1e-3
    st[0][:, :, :4] = -t[0][:, :, :4]
    expected = sum(
        float(((a - b).pow(2).mean(1) / detector.tap_scale[i] + 0.5 * (1 - F.cosine_similarity(a, b, dim=1))).mean())
        for i, (a, b) in enumerate(zip(t, st))
    )
    got = mkd_loss(t, st, lambda_direction=0.5, scales=detector.tap_scale).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_map_is_zero_for_an_exact_clone(detector: MKDDetector) -> None:
    t = [torch.randn(1, c, SIZE // s, SIZE // s) for c, s in zip(detector.encoder.out_channels, (4, 8, 16))]
    amap = detector.anomaly_map(t, [x.clone() for x in t])
    assert amap.shape == (1, 1, SIZE, SIZE) and amap.abs().max() < 1e-5


def test_prepare_measures_teacher_scale() -> None:
    det = MKDDetector(build_encoder(BackboneName.EFFICIENTNET_LITE0), image_size=SIZE)
    batches = [torch.randn(3, 3, SIZE, SIZE), torch.randn(2, 3, SIZE, SIZE)]
    det.prepare(iter(batches))
    with torch.no_grad():
        taps = [det.encoder(b) for b in batches]
    for i in range(3):
        expected = torch.cat([t[i].pow(2).mean(dim=(1, 2, 3)) for t in taps]).mean()
        assert det.tap_scale[i].item() == pytest.approx(expected.item(), rel=1e-5)
    assert "tap_scale" in det.state_dict()


def test_training_steps_reduce_loss_and_teacher_stays_frozen() -> None:
    torch.manual_seed(0)
    det = MKDDetector(build_encoder(BackboneName.EFFICIENTNET_LITE0), image_size=SIZE)
    teacher_state = {k: v.clone() for k, v in det.encoder.state_dict().items()}
    opt = torch.optim.Adam(det.trainable_parameters(), lr=1e-2)
    x = torch.randn(4, 3, SIZE, SIZE)
    det.train()
    assert not det.encoder.training  # the teacher's BatchNorm never switches to batch statistics
    losses = []
    for _ in range(10):
        loss = det.training_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad is None and not p.requires_grad for p in det.encoder.parameters())
    for k, v in det.encoder.state_dict().items():
        assert torch.equal(v, teacher_state[k]), k


def test_export_parity(detector: MKDDetector, tmp_path) -> None:
    detector.prepare([torch.randn(2, 3, SIZE, SIZE)])
    model, spec = DeployableDetector(detector).eval(), image_network_spec(SIZE)
    onnx_path = export_onnx(model, spec, tmp_path / "model.onnx")
    ts_path = export_torchscript(model, spec, tmp_path / "model.pt")
    images = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    (scores, maps), reports = check_parity(model, spec, images, onnx_path, ts_path)
    assert scores.shape == (3, 1) and maps.shape == (3, 1, SIZE, SIZE)
    assert {r.format for r in reports} == {"onnx", "torchscript"}


def test_rejects_bad_image_size() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        MKDDetector(build_encoder(BackboneName.EFFICIENTNET_LITE0), image_size=100)
