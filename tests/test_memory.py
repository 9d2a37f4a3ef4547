"""The tap memory: nearest-neighbour distances to good training taps joined to RD4AD's map (training/memory.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from export.network import check_parity, export_onnx, export_torchscript
from kdcore.contract import image_network_spec
from training.backbones import BackboneName, build_encoder
from training.inference import DeployableDetector
from training.memory import MAX_BANK, MEMORY_WEIGHTS, TapMemory
from training.rd4ad import RD4AD


def _taps(n: int, seed: int, c: int = 6, side: int = 4) -> torch.Tensor:
    return torch.randn(n, c, side, side, generator=torch.Generator().manual_seed(seed))


def _fitted(size: int = 32, n: int = 5, seed: int = 0) -> tuple[TapMemory, torch.Tensor, torch.Tensor]:
    memory = TapMemory(size)
    taps = _taps(n, seed)
    maps = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed + 1))
    return memory, taps, memory.fit(taps, maps)


def test_distances_are_the_nearest_bank_vector() -> None:
    memory, taps, _ = _fitted()
    query = _taps(3, seed=7)
    got = memory.distances(query)
    flat = query.flatten(2).transpose(1, 2)  # (N, hw, C)
    bank = memory.bank + memory.center  # stored relative to its mean
    torch.testing.assert_close(bank.mean(0), memory.center, atol=1e-5, rtol=0)
    expected = torch.cdist(flat, bank[None].expand(3, -1, -1)).amin(-1).reshape(3, 1, 4, 4)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # A training vector is in the bank: its distance is zero, up to float32 rounding under the square root.
    assert float(memory.distances(taps[:1]).max()) < 1e-2 < float(expected.min())


def test_training_distances_leave_the_image_itself_out() -> None:
    """Each training image is measured against the other images' vectors (it would find itself otherwise)."""
    memory, taps, left_out = _fitted(n=4)
    assert left_out.shape == (4, 1, 32, 32) and float(left_out.min()) > 0
    others = TapMemory(32)
    others.fit(taps[1:], torch.rand(3, 1, 32, 32))
    torch.testing.assert_close(left_out[:1], others.distance_map(taps[:1]), atol=1e-4, rtol=1e-4)
    # The z-score statistics are the left-out maps'.
    k = memory.coefficients
    assert float(k[2]) == pytest.approx(float(left_out.double().mean()), rel=1e-5)
    assert float(k[3]) == pytest.approx(1 / float(left_out.double().std()), rel=1e-5)


def test_bank_is_capped_by_a_seeded_subset() -> None:
    taps, maps = _taps(5, 0), torch.rand(5, 1, 32, 32)
    a, b, c = TapMemory(32), TapMemory(32), TapMemory(32)
    a.fit(taps, maps, seed=3, max_bank=20)
    b.fit(taps, maps, seed=3, max_bank=20)
    c.fit(taps, maps, seed=4, max_bank=20)
    assert a.bank.shape == (20, 6) and torch.equal(a.bank + a.center, b.bank + b.center)
    assert not torch.equal(a.bank + a.center, c.bank + c.center)
    with pytest.raises(ValueError, match="at least two"):
        TapMemory(32).fit(taps[:1], maps[:1])


def test_weight_zero_is_the_identity_and_weights_combine_z_scores() -> None:
    memory, taps, _ = _fitted()
    amap = torch.rand(2, 1, 32, 32)
    query = _taps(2, seed=9)
    memory.set_weight(2.0)
    assert memory.active and memory.weight == 2.0
    k = memory.coefficients
    expected = (amap - k[0]) * k[1] + 2.0 * (memory.distance_map(query) - k[2]) * k[3]
    torch.testing.assert_close(memory(amap, query), expected)
    memory.set_weight(0.0)  # no memory: the bank is emptied, the map passes unchanged
    assert not memory.active and memory.weight == 0.0 and memory.bank.numel() == 0
    assert memory(amap, query) is amap


def test_state_dict_carries_a_bank_of_any_size() -> None:
    memory, _, _ = _fitted()
    memory.set_weight(1.0)
    fresh = TapMemory(32)
    fresh.load_state_dict(memory.state_dict(), strict=True)
    assert fresh.active and torch.equal(fresh.bank, memory.bank) and torch.equal(fresh.coefficients, memory.coefficients)
    fresh.load_state_dict(TapMemory(32).state_dict(), strict=True)  # and back to none
    assert not fresh.active
    fresh.load_state_dict(memory.state_dict())
    fresh.load_state_dict({}, strict=True)  # a checkpoint from before the memory: none, and no missing keys
    assert not fresh.active
    # A bank written before it was centred (no center): loads with a zero centre, the same distances.
    legacy = {"bank": memory.bank + memory.center, "bank_sq": ((memory.bank + memory.center) ** 2).sum(-1),
              "coefficients": memory.coefficients}
    fresh.load_state_dict(legacy, strict=True)
    query = _taps(2, seed=5)
    torch.testing.assert_close(fresh.distances(query), memory.distances(query), atol=1e-4, rtol=1e-4)


def _rd4ad_with_memory(weight: float) -> DeployableDetector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        encoder = build_encoder(BackboneName.EFFICIENTNET_LITE0, None, allow_random_init=True)
    model = DeployableDetector(RD4AD(encoder, 64, feature_pool=3)).eval()
    images = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, raw, taps = model.detector.predict_and_taps(model.normalize(images))
        model.memory.fit(taps, model.positional(raw))
    model.memory.set_weight(weight)
    return model


def test_rd4ad_taps_are_the_pooled_coarser_scales_and_join_the_scored_map() -> None:
    model = _rd4ad_with_memory(1.0)
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = model.normalize(images)
        score, raw, taps = model.detector.predict_and_taps(x)
        teacher = model.detector.teacher_features(x)
        torch.testing.assert_close(taps, torch.cat([torch.nn.functional.avg_pool2d(teacher[1], 2), teacher[2]], 1))
        torch.testing.assert_close((score, raw), model.detector.predict(x))
        out = model(images)
    torch.testing.assert_close(out.anomaly_map, model.memory(model.positional(raw), taps))
    torch.testing.assert_close(out.pred_score, out.anomaly_map.amax(dim=(2, 3)))


def test_a_model_with_memory_exports_with_parity(tmp_path) -> None:
    """ONNX (MatMul, ReduceMin; no cdist) and TorchScript agree with eager, for any batch size."""
    model = _rd4ad_with_memory(4.0)
    spec = image_network_spec(64)
    onnx_path = export_onnx(model, spec, tmp_path / "m.onnx")
    ts_path = export_torchscript(model, spec, tmp_path / "m.pt")
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    eager, reports = check_parity(model, spec, images, onnx_path, ts_path)
    assert {r.format for r in reports} == {"onnx", "torchscript"}
    with torch.no_grad():
        without = model.positional(model.detector.predict(model.normalize(torch.from_numpy(images)))[1]).numpy()
    assert not np.allclose(eager[1], without)  # the exported map is the memory's, not the network's alone


def test_tap_distance_report_scores_every_candidate_on_both_splits(trained_run) -> None:
    """``python -m bench.tap_distance``: the network's map, the distance alone and each weight, on validation and test."""
    from bench.tap_distance import report

    lines = report(trained_run.paths.root)
    rows = [line for line in lines if line.startswith("| ")]
    assert len(rows) == 2 * (2 + len(MEMORY_WEIGHTS) - 1)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(0.0 <= float(c.split()[-1]) <= 1.0 for c in cells[1:])
        assert {c.split()[0] for c in cells[3:]} == {"scratch", "hole", "stain", "foreign"}


def test_tap_distance_on_the_stride8_grid_queries_four_times_the_cells(trained_run) -> None:
    """``--grid 8``: the same report with the taps on the stride-8 grid, so the bank holds four times the vectors."""
    from bench.tap_distance import report

    coarse, fine = report(trained_run.paths.root, 16)[0], report(trained_run.paths.root, 8)[0]
    vectors = [int(line.split(" memory, ")[1].split()[0]) for line in (coarse, fine)]
    assert "stride-8" in fine
    assert vectors[1] == min(4 * vectors[0], MAX_BANK)
