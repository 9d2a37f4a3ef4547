"""Real ECG records in the WFDB format (``.hea`` + ``.dat`` and an annotation file), cut like the synthetic data.

The source read MIT-BIH records with ``wfdb.rdrecord`` / ``wfdb.rdann(..., "atr")`` and labelled, in each 2 s
window, every annotation sample as anomalous whatever its symbol. Here which symbols are anomalous is an option:
by default the beats outside the normal class (AAMI's supraventricular, ventricular and fusion beats:
:data:`ANOMALOUS_BEATS`), or ``"all"`` for the source's labels. A record at another rate (MIT-BIH: 360 Hz) is
resampled to the family's 128 Hz (``scipy.signal.resample_poly``, the rule of :mod:`kdcore.series_io`, which the
client's ``score-signal`` uses too) and its annotations moved to the nearest step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdcore.series_io import resample, resample_ratio
from training.signals.ecg import SAMPLING_RATE, WINDOW, Windows

#: Beat symbols labelled anomalous by default: atrial / aberrated / nodal / supraventricular premature beats,
#: premature ventricular contractions, ventricular escape and fusion beats.
ANOMALOUS_BEATS = frozenset({"A", "a", "J", "S", "V", "E", "F"})


def load_record(stem: Path | str, *, anomalous: str | frozenset[str] = ANOMALOUS_BEATS,
                channels: tuple[int, ...] = (0, 1), annotation: str = "atr") -> tuple[np.ndarray, np.ndarray]:
    """A WFDB record at 128 Hz and its per-step labels.

    Args:
        stem: The record's path without extension (``.../100`` for ``100.hea``, ``100.dat``, ``100.atr``).
        anomalous: Annotation symbols labelled 1, or ``"all"`` (every annotation: the source's labels).
        channels: The signal channels to keep, in order.
        annotation: The annotation file's extension.

    Returns:
        ``(T, C)`` float32 signal in the record's physical units and ``(T,)`` uint8 labels.

    Raises:
        FileNotFoundError: The record or its annotations are missing.
        ValueError: A channel the record does not have.
    """
    import wfdb

    stem = str(stem)
    if not Path(stem + ".hea").is_file():
        raise FileNotFoundError(f"no WFDB record {stem}.hea")
    record = wfdb.rdrecord(stem)
    if max(channels) >= record.n_sig:
        raise ValueError(f"{stem}: channels {list(channels)} asked, the record has {record.n_sig}")
    if not Path(f"{stem}.{annotation}").is_file():
        raise FileNotFoundError(f"no annotation file {stem}.{annotation}")
    notes = wfdb.rdann(stem, annotation)
    ratio = resample_ratio(record.fs, SAMPLING_RATE)
    signal = resample(record.p_signal[:, list(channels)], record.fs, SAMPLING_RATE)
    labels = np.zeros(len(signal), np.uint8)
    samples = np.round(np.asarray(notes.sample) * float(ratio)).astype(np.int64)
    chosen = np.array([anomalous == "all" or symbol in anomalous for symbol in notes.symbol], dtype=bool)
    inside = chosen & (samples >= 0) & (samples < len(labels))
    labels[samples[inside]] = 1
    return signal.astype(np.float32), labels


def cut_windows(signal: np.ndarray, labels: np.ndarray, *, window: int = WINDOW) -> Windows:
    """Consecutive windows of a record (a last partial window is dropped); kinds are the labels themselves."""
    count = len(signal) // window
    signals = signal[:count * window].reshape(count, window, signal.shape[1])
    steps = labels[:count * window].reshape(count, window)
    return Windows(np.ascontiguousarray(signals, dtype=np.float32), steps.astype(np.uint8), steps.astype(np.uint8))
