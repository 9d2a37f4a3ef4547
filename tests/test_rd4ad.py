"""RD4AD: shapes, loss and anomaly map."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from kdcore.contract import image_network_spec
from training.anomaly_map import AnomalyMapGenerator, GaussianBlur2d, cosine_distance_maps, gaussian_kernel_1d
from training.backbones import BackboneName, build_encoder
from training.inference import DeployableDetector, InferenceOutput
from training.perturb import perturb
from training.rd4ad import RD4AD, reverse_distillation_loss


def _random_encoder(name: BackboneName):
    """The pretrained teacher where its weights are installed, otherwise a random one (shapes only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_encoder(name, None, allow_random_init=True)


@pytest.mark.parametrize("name", list(BackboneName))
def test_student_mirrors_teacher(name: BackboneName, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no cached weights: random teacher
    model = RD4AD(_random_encoder(name), image_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        teacher, student = model(x)
        score, amap = model.predict(x)
    assert [t.shape for t in teacher] == [s.shape for s in student]
    assert [t.shape[1] for t in teacher] == list(model.encoder.out_channels)
    assert [t.shape[-1] for t in teacher] == [16, 8, 4]
    assert score.shape == (2, 1) and amap.shape == (2, 1, 64, 64)
    assert torch.allclose(score[:, 0], amap.flatten(1).amax(1))


def test_wide_resnet_student_has_reference_width(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model = RD4AD(_random_encoder(BackboneName.WIDE_RESNET50_2), image_size=64)
    # Deng & Li's OCBE: 3 x 1024 fused channels -> 2048-channel embedding; decoder blocks [3, 4, 6].
    assert model.bottleneck.embed_channels == 2048
    assert [len(s) for s in (model.decoder.stage3, model.decoder.stage2, model.decoder.stage1)] == [3, 4, 6]


def test_image_size_must_be_multiple_of_32(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ValueError, match="multiple of 32"):
        RD4AD(_random_encoder(BackboneName.RESNET18), image_size=100)


def test_loss_is_zero_for_perfect_reconstruction_and_scale_invariant() -> None:
    teacher = [torch.randn(4, c, s, s) for c, s in ((8, 16), (16, 8), (32, 4))]
    assert reverse_distillation_loss(teacher, [2.5 * t for t in teacher]).item() == pytest.approx(0, abs=1e-6)
    assert reverse_distillation_loss(teacher, [-t for t in teacher]).item() == pytest.approx(6.0, abs=1e-5)
    noisy = [t + torch.randn_like(t) for t in teacher]
    assert 0 < reverse_distillation_loss(teacher, noisy).item() < 6


def test_training_steps_reduce_loss() -> None:
    torch.manual_seed(0)
    encoder = build_encoder(BackboneName.EFFICIENTNET_LITE0)
    model = RD4AD(encoder, image_size=64)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=0.005, betas=(0.5, 0.999))
    x = torch.randn(4, 3, 64, 64)
    losses = []
    for _ in range(8):
        loss = reverse_distillation_loss(*model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is None for p in model.encoder.parameters())  # the teacher stays frozen


def test_pixelwise_loss_asks_for_a_small_changed_region_to_be_restored() -> None:
    """A student wrong on one cell of 256 barely moves the flattened cosine; the per-pixel term sees it fully."""
    teacher = [torch.randn(1, 16, 16, 16)]
    student = [teacher[0].clone()]
    student[0][0, :, 3, 3] = -teacher[0][0, :, 3, 3]  # the opposite direction at one cell
    flat = reverse_distillation_loss(teacher, student).item()
    both = reverse_distillation_loss(teacher, student, pixelwise=True).item()
    assert flat < 0.02
    assert both - flat == pytest.approx(2.0 / 256, rel=1e-4)  # 1 - cos = 2 at one cell of 256
    assert reverse_distillation_loss(teacher, [3.0 * teacher[0]], pixelwise=True).item() == pytest.approx(0, abs=1e-6)


def test_denoising_reads_a_perturbed_copy_and_targets_the_clean_features() -> None:
    encoder = build_encoder(BackboneName.EFFICIENTNET_LITE0)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model = RD4AD(encoder, 64, feature_pool=3, denoising="broad", seed=5)
    loss = model.training_loss(x)
    generator = torch.Generator().manual_seed(5)  # the model's own draw, replayed
    with torch.no_grad():
        changed = perturb(x, generator, "broad")
        assert not torch.equal(changed, x)
        teacher, from_clean = model(x)
        from_changed = model.student_features(model.teacher_features(changed))
        expected = reverse_distillation_loss(teacher, from_changed, pixelwise=True)
        clean = reverse_distillation_loss(teacher, from_clean, pixelwise=True).item()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert abs(loss.item() - clean) > 1e-4 * clean  # so the equality above tells the two inputs apart
    assert all(not torch.allclose(a, b, atol=1e-4) for a, b in zip(from_changed, from_clean, strict=True))
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())  # the teacher stays frozen
    off = RD4AD(encoder, 64, feature_pool=3)  # the paper's training: the image's own features, flattened
    assert off.denoising == "off"
    assert off.training_loss(x).item() == pytest.approx(reverse_distillation_loss(*off(x)).item(), rel=1e-6)
    with pytest.raises(ValueError, match="denoising"):
        RD4AD(encoder, 64, denoising="gaussian")


def test_anomaly_map_follows_the_published_recipe() -> None:
    gen = AnomalyMapGenerator((32, 32), num_scales=2, sigma=4.0)
    t = [torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4)]
    score, amap = gen(t, [x.clone() for x in t])
    assert amap.abs().max() < 1e-5 and score.abs().max() < 1e-5
    s = [x.clone() for x in t]
    s[0][..., 2, 3] = -s[0][..., 2, 3]  # one opposite feature vector: distance 2 at that cell
    _, amap = gen(t, s)
    raw = 1 - torch.nn.functional.cosine_similarity(t[0], s[0], dim=1)
    up = torch.nn.functional.interpolate(raw[:, None], size=(32, 32), mode="bilinear", align_corners=True)
    expected = ndi.gaussian_filter(up[0, 0].double().numpy(), sigma=4)
    np.testing.assert_allclose(amap[0, 0].numpy(), expected, atol=1e-5)


def test_map_sums_only_the_chosen_scales() -> None:
    gen = AnomalyMapGenerator((32, 32), num_scales=3)
    t = [torch.randn(2, 4, 16, 16), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)]
    s = [torch.randn_like(x) for x in t]

    def alone(scales: list[int]) -> torch.Tensor:
        return gen.blur(sum(cosine_distance_maps([t[i]], [s[i]], (32, 32)) for i in scales))

    _, amap = gen(t, s)
    torch.testing.assert_close(amap, alone([0, 1, 2]))
    for which, kept in (("without_finest", [1, 2]), ("coarsest", [2]), ("all", [0, 1, 2])):
        gen.use_scales(which)
        score, amap = gen(t, s)
        torch.testing.assert_close(amap, alone(kept))
        torch.testing.assert_close(score[:, 0], amap.flatten(1).amax(1))
    gen.use_scales("coarsest")
    assert gen.state_dict()["scale_weights"].tolist() == [0.0, 0.0, 1.0]  # the choice travels in the checkpoint
    with pytest.raises(ValueError, match="map scales"):
        gen.use_scales("finest")
    with pytest.raises(ValueError, match="map scales"):
        AnomalyMapGenerator((32, 32), num_scales=1).use_scales("without_finest")  # would leave no scale


def test_blur_equals_scipy_and_kernel_is_normalised() -> None:
    assert gaussian_kernel_1d(4.0).numel() == 33
    assert gaussian_kernel_1d(4.0).sum().item() == pytest.approx(1.0, abs=1e-6)
    x = torch.rand(2, 1, 40, 48)
    y = GaussianBlur2d(4.0, (40, 48))(x).numpy()
    for i in range(2):
        np.testing.assert_allclose(y[i, 0], ndi.gaussian_filter(x[i, 0].double().numpy(), 4), atol=1e-5)


def test_deployable_detector_takes_uint8_nhwc() -> None:
    encoder = build_encoder(BackboneName.EFFICIENTNET_LITE0)
    model = DeployableDetector(RD4AD(encoder, 64)).eval()
    image = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        out = model(image)
        x = (image.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
        ref = model.detector.predict(x)
    assert isinstance(out, InferenceOutput) and InferenceOutput._fields == tuple(o.name for o in image_network_spec(8).outputs) == ("pred_score", "anomaly_map")
    assert torch.allclose(out.pred_score, ref[0], atol=1e-5)
    assert torch.allclose(out.anomaly_map, ref[1], atol=1e-5)


def test_linear_heads_only_for_signed_taps(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    lite = RD4AD(_random_encoder(BackboneName.EFFICIENTNET_LITE0), image_size=64)
    resnet = RD4AD(_random_encoder(BackboneName.RESNET18), image_size=64)
    assert lite.heads is not None and resnet.heads is None  # the paper's ResNet recipe stays as published
    with torch.no_grad():
        _, student = lite(torch.randn(2, 3, 64, 64))
    # The point of the heads: the student can now produce negative features, as the Lite taps are.
    assert all((s < 0).any() for s in student)
    assert {id(p) for p in lite.heads.parameters()} <= {id(p) for p in lite.trainable_parameters()}


def test_feature_pool_averages_teacher_taps() -> None:
    encoder = build_encoder(BackboneName.EFFICIENTNET_LITE0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = RD4AD(encoder, 64).teacher_features(x)
        pooled = RD4AD(encoder, 64, feature_pool=3).teacher_features(x)
    for p, q in zip(plain, pooled, strict=True):
        assert p.shape == q.shape
        # an interior cell is the mean of its 3x3 neighbourhood
        np.testing.assert_allclose(q[0, :, 2, 2].numpy(), p[0, :, 1:4, 1:4].mean(dim=(1, 2)).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        RD4AD(encoder, 64, feature_pool=2)


def test_positional_normalizer_scores_deviation_from_the_typical_map() -> None:
    from training.inference import PositionalNormalizer

    norm = PositionalNormalizer(8)
    assert norm.is_identity
    maps = torch.rand(50, 8, 8)
    maps[:, 0, :] += 5.0  # a border row that is always high on good images
    maps[:, 0, :] += torch.randn(50, 8) * 0.01
    norm.fit(maps)
    assert not norm.is_identity
    z = norm(maps[:, None])
    torch.testing.assert_close(z.mean(0), torch.zeros(1, 8, 8), atol=1e-4, rtol=0)
    defect = maps[:1, None].clone()
    defect[..., 4, 4] += 1.0  # a real change, smaller than the border's usual value
    out = norm(defect)
    assert out.flatten().argmax().item() == 4 * 8 + 4  # the raw maximum was on the border row
    assert defect.flatten().argmax().item() < 8
    norm.reset()
    assert norm.is_identity


def test_positional_normalizer_does_not_amplify_float32_noise_of_a_flat_map() -> None:
    """A near-constant map (an untrained student's) must not turn runtime rounding into score differences."""
    from training.inference import PositionalNormalizer

    norm = PositionalNormalizer(8)
    flat = 0.068 + torch.randn(8, 8, 8) * 2e-5  # spread 3e-4 of the value, as the failing export had
    norm.fit(flat)
    assert norm.inv_std.max().item() <= 1.0 / (PositionalNormalizer.RELATIVE_STD_FLOOR * 0.068) * 1.01
    ulps = flat[:1, None] * (1 + 1e-6)  # what two runtimes differ by on a float32 map
    assert (norm(ulps) - norm(flat[:1, None])).abs().max().item() < 1e-3  # the export's parity tolerance
    spread = torch.rand(50, 8, 8) + 1.0  # a real spread: the floor does not bind
    norm.fit(spread)
    torch.testing.assert_close(norm.inv_std, 1.0 / (spread.std(0) + 1e-3 * spread.std(0).mean())[None, None],
                               rtol=1e-4, atol=0)


def test_deployable_score_is_max_of_normalised_map() -> None:
    model = DeployableDetector(RD4AD(build_encoder(BackboneName.EFFICIENTNET_LITE0), 64)).eval()
    images = torch.randint(0, 256, (6, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        model.positional.fit(model.raw_maps(images))
        out = model(images)
    assert torch.allclose(out.pred_score[:, 0], out.anomaly_map.flatten(1).amax(1))
    assert abs(out.anomaly_map.mean().item()) < 1e-3  # z-scores of the very maps it was fitted on
    assert "positional.mean" in model.state_dict()  # travels in the checkpoint and the exported graph
