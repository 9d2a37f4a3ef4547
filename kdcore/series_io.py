"""The time-series family's sampling rate, its one resampling rule and its dataset folder's layout, shared by
training, the client and the console.

Training reads WFDB records at any rate (MIT-BIH: 360 Hz) and brings them to :data:`SAMPLING_RATE`
(``training/signals/records.py``); the client's ``score-signal`` reads records the same way before it sends their
windows, so a served detector sees a record exactly as training would have. The rule: the ratio of the two rates
as a fraction (the source rate rounded to whole hertz, the fraction limited to denominators up to 1000), then
polyphase resampling exactly as ``scipy.signal.resample_poly`` does it with its defaults (a Kaiser-windowed sinc
low-pass, beta 5, 10 zero crossings per side at the lower of the two rates; zero padding at the ends), written
here in numpy because the client's base install has no scipy. A test holds it to scipy's output (1e-12).

numpy and the standard library only.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np

#: Samples per second of every time-series detector's input (the source's 128 Hz).
SAMPLING_RATE = 128

#: A time-series dataset folder (written by ``kd-signal-data``): ``<root>/meta.json`` and, per split,
#: ``<root>/<split>/<array>.npy`` with signals ``(N, T, C)`` float32 (mV), labels ``(N, T)`` uint8 (1 on anomalous
#: steps) and kinds ``(N, T)`` uint8 (the index into meta.json's "kinds"; 0 normal).
SPLITS = ("train", "validation", "test")
SPLIT_ARRAYS = ("signals", "labels", "kinds")
DATASET_META = "meta.json"


def read_split(root: Path | str, split: str) -> dict[str, np.ndarray]:
    """One split of a time-series dataset folder: ``{"signals": ..., "labels": ..., "kinds": ...}``.

    Raises:
        FileNotFoundError: The dataset or the split is not there (write it with ``kd-signal-data``).
    """
    folder = Path(root) / split
    if not (folder / "signals.npy").is_file():
        raise FileNotFoundError(f"no '{split}' split in {root} (write one with kd-signal-data --root {root})")
    return {name: np.load(folder / f"{name}.npy") for name in SPLIT_ARRAYS}


def read_dataset_meta(root: Path | str) -> dict:
    """The dataset folder's ``meta.json`` (sampling rate, window, leads, kind names, counts); ``{}`` if absent."""
    path = Path(root) / DATASET_META
    return json.loads(path.read_text()) if path.is_file() else {}


def resample_ratio(rate: float, target: int = SAMPLING_RATE) -> Fraction:
    """``target / rate`` as the fraction :func:`resample` uses (a sample ``i`` lands on step ``round(i * ratio)``).

    Raises:
        ValueError: A rate that is not positive.
    """
    if not rate > 0 or not target > 0:
        raise ValueError(f"sampling rates must be positive, got {rate} -> {target}")
    return Fraction(target, int(round(rate))).limit_denominator(1000)


def _kaiser_lowpass(up: int, down: int) -> tuple[np.ndarray, int]:
    """``scipy.signal.firwin(2 * half + 1, 1 / max(up, down), window=("kaiser", 5.0)) * up`` and ``half``: the
    filter ``resample_poly`` designs (cut-off at the lower Nyquist rate, unit gain at DC before the ``up`` gain)."""
    rate = max(up, down)
    half = 10 * rate
    taps = np.arange(2 * half + 1, dtype=np.float64) - half
    h = np.sinc(taps / rate) / rate * np.kaiser(2 * half + 1, 5.0)
    return h / h.sum() * up, half


def resample(signal: np.ndarray, rate: float, target: int = SAMPLING_RATE) -> np.ndarray:
    """``signal`` ``(T, C)`` (or ``(T,)``) sampled at ``rate`` Hz, brought to ``target`` Hz along axis 0: float64,
    ``ceil(T * ratio)`` steps (unchanged, as float64, when the ratio is 1).

    Raises:
        ValueError: A rate that is not positive, or an empty signal.
    """
    ratio = resample_ratio(rate, target)
    x = np.asarray(signal, dtype=np.float64)
    if ratio == 1:
        return x
    if x.shape[0] == 0:
        raise ValueError("cannot resample an empty signal")
    up, down = ratio.numerator, ratio.denominator
    h, half = _kaiser_lowpass(up, down)
    # As resample_poly: the filter delayed by `pre` zeros so that output step 0 sits on input sample 0, and
    # `remove` outputs dropped from the front of upfirdn's (upsample by zeros, filter, keep every down-th) result.
    pre = down - half % down
    h = np.concatenate([np.zeros(pre), h])
    remove = (half + pre) // down
    steps = -(-len(x) * up // down)
    # Polyphase form of upfirdn: output i sums h[i*down - t*up] * x[t]; with j = i*down = base*up + phase, the
    # taps are h[phase + q*up] against x[base - q], q = 0, 1, ...
    j = (np.arange(steps) + remove) * down
    base, phase = j // up, j % up
    per_phase = -(-len(h) // up)
    bank = np.zeros((per_phase * up,))
    bank[:len(h)] = h
    bank = bank.reshape(per_phase, up)  # bank[q, p] = h[p + q*up]
    front, back = per_phase, max(0, int(base.max()) - len(x) + 1)
    padded = np.concatenate([np.zeros((front, *x.shape[1:])), x, np.zeros((back, *x.shape[1:]))])
    out = np.zeros((steps, *x.shape[1:]))
    weight_shape = (steps,) + (1,) * (x.ndim - 1)
    for q in range(per_phase):
        out += bank[q, phase].reshape(weight_shape) * padded[base - q + front]
    return out
