"""The WFDB loader on a small record the test writes with wfdb itself: resampling, labels by symbol, windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.signals.records import cut_windows, load_record


@pytest.fixture()
def record(tmp_path: Path) -> Path:
    """A 10 s, 360 Hz, two-channel record (MIT-BIH's rate) with normal and ventricular beat annotations."""
    import wfdb

    fs, seconds = 360, 10
    t = np.arange(fs * seconds) / fs
    signal = np.stack([np.sin(2 * np.pi * 1.2 * t), 0.5 * np.cos(2 * np.pi * 1.2 * t)], 1)
    wfdb.wrsamp("r100", fs=fs, units=["mV", "mV"], sig_name=["MLII", "V1"], p_signal=signal, fmt=["212", "212"],
                write_dir=str(tmp_path))
    samples = np.array([360, 720, 1080, 1440, 2160, 2880])
    wfdb.wrann("r100", "atr", samples, np.array(["N", "N", "V", "N", "A", "+"]), write_dir=str(tmp_path))
    return tmp_path / "r100"


def test_a_record_is_resampled_to_128_hz_and_labelled_by_symbol(record: Path) -> None:
    signal, labels = load_record(record)
    assert signal.shape == (1280, 2) and signal.dtype == np.float32
    t = np.arange(1280) / 128
    np.testing.assert_allclose(signal[50:-50, 0], np.sin(2 * np.pi * 1.2 * t)[50:-50], atol=0.02)
    # Default: the beats outside the normal class (V at 1080, A at 2160 samples of 360 Hz) and nothing else.
    assert np.flatnonzero(labels).tolist() == [round(1080 * 128 / 360), round(2160 * 128 / 360)]
    _, every = load_record(record, anomalous="all")  # the source's labels: every annotation, the rhythm mark too
    assert len(np.flatnonzero(every)) == 6
    _, ventricular = load_record(record, anomalous=frozenset({"V"}))
    assert np.flatnonzero(ventricular).tolist() == [384]


def test_windows_and_clear_errors(record: Path) -> None:
    windows = cut_windows(*load_record(record))
    assert windows.signals.shape == (5, 256, 2) and windows.labels.shape == (5, 256)
    assert windows.labels.sum() == 2
    with pytest.raises(ValueError, match="channels"):
        load_record(record, channels=(0, 2))
    with pytest.raises(FileNotFoundError, match="no WFDB record"):
        load_record(record.with_name("missing"))
    with pytest.raises(FileNotFoundError, match="annotation"):
        load_record(record, annotation="qrs")
