"""The synthetic ECG windows: deterministic, every anomaly kind changes the signal where it is labelled and only
there, splits from different records, and the dataset on disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.signals import ecg
from training.signals.cli import main as signal_data_main
from training.signals.dataset import SignalDataConfig, load_split, write_signal_dataset


@pytest.fixture(scope="module")
def clean() -> tuple[np.ndarray, np.ndarray]:
    """One clean record: its first window and the R peaks inside it."""
    record, peaks = ecg.simulate_record(6.0, np.random.default_rng(5))
    window = record[128:128 + ecg.WINDOW].astype(np.float64)
    return window, peaks[(peaks >= 128) & (peaks < 128 + ecg.WINDOW)] - 128


def test_a_record_has_two_aligned_leads_and_a_plausible_rhythm() -> None:
    record, peaks = ecg.simulate_record(10.0, np.random.default_rng(0))
    assert record.shape == (10 * ecg.SAMPLING_RATE, 2) and record.dtype == np.float32
    rate = 60 * ecg.SAMPLING_RATE / np.median(np.diff(peaks))
    assert 50 <= rate <= 100  # the drawn heart rate is 55-95 bpm
    # The leads share their beats: V1's deepest deflection (its S wave) sits within 60 ms of lead II's R peak.
    for p in peaks[1:-1]:
        s = p - 8 + int(np.argmin(record[p - 8:p + 8, 1]))
        assert abs(s - p) <= 8


@pytest.mark.parametrize("kind", list(ecg.KINDS))
def test_each_kind_changes_the_signal_where_it_is_labelled_and_only_there(kind: str, clean) -> None:
    window, peaks = clean
    anomaly = None
    for seed in range(20):  # a beat kind needs a whole beat in the window; some draws find none
        anomaly = ecg.KINDS[kind](window, peaks, np.random.default_rng(seed))
        if anomaly is not None:
            break
    assert anomaly is not None, kind
    changed = np.abs(anomaly.signal - window).max(1) > 1e-9
    labelled = anomaly.labelled
    assert labelled.any() and not (changed & ~labelled).any(), kind   # nothing changes outside the label
    assert changed[labelled].mean() > 0.5, kind                       # and most labelled steps did change
    runs = np.flatnonzero(np.diff(np.concatenate([[0], labelled.astype(int), [0]])))
    assert len(runs) <= 4, kind  # one event: a segment (a premature beat: its own and the removed one)


def test_windows_are_deterministic_and_labelled_by_kind() -> None:
    a = ecg.make_windows(2, 6, seed=3, anomaly_fraction=1.0)
    b = ecg.make_windows(2, 6, seed=3, anomaly_fraction=1.0)
    assert a.signals.shape == (12, ecg.WINDOW, 2) and a.labels.shape == a.kinds.shape == (12, ecg.WINDOW)
    for name in ("signals", "labels", "kinds"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.labels.any(1).all()  # every window got an anomaly
    np.testing.assert_array_equal(a.labels, (a.kinds > 0).astype(np.uint8))
    assert {len(np.unique(k[k > 0])) for k in a.kinds} == {1}  # one kind per window
    none = ecg.make_windows(1, 4, seed=3, anomaly_fraction=0.0)
    assert not none.labels.any()
    with pytest.raises(ValueError, match="unknown anomaly kinds"):
        ecg.make_windows(1, 1, seed=0, kinds=("spike",))


def test_the_dataset_on_disk_and_its_command(tmp_path: Path, capsys) -> None:
    config = SignalDataConfig(records={"train": 2, "validation": 1, "test": 1}, windows_per_record=4, seed=1)
    meta = write_signal_dataset(tmp_path / "ecg", config)
    assert meta["kinds"][0] == "normal" and meta["kinds"][1:] == list(ecg.KINDS)
    train, test = load_split(tmp_path / "ecg", "train"), load_split(tmp_path / "ecg", "test")
    assert len(train.signals) == 8 and len(test.signals) == 4
    assert not np.isclose(train.signals[:4, :10], test.signals[:4, :10]).all()  # another record, another seed
    assert json.loads((tmp_path / "ecg" / "meta.json").read_text())["splits"]["train"]["windows"] == 8
    # The plots are the renderer's images of the stored windows, bit for bit.
    from kdcore.imageio import read_image
    from kdcore.series_plot import render_plot

    plots = sorted((tmp_path / "ecg" / "test" / "plots").glob("*.png"))
    assert len(plots) == 4
    np.testing.assert_array_equal(read_image(plots[2]), render_plot(test.signals[2]))
    with pytest.raises(FileNotFoundError, match="kd-signal-data"):
        load_split(tmp_path / "nothing", "train")
    rc = signal_data_main(["--root", str(tmp_path / "cli"), "--train-records", "1", "--validation-records", "1",
                           "--test-records", "1", "--windows-per-record", "2", "--kinds", "flatline", "--no-plots"])
    out = capsys.readouterr().out
    assert rc == 0 and "train: 2 windows" in out and (tmp_path / "cli" / "test" / "kinds.npy").is_file()
    assert not (tmp_path / "cli" / "test" / "plots").exists()
    kinds = load_split(tmp_path / "cli", "train").kinds
    assert set(np.unique(kinds)) <= {0, list(ecg.KINDS).index("flatline") + 1}
