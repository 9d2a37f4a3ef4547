"""The score-regressing student: shapes, cost, perturbations, learning from a teacher, export parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from export.network import check_parity, export_onnx, export_torchscript
from kdcore.contract import image_network_spec
from training.backbones import TF_LITE_MEAN, TF_LITE_STD, build_encoder
from training.inference import DeployableDetector
from training.rd4ad import RD4AD
from training.student import ScoreRegressor
from training.student.model import POOL_COPIES
from training.perturb import FAMILIES, perturb
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


def _student(size: int, features: str) -> ScoreRegressor:
    encoder = build_encoder("efficientnet_lite0", allow_random_init=True) if features == "hint" else None
    return ScoreRegressor(size, TF_LITE_MEAN, TF_LITE_STD, encoder=encoder)


@pytest.mark.parametrize("features", ["hint", "scratch"])
def test_student_costs_well_under_a_tenth_of_the_teacher(features: str) -> None:
    teacher = DeployableDetector(RD4AD(build_encoder("efficientnet_lite0"), 256)).eval()
    student = DeployableDetector(_student(256, features)).eval()
    ratio = _flops(student, 256) / _flops(teacher, 256)
    print(f"{features} student / teacher FLOPs at 256 px: {ratio:.3f}")
    assert ratio < 0.1


def test_hint_features_read_the_frozen_encoder_at_half_resolution() -> None:
    student = _student(64, "hint")
    encoder = student.features.encoder
    trainable = {id(p) for p in student.trainable_parameters()}
    assert not any(id(p) in trainable for p in encoder.parameters())
    assert any(id(p) in trainable for p in student.features.mix.parameters())
    student.train()
    assert not encoder.training  # its BatchNorm statistics stay the pretrained ones
    x = torch.randn(2, 3, 64, 64)
    seen: list[torch.Tensor] = []
    handle = encoder._conv_stem.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    try:
        with torch.no_grad():
            feats = student.features(x)
    finally:
        handle.remove()
    assert feats.shape == (2, 48, 8, 8)  # the stride-8 grid of the full-size input
    torch.testing.assert_close(seen[0], torch.nn.functional.avg_pool2d(x, 2), rtol=0, atol=0)
    with pytest.raises(ValueError, match="normalisation"):
        ScoreRegressor(64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), encoder=encoder)


def test_memory_channel_measures_distance_to_good_vectors_but_never_to_a_samples_own_image() -> None:
    encoder = build_encoder("efficientnet_lite0", allow_random_init=True)
    assert ScoreRegressor(64, TF_LITE_MEAN, TF_LITE_STD, encoder=encoder).features.memory == 0  # opt-in
    features = ScoreRegressor(64, TF_LITE_MEAN, TF_LITE_STD, encoder=encoder, memory=256).features
    generator = torch.Generator().manual_seed(0)
    taps = features.taps(torch.randn(3, 3, 64, 64, generator=generator))
    features.fit_memory(taps, torch.Generator().manual_seed(1))
    floor = 0.5 * np.log(1e-6)  # log distance of a vector to itself
    # At inference a training image's own cells are in the bank ...
    assert features.nearest(taps).min() < floor + 1
    # ... but while the pool is built they are skipped, so training sees the distances a new image would get.
    apart = features.nearest(taps, torch.arange(3))
    assert apart.min() > floor + 1 and torch.isfinite(apart).all()
    # A vector far from every good one is far.
    assert features.nearest(taps + 10.0).min() > features.nearest(taps).max()
    # Bank vectors are the good images' own, and the channel is the mixer's last input.
    vectors = taps.permute(0, 2, 3, 1).reshape(-1, taps.shape[1])
    assert (features.bank[:, None] - vectors[None]).abs().amax(-1).amin(1).max() == 0
    assert features.frozen(taps.new_zeros(2, 3, 64, 64)).shape[1] == taps.shape[1] + 1
    with pytest.raises(ValueError, match="memory"):
        ScoreRegressor(64, TF_LITE_MEAN, TF_LITE_STD, encoder=encoder, memory=-1)
    with pytest.raises(ValueError, match="hint features"):
        ScoreRegressor(64, TF_LITE_MEAN, TF_LITE_STD, memory=16)
    with pytest.raises(ValueError, match="pool_copies"):
        ScoreRegressor(64, TF_LITE_MEAN, TF_LITE_STD, encoder=encoder, pool_copies=-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_perturbations_are_local_seeded_and_leave_the_input_alone(family: str) -> None:
    x = torch.randn(4, 3, 64, 64)
    original = x.clone()
    a = perturb(x, torch.Generator().manual_seed(1), family)
    b = perturb(x, torch.Generator().manual_seed(1), family)
    assert torch.equal(x, original) and torch.equal(a, b)
    changed = (a != x).any(1).float().mean((1, 2))
    assert torch.all(changed > 0) and torch.all(changed < 0.5)  # every image changed, only locally
    with pytest.raises(ValueError, match="family"):
        perturb(x, torch.Generator(), "tint")


def test_broad_perturbations_span_sizes_and_change_colour() -> None:
    """The broad family reaches defects of a few pixels and changes colour, which the structural one never does."""
    x = torch.randn(64, 3, 128, 128)
    area = {f: (perturb(x, torch.Generator().manual_seed(0), f) != x).any(1).float().mean((1, 2)) for f in FAMILIES}
    assert area["broad"].min() < 0.004 < area["structural"].min()  # under 8 x 8 px of 128 x 128 somewhere
    x = torch.zeros(64, 3, 128, 128)  # a flat image: a colour change shows in the channel means
    out = {f: perturb(x, torch.Generator().manual_seed(0), f) for f in FAMILIES}
    # Pixels moved off 0 yet flat among their neighbours: a colour shift (jitter, synthetic texture), not noise.
    def flat_shift(o: torch.Tensor) -> torch.Tensor:
        local_var = F.avg_pool2d(o**2, 3, 1, 1) - F.avg_pool2d(o, 3, 1, 1) ** 2
        return ((o.abs() > 0.05) & (local_var < 1e-4)).flatten(1).any(1)

    tinted = {f: flat_shift(o) for f, o in out.items()}
    assert tinted["broad"].sum() >= 16 and not tinted["structural"].any()


@pytest.mark.parametrize("features", ["hint", "hint_memory", "scratch"])
def test_student_learns_its_teachers_maps(trained_run: TrainResult, features: str) -> None:
    teacher = trained_run.model
    encoder = build_encoder("efficientnet_lite0") if features.startswith("hint") else None
    memory, copies = (64, 4) if features == "hint_memory" else (0, POOL_COPIES)
    student = ScoreRegressor(64, teacher.detector.mean, teacher.detector.std, seed=0, encoder=encoder,
                             memory=memory, pool_copies=copies)
    student.attach_teacher(teacher)
    assert "teacher" not in dict(student.named_modules()) and not any("teacher" in k for k in student.state_dict())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    images = torch.from_numpy(np.load(trained_run.paths.samples)["inputs"])
    x = DeployableDetector(student).normalize(images)
    opt = torch.optim.Adam(student.trainable_parameters(), lr=3e-3)
    torch.manual_seed(0)
    student.prepare(iter([x]))  # a one-shot iterator: the pool reads the training batches once
    assert len(student.pool[0]) == len(x) * (copies + 1) == len(student.pool[1])
    losses = []
    while len(losses) < 25:
        for batch in student.epoch_batches(iter(())):  # the pool, not the loader's batches
            loss = student.training_loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the teacher must stay as trained"


def test_max_targets_keep_a_small_defect_at_its_peak(trained_run: TrainResult) -> None:
    """A few-pixel peak of the teacher's map survives max pooling to the student's cells; the mean dilutes it."""
    teacher = trained_run.model
    students = {pool: ScoreRegressor(64, teacher.detector.mean, teacher.detector.std, target_pool=pool)
                for pool in ("mean", "max")}
    for student in students.values():
        student.attach_teacher(teacher)
    images = torch.from_numpy(np.load(trained_run.paths.samples)["inputs"])
    x = DeployableDetector(students["max"]).normalize(images)
    with torch.no_grad():  # the teacher's own scoring path, not the expression targets() uses
        scored = torch.log1p(teacher(images)[1].clamp_min(0))
    mean, peak = students["mean"].targets(x), students["max"].targets(x)
    assert mean.shape == peak.shape == (len(x), 1, 8, 8)
    torch.testing.assert_close(peak.flatten(1).amax(1), scored.flatten(1).amax(1))  # the image's peak, kept
    assert torch.all(peak >= mean - 1e-6) and torch.any(peak > mean + 1e-3)
    with pytest.raises(ValueError, match="target_pool"):
        ScoreRegressor(64, teacher.detector.mean, teacher.detector.std, target_pool="median")


@pytest.mark.parametrize("features", ["hint", "scratch"])
def test_export_parity(tmp_path, features: str) -> None:
    model = DeployableDetector(_student(64, features)).eval()
    spec = image_network_spec(64)
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    onnx_path = export_onnx(model, spec, tmp_path / "s.onnx")
    ts_path = export_torchscript(model, spec, tmp_path / "s.pt")
    _, reports = check_parity(model, spec, images, onnx_path, ts_path)
    assert all(max(r.max_abs.values()) < 1e-4 for r in reports)


def test_a_student_records_its_teachers_backbone(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """The hint features read the teacher's encoder: the student's config names it, so the run folder rebuilds."""
    from training.checkpoint import with_teacher_backbone
    from training.config import TrainConfig
    from training.methods import Method
    from training.runs import RunPaths

    teacher = TrainConfig(backbone="resnet18", teacher_weights=tmp_path / "r18.pth", output=tmp_path / "teacher")
    RunPaths(teacher.output).root.mkdir()
    RunPaths(teacher.output).config.write_text(teacher.model_dump_json())
    student = with_teacher_backbone(TrainConfig(method=Method.STUDENT, teacher_run=teacher.output))
    assert student.backbone.value == "resnet18" and student.teacher_weights == tmp_path / "r18.pth"
    with caplog.at_level("WARNING"):
        with_teacher_backbone(TrainConfig(method=Method.STUDENT, teacher_run=teacher.output, backbone="efficientnet_lite1"))
    assert "resnet18" in caplog.text
    rd4ad = TrainConfig(backbone="efficientnet_lite1")
    assert with_teacher_backbone(rd4ad) is rd4ad
    with pytest.raises(FileNotFoundError, match="finished training run"):
        with_teacher_backbone(TrainConfig(method=Method.STUDENT, teacher_run=tmp_path / "none"))
