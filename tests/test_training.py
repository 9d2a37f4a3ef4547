"""A real (short) training run: what it writes and how honest its numbers are."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kdcore.stats import ThresholdMethod, load_stats
from training.checkpoint import load_checkpoint
from training.data import ImageDataset, make_splits
from training.runs import RunPaths
from training.anomaly_map import MAP_SCALES
from training.evaluate import predict
from training.config import TrainConfig
from training.memory import MEMORY_WEIGHTS
from training.train import (
    DENOISING_AUTO, MapComposition, TrainResult, _selection_score, denoising_candidates, fit_map_composition,
    fit_tap_memory, train,
)


def test_run_folder_is_complete_and_reloadable(trained_run: TrainResult) -> None:
    paths: RunPaths = trained_run.paths
    for p in (paths.weights, paths.config, paths.stats, paths.history, paths.samples):
        assert p.is_file(), p
    assert load_file(str(paths.weights))  # safetensors, no pickle
    model, config = load_checkpoint(paths.root)
    batch = torch.from_numpy(np.load(paths.samples)["inputs"][:2])
    with torch.no_grad():
        a, b = model(batch), trained_run.model(batch)
    assert torch.allclose(a.anomaly_map, b.anomaly_map, atol=1e-6)
    assert config.image_size == model.image_size


def test_stats_are_from_validation_and_metrics_are_sane(trained_run: TrainResult) -> None:
    stats = load_stats(trained_run.paths.stats)
    assert stats.image_threshold.method is ThresholdMethod.F1_OPTIMAL  # the demo validation split has anomalies
    assert stats.image_calibration.threshold == stats.image_threshold.value
    assert stats.image_calibration.apply(np.array([stats.image_scores.median]))[0] < 0.5
    m = stats.test_metrics
    assert m.split == "test" and m.num_good > 0 and m.num_anomalous > 0
    for value in (m.image_auroc, m.pixel_auroc, m.aupro, m.image_f1):
        assert value is not None and 0 <= value <= 1
    assert m.image_auroc > 0.6, "a few epochs on a pretrained teacher already separate the demo defects"
    assert len(stats.training.dataset_fingerprint) == 64
    assert stats.training.denoising in ("off", "broad")  # kd-train's auto, resolved on validation and recorded
    assert 1 <= stats.training.best_epoch <= stats.training.epochs
    history = json.loads(trained_run.paths.history.read_text())
    assert len(history) == stats.training.epochs and history[-1]["loss"] < history[0]["loss"]


def test_map_composition_is_the_best_candidate_on_validation(trained_run: TrainResult, demo_root) -> None:
    """The chosen scales and normalisation score best on validation of all candidates, and are what is saved."""
    stats = load_stats(trained_run.paths.stats)
    reloaded, config = load_checkpoint(trained_run.paths.root)
    assert reloaded.detector.anomaly_map.scale_weights.tolist() == {
        "all": [1.0, 1.0, 1.0], "without_finest": [0.0, 1.0, 1.0], "coarsest": [0.0, 0.0, 1.0]
    }[stats.training.map_scales]
    assert reloaded.positional.is_identity != stats.training.positional_normalization

    splits = make_splits(demo_root, "brick", seed=config.seed)
    train_images = ImageDataset(splits.train, config.image_size)
    validation = ImageDataset(splits.validation, config.image_size)
    model = copy.deepcopy(reloaded)
    criteria = {}
    for scales in MAP_SCALES:
        for positional in ("off", "on"):
            fixed = config.model_copy(update={"map_scales": scales, "positional_normalization": positional})
            fit_map_composition(model, train_images, validation, fixed)
            criteria[(scales, positional == "on")] = _selection_score(predict(model, validation))
    chosen = fit_map_composition(model, train_images, validation, config)
    assert (chosen.scales, chosen.positional) == (stats.training.map_scales, stats.training.positional_normalization)
    assert criteria[(chosen.scales, chosen.positional)] == max(criteria.values())
    # The first best wins: a tie keeps all scales and the raw map.
    assert chosen == next(MapComposition(*k) for k, v in criteria.items() if v == max(criteria.values()))
    fit_tap_memory(model, train_images, validation, config, chosen)  # the memory joins the chosen map
    with torch.no_grad():
        batch = torch.from_numpy(np.load(trained_run.paths.samples)["inputs"][:2])
        torch.testing.assert_close(model(batch).anomaly_map, reloaded(batch).anomaly_map)


def test_tap_memory_weight_is_the_best_on_validation(trained_run: TrainResult, demo_root) -> None:
    """The memory's weight scores best on validation of all candidates (the first best: no memory on a tie), and
    the checkpoint carries it, bank and all."""
    stats = load_stats(trained_run.paths.stats)
    reloaded, config = load_checkpoint(trained_run.paths.root)
    assert reloaded.memory.weight == stats.training.tap_memory_weight
    assert reloaded.memory.bank.shape[0] == stats.training.tap_memory_vectors
    assert (stats.training.tap_memory_vectors > 0) == (stats.training.tap_memory_weight > 0)

    splits = make_splits(demo_root, "brick", seed=config.seed)
    train_images = ImageDataset(splits.train, config.image_size)
    validation = ImageDataset(splits.validation, config.image_size)
    model = copy.deepcopy(reloaded)
    model.memory.reset()
    with torch.no_grad():
        images = torch.stack([train_images[i]["image"] for i in range(len(train_images))])
        _, raw, taps = model.detector.predict_and_taps(model.normalize(images))
        maps = model.positional(raw)
    criteria = []
    for weight in MEMORY_WEIGHTS:
        model.memory.fit(taps, maps, seed=config.seed)
        model.memory.set_weight(weight)
        criteria.append(_selection_score(predict(model, validation)))
    assert stats.training.tap_memory_weight == MEMORY_WEIGHTS[criteria.index(max(criteria))]
    composition = MapComposition(stats.training.map_scales, stats.training.positional_normalization)
    chosen = fit_tap_memory(model, train_images, validation, config, composition)
    assert (chosen.memory_weight, chosen.memory_vectors) == (stats.training.tap_memory_weight,
                                                             stats.training.tap_memory_vectors)
    with torch.no_grad():
        batch = torch.from_numpy(np.load(trained_run.paths.samples)["inputs"][:2])
        torch.testing.assert_close(model(batch).anomaly_map, reloaded(batch).anomaly_map)
    # Off: no memory at all, whatever validation would say.
    off = fit_tap_memory(model, train_images, validation, config.model_copy(update={"tap_memory": "off"}), composition)
    assert (off.memory_weight, off.memory_vectors, model.memory.active) == (0.0, 0, False)


def test_splits_do_not_overlap(trained_run: TrainResult, demo_root) -> None:
    splits = make_splits(demo_root, "brick", seed=0)
    sets = [set(s.path for s in part) for part in (splits.train, splits.holdout, splits.validation, splits.test)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not sets[i] & sets[j]
    stats = load_stats(trained_run.paths.stats)
    assert stats.training.num_train == len(splits.train)
    assert stats.image_scores.count == len(splits.holdout) + sum(s.label == 0 for s in splits.validation)
    dataset = ImageDataset(splits.train, 64)
    assert dataset[0]["image"].dtype == torch.uint8


def test_cli_help_and_validation() -> None:
    done = subprocess.run([sys.executable, "-m", "training.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for flag in ("--data-root", "--category", "--backbone", "--image-size", "--epochs", "--batch-size", "--lr",
                 "--seed", "--output", "--allow-random-teacher"):
        assert flag in done.stdout
    bad = subprocess.run([sys.executable, "-m", "training.cli", "--image-size", "100"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "--image-size" in bad.stderr and "multiple of 32" in bad.stderr


def test_missing_teacher_weights_refuse_without_the_flag(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.checkpoint import build_detector
    from training.config import TrainConfig

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError):
        build_detector(TrainConfig(backbone="resnet18", image_size=64))
    with pytest.warns(UserWarning):
        build_detector(TrainConfig(backbone="resnet18", image_size=64, allow_random_teacher=True))


def test_rebuilding_for_a_checkpoint_silences_the_teacher_without_touching_logging(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from training.backbones import build_encoder
    from training.checkpoint import build_detector
    from training.config import TrainConfig

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no weights: the random-init path
    teacher_log = logging.getLogger(build_encoder.__module__)
    before = (teacher_log.level, list(teacher_log.filters))
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("error")
        build_detector(TrainConfig(backbone="resnet18", image_size=64), pretrained=False)
    assert not [r for r in caplog.records if r.name == teacher_log.name]
    assert (teacher_log.level, teacher_log.filters) == before
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning):  # outside the block it warns again
        build_encoder("resnet18", allow_random_init=True)
    assert any("RANDOMLY INITIALISED" in r.getMessage() for r in caplog.records)


def test_cli_trains_the_vector_kdae_with_method_flag(tmp_path) -> None:
    out = tmp_path / "kdae"
    done = subprocess.run(
        [sys.executable, "-m", "training.cli", "--method", "kdae_vector", "--category", "0", "--output", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    stats = load_stats(out / "stats.json")
    assert stats.model.input_kind == "vector" and stats.model.method == "kdae_vector"
    assert "image AUROC" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "training.cli", "--method", "kdae_vector", "--category", "brick"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "digit" in bad.stderr


def test_denoising_auto_keeps_the_training_validation_prefers(demo_root, tmp_path) -> None:
    """``auto`` trains both from the same seed and keeps the one with the better validation criterion, bit for bit."""
    common = dict(data_root=demo_root, category="brick", image_size=64, epochs=2, batch_size=8, eval_every=1,
                  max_steps_per_epoch=2, seed=0)
    auto = train(TrainConfig(output=tmp_path / "auto", denoising="auto", **common), progress=False)
    alone = {d: train(TrainConfig(output=tmp_path / d, denoising=d, **common), progress=False) for d in DENOISING_AUTO}
    criterion = {d: r.stats.validation_metrics.image_auroc + 1e-3 * r.stats.validation_metrics.pixel_auroc
                 for d, r in alone.items()}
    chosen = auto.stats.training.denoising
    assert chosen == max(DENOISING_AUTO, key=lambda d: criterion[d])  # the first of equals: the paper's training
    kept, same = auto.model.state_dict(), alone[chosen].model.state_dict()
    assert all(torch.equal(kept[k], same[k]) for k in kept)
    assert auto.stats.test_metrics == alone[chosen].stats.test_metrics
    # The run folder names the choice, and rebuilds from its saved configuration.
    _, config = load_checkpoint(auto.paths.root)
    assert config.denoising == chosen
    assert [c.denoising for c in denoising_candidates(TrainConfig(denoising="auto"))] == list(DENOISING_AUTO)
    assert [c.denoising for c in denoising_candidates(TrainConfig(denoising="auto", method="mkd"))] == ["off"]
    assert denoising_candidates(TrainConfig(denoising="broad"))[0].denoising == "broad"
