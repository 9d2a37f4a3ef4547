"""The stats JSON schema and the 0..1 calibration."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kdcore.stats import (
    Calibration,
    Metrics,
    ModelInfo,
    Normalization,
    ScoreStatistics,
    Stats,
    StatsError,
    Threshold,
    ThresholdMethod,
    TrainingFacts,
    load_stats,
    parse_stats,
    save_stats,
)
from training.calibrate import choose_threshold, fit_calibration


def make_stats(threshold: float = 1.0, good: np.ndarray | None = None) -> Stats:
    good = np.linspace(0.2, 0.9, 50) if good is None else good
    image = ScoreStatistics.of(good)
    thr = Threshold(value=threshold, method=ThresholdMethod.F1_OPTIMAL, validation_f1=0.9, num_samples=40)
    pix_thr = Threshold(value=0.5, method=ThresholdMethod.GOOD_QUANTILE, quantile=0.999, num_samples=1000)
    pixels = ScoreStatistics.of(good / 3)
    return Stats(
        model=ModelInfo(method="rd4ad", backbone="efficientnet_lite0", input_size=64, parameters=10, trainable_parameters=5),
        normalization=Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        image_scores=image,
        pixel_scores=pixels,
        image_threshold=thr,
        pixel_threshold=pix_thr,
        image_calibration=fit_calibration(threshold, image),
        pixel_calibration=fit_calibration(0.5, pixels),
        validation_metrics=Metrics(split="validation", num_good=10, num_anomalous=10, image_auroc=0.9),
        test_metrics=Metrics(split="test", num_good=10, num_anomalous=10, image_auroc=0.95),
        training=TrainingFacts(
            epochs=1, best_epoch=1, steps=1, seconds=1.0, seed=0, batch_size=2, learning_rate=0.005, final_loss=0.1,
            dataset="data/demo/brick", dataset_fingerprint="0" * 64, num_train=10, torch_version="2.13.0",
        ),
        created_at="2026-11-25T00:00:00+00:00",
    )


@pytest.mark.parametrize("threshold", [0.3, 1.0, 2.7, 40.0])
def test_calibration_properties(threshold: float) -> None:
    good = np.random.default_rng(0).gamma(2.0, 0.1, 500) + 0.2
    cal = fit_calibration(threshold, ScoreStatistics.of(good))
    assert cal.apply(np.array([threshold]))[0] == 0.5  # exactly
    raw = np.linspace(-100, 100, 20001)
    p = cal.apply(raw)
    assert p.dtype == np.float32 and p.min() >= 0 and p.max() <= 1
    assert np.all(np.diff(p) >= 0)  # monotonic (float32 may saturate, never reverse)
    assert cal.apply(np.array([threshold - 1e-3 * cal.scale]))[0] < 0.5 < cal.apply(np.array([threshold + 1e-3 * cal.scale]))[0]
    median_good = float(np.median(good))
    if threshold > median_good:
        assert cal.apply(np.array([median_good]))[0] == pytest.approx(0.1, abs=1e-5)  # well below 0.5


def test_calibration_survives_a_threshold_below_the_good_median() -> None:
    cal = fit_calibration(0.1, ScoreStatistics.of(np.linspace(0.5, 1.5, 11)))
    assert cal.scale > 0 and cal.apply(np.array([0.1]))[0] == 0.5


def test_threshold_is_f1_optimal_on_validation_or_a_good_quantile() -> None:
    labels = np.array([0] * 5 + [1] * 5)
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.8, 0.9, 1.0, 1.1])
    thr = choose_threshold(scores[:5], labels, scores, good_quantile=0.99)
    assert thr.method is ThresholdMethod.F1_OPTIMAL and thr.validation_f1 == 1.0
    assert 0.5 < thr.value <= 0.7
    good = np.arange(100, dtype=float)
    thr = choose_threshold(good, np.zeros(10), np.ones(10), good_quantile=0.99)
    assert thr.method is ThresholdMethod.GOOD_QUANTILE and thr.quantile == 0.99
    assert thr.value == pytest.approx(np.quantile(good, 0.99))


def test_round_trip(tmp_path) -> None:
    stats = make_stats()
    path = save_stats(stats, tmp_path / "stats.json")
    assert load_stats(path, input_size=64, backbone="efficientnet_lite0") == stats
    assert not list(tmp_path.glob(".*.tmp"))


def _mutate(stats: Stats, dotted: str, value) -> str:
    doc = json.loads(stats.model_dump_json())
    node = doc
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[leaf]
    else:
        node[leaf] = value
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_calibration.scale", -1.0),
        ("image_calibration.scale", KeyError),
        ("image_scores.count", 0),
        ("model.input_size", "big"),
        ("normalization.std", [0.5, 0.0, 0.5]),
        ("test_metrics.split", KeyError),
        ("image_threshold.method", "guess"),
        ("training.surprise", 1),
    ],
)
def test_malformed_file_names_the_field(field: str, value) -> None:
    with pytest.raises(StatsError, match=f"field '{field}"):
        parse_stats(_mutate(make_stats(), field, value))


def test_mismatches_name_the_field(tmp_path) -> None:
    path = save_stats(make_stats(), tmp_path / "stats.json")
    with pytest.raises(StatsError, match="field 'model.input_size'"):
        load_stats(path, input_size=256)
    with pytest.raises(StatsError, match="field 'model.backbone'"):
        load_stats(path, backbone="wide_resnet50_2")
    with pytest.raises(StatsError, match="field 'schema_version'"):
        parse_stats(_mutate(make_stats(), "schema_version", 99))
    with pytest.raises(StatsError, match="image_calibration.threshold"):
        parse_stats(_mutate(make_stats(), "image_calibration.threshold", 1.5))
    with pytest.raises(StatsError, match="not valid JSON"):
        parse_stats("{ nope")
    with pytest.raises(StatsError, match="cannot read"):
        load_stats(tmp_path / "missing.json")


def test_nan_is_rejected() -> None:
    doc = _mutate(make_stats(), "image_calibration.threshold", math.nan).replace("NaN", "NaN")
    with pytest.raises(StatsError, match="image_calibration.threshold"):
        parse_stats(doc)


def test_formula_in_the_file_is_the_one_applied() -> None:
    cal = Calibration(threshold=2.0, scale=0.5)
    raw = np.array([1.0, 1.5, 2.0, 2.5, 3.0])
    expected = 1 / (1 + np.exp(-math.log(9) * (raw - 2.0) / 0.5))
    np.testing.assert_allclose(cal.apply(raw), expected, atol=1e-6)
    assert "tanh" in json.loads(cal.model_dump_json())["formula"]


def _series(**model: object) -> str:
    """A time-series stats document: no normalization, per-step fields as the pixel ones, leads in ``channels``."""
    doc = json.loads(make_stats().model_dump_json())
    doc["normalization"] = None
    doc["model"].update({"method": "recurrent_student", "input_kind": "signal", "input_size": 256, "channels": 2,
                         **model})
    return json.dumps(doc)


def test_a_series_model_needs_its_leads_and_per_step_fields_and_no_normalization() -> None:
    stats = parse_stats(_series(plot_size=256))
    assert stats.model.channels == 2 and stats.model.plot_size == 256
    for field, value in (("model.channels", None), ("pixel_calibration", None)):
        doc = json.loads(_series())
        section, leaf = field.split(".") if "." in field else (None, field)
        (doc[section] if section else doc)[leaf] = value
        with pytest.raises(StatsError, match=f"field '{field}'"):
            parse_stats(json.dumps(doc))
    with pytest.raises(StatsError, match="field 'normalization'"):
        parse_stats(_mutate(parse_stats(_series()), "normalization", {"mean": [0.5] * 3, "std": [0.5] * 3}))
    image = json.loads(make_stats().model_dump_json())
    image["model"]["plot_size"] = 256  # only a series model is drawn as a plot
    with pytest.raises(StatsError, match="field 'model.plot_size'"):
        parse_stats(json.dumps(image))
