"""Synthetic two-lead ECG windows with injected, per-step-labelled anomalies (the time-series family's data).

Records come from neurokit2's ``ecg_simulate`` (ECGSYN, McSharry et al. 2003) at :data:`SAMPLING_RATE`: a
lead-II-like lead with ECGSYN's default wave amplitudes and a V1-like lead (small R, deep S, inverted T) from the
same seed, so both share one RR series and their beats line up, as the two leads of a MIT-BIH record do
(neurokit2's own twelve-lead model gives QRS complexes smaller than the T waves at this rate, so it is not used).
Each record has its own heart rate, variability and noise, drawn from the seed. Records are
cut into windows of :data:`WINDOW` steps; a window becomes anomalous with probability ``anomaly_fraction`` and
then receives one anomaly of a kind drawn from :data:`KINDS`, injected into the window and labelled step by step
(the kind's index in ``kinds``, 0 for normal steps). Every kind changes the signal where it is labelled and only
there, so a detector is scored on the change it should see.

The kinds, each with its own label:

* ``premature_beat``: an ectopic beat, earlier than the next sinus beat would come (55-75% of the RR interval),
  wider (QRS stretched 1.5-2x) and larger (1.3-1.8x), discordant on V1; the sinus beat it replaces is removed.
* ``missed_beat``: a beat's QRS-T complex removed (a pause on the baseline).
* ``baseline_wander``: a 0.5-2 Hz swing of 0.4-1.0 mV under a Hann window, 0.5-1.5 s.
* ``amplitude_drop``: the signal scaled to 15-40% for 0.4-1.25 s (a loose electrode).
* ``flatline``: the signal held at its last value for 0.2-0.75 s (a dropout).
* ``noise_burst``: the source's "dense" anomaly, Gaussian noise (0.15-0.4 mV) on 30 consecutive samples.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Samples per second (the source's 128 Hz).
SAMPLING_RATE = 128
#: Steps per window (2 s at 128 Hz).
WINDOW = 256
#: The two leads: their names, and ECGSYN's wave amplitudes (P, Q, R, S, T) for each (None: its defaults).
LEADS: dict[str, tuple[float, float, float, float, float] | None] = {"II": None, "V1": (0.6, -3.0, 9.0, -22.0, -0.4)}
#: A beat's extent around its R peak, in samples: 0.1 s before, 0.35 s after (QRS and T wave).
BEAT_BEFORE, BEAT_AFTER = 13, 45


@dataclass(frozen=True)
class Anomaly:
    """What an injector did: the window's new samples and the steps it labels."""

    signal: np.ndarray
    labelled: np.ndarray
    """``(T,)`` bool."""


def _baseline(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The straight line between ``x[start]`` and ``x[stop - 1]`` per channel: a beat removed down to baseline."""
    t = np.linspace(0.0, 1.0, stop - start)[:, None]
    return x[start] * (1 - t) + x[stop - 1] * t


def _span(length: int, start: int, stop: int) -> np.ndarray:
    """The ``(length,)`` label of one event on ``[start, stop)``."""
    labelled = np.zeros(length, bool)
    labelled[start:stop] = True
    return labelled


def _beat_span(peak: int, length: int) -> tuple[int, int] | None:
    start, stop = peak - BEAT_BEFORE, peak + BEAT_AFTER
    return (start, stop) if start >= 0 and stop <= length else None


def premature_beat(x: np.ndarray, peaks: np.ndarray, rng: np.random.Generator) -> Anomaly | None:
    """An earlier, wider, larger beat in place of a sinus beat (``None`` when no beat fits the window)."""
    candidates = [i for i in range(1, len(peaks)) if _beat_span(int(peaks[i]), len(x))]
    if not candidates:
        return None
    i = int(rng.choice(candidates))
    start, stop = _beat_span(int(peaks[i]), len(x))
    template = x[start:stop].copy() - _baseline(x, start, stop)
    out = x.copy()
    out[start:stop] = _baseline(x, start, stop)  # the sinus beat is gone
    stretch, gain = rng.uniform(1.5, 2.0), rng.uniform(1.3, 1.8)
    n = int(round((stop - start) * stretch))
    source = np.linspace(0, stop - start - 1, n)
    ectopic = np.stack([np.interp(source, np.arange(stop - start), template[:, c]) for c in range(x.shape[1])], 1)
    ectopic *= gain
    ectopic[:, 1] *= -1.0  # discordant on V1, as a ventricular beat
    r = int(peaks[i - 1] + rng.uniform(0.55, 0.75) * (peaks[i] - peaks[i - 1]))
    new_start = r - int(round(BEAT_BEFORE * stretch))
    new_start, new_stop = max(new_start, 0), min(new_start + n, len(x))
    offset = new_start - (r - int(round(BEAT_BEFORE * stretch)))
    out[new_start:new_stop] += ectopic[offset:offset + new_stop - new_start]
    labelled = np.zeros(len(x), bool)
    labelled[new_start:new_stop] = True
    labelled[start:stop] = True  # the missing sinus beat is part of the event
    return Anomaly(out, labelled)


def missed_beat(x: np.ndarray, peaks: np.ndarray, rng: np.random.Generator) -> Anomaly | None:
    """A beat's QRS-T complex replaced by the baseline."""
    spans = [s for s in (_beat_span(int(p), len(x)) for p in peaks) if s]
    if not spans:
        return None
    start, stop = spans[int(rng.integers(len(spans)))]
    out = x.copy()
    out[start:stop] = _baseline(x, start, stop) + rng.normal(0, 0.01, (stop - start, x.shape[1]))
    return Anomaly(out, _span(len(x), start, stop))


def _segment(length: int, rng: np.random.Generator, shortest: int, longest: int) -> tuple[int, int]:
    n = int(rng.integers(shortest, longest + 1))
    start = int(rng.integers(0, length - n + 1))
    return start, start + n


def baseline_wander(x: np.ndarray, peaks: np.ndarray, rng: np.random.Generator) -> Anomaly:
    """A slow swing of the baseline under a Hann window."""
    start, stop = _segment(len(x), rng, SAMPLING_RATE // 2, 3 * SAMPLING_RATE // 2)
    t = np.arange(stop - start) / SAMPLING_RATE
    frequency, amplitude = rng.uniform(0.5, 2.0), rng.uniform(0.4, 1.0)
    phases = rng.uniform(0, 2 * np.pi, x.shape[1])
    envelope = np.hanning(stop - start)
    swing = amplitude * np.sin(2 * np.pi * frequency * t[:, None] + phases) * envelope[:, None]
    out = x.copy()
    out[start:stop] += swing
    return Anomaly(out, _span(len(x), start, stop))


def amplitude_drop(x: np.ndarray, peaks: np.ndarray, rng: np.random.Generator) -> Anomaly:
    """The signal scaled down around its baseline for a while."""
    start, stop = _segment(len(x), rng, 48, 160)
    factor = np.ones(len(x))
    factor[start:stop] = rng.uniform(0.15, 0.4)
    level = np.median(x, axis=0)
    out = level + (x - level) * factor[:, None]
    return Anomaly(out, _span(len(x), start, stop))


def flatline(x: np.ndarray, peaks: np.ndarray, rng: np.random.Generator) -> Anomaly:
    """The signal held at its last value (a dropout)."""
    start, stop = _segment(len(x), rng, 24, 96)
    out = x.copy()
    out[start:stop] = x[max(start - 1, 0)] + rng.normal(0, 0.003, (stop - start, x.shape[1]))
    return Anomaly(out, _span(len(x), start, stop))


def noise_burst(x: np.ndarray, peaks: np.ndarray, rng: np.random.Generator) -> Anomaly:
    """Gaussian noise on 30 consecutive samples (the source's dense variant)."""
    start, stop = _segment(len(x), rng, 30, 30)
    out = x.copy()
    out[start:stop] += rng.normal(0, rng.uniform(0.15, 0.4), (stop - start, x.shape[1]))
    return Anomaly(out, _span(len(x), start, stop))


Injector = Callable[[np.ndarray, np.ndarray, np.random.Generator], "Anomaly | None"]
#: Every anomaly kind by its label name; a kind's label index is its position here plus one (0 is normal).
KINDS: dict[str, Injector] = {
    "premature_beat": premature_beat,
    "missed_beat": missed_beat,
    "baseline_wander": baseline_wander,
    "amplitude_drop": amplitude_drop,
    "flatline": flatline,
    "noise_burst": noise_burst,
}


def simulate_record(seconds: float, rng: np.random.Generator, *, noise: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """One two-lead record ``(T, 2)`` float32 in mV and its R peaks (sample indices), its rhythm drawn from ``rng``."""
    import neurokit2 as nk  # the training extra; the family's serving path never simulates

    heart_rate, variability = rng.uniform(55, 95), rng.uniform(1, 5)
    seed = int(rng.integers(2**31 - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # neurokit2's resampling and pandas' chained-assignment notices
        leads = [nk.ecg_simulate(duration=int(np.ceil(seconds)), sampling_rate=SAMPLING_RATE, noise=noise,
                                 heart_rate=heart_rate, heart_rate_std=variability, method="ecgsyn", random_state=seed,
                                 **({"ai": amplitudes} if amplitudes else {}))
                 for amplitudes in LEADS.values()]
        signal = np.stack(leads, 1).astype(np.float32)
        _, info = nk.ecg_peaks(signal[:, 0], sampling_rate=SAMPLING_RATE)
    return signal, np.asarray(info["ECG_R_Peaks"], dtype=np.int64)


@dataclass(frozen=True)
class Windows:
    """Windows of a split: signals, per-step labels and kinds."""

    signals: np.ndarray
    """``(N, T, C)`` float32."""
    labels: np.ndarray
    """``(N, T)`` uint8, 1 on anomalous steps."""
    kinds: np.ndarray
    """``(N, T)`` uint8, the kind's index in :data:`KINDS` plus one, 0 on normal steps."""


def make_windows(records: int, windows_per_record: int, seed: int, *, anomaly_fraction: float = 0.5,
                 kinds: tuple[str, ...] = tuple(KINDS), noise: float = 0.02) -> Windows:
    """Simulate ``records`` records, cut each into windows, inject anomalies into a fraction of them.

    Args:
        records: Records to simulate (each with its own rhythm).
        windows_per_record: Consecutive windows cut from each record.
        seed: Everything is drawn from it: the same seed gives the same windows.
        anomaly_fraction: Probability that a window gets one anomaly.
        kinds: The anomaly kinds to draw from (names of :data:`KINDS`).
        noise: neurokit2's noise level.

    Raises:
        ValueError: An unknown kind.
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown anomaly kinds {unknown}; known: {sorted(KINDS)}")
    rng = np.random.default_rng(seed)
    names = list(KINDS)
    signals, labels, kind_steps = [], [], []
    for _ in range(records):
        # A second of margin on each side: the simulation's first and last beats are less regular.
        record, peaks = simulate_record(windows_per_record * WINDOW / SAMPLING_RATE + 2.0, rng, noise=noise)
        for w in range(windows_per_record):
            start = SAMPLING_RATE + w * WINDOW
            x = record[start:start + WINDOW].astype(np.float64)
            inside = peaks[(peaks >= start) & (peaks < start + WINDOW)] - start
            steps = np.zeros(WINDOW, np.uint8)
            if rng.random() < anomaly_fraction:
                # A beat kind that finds no whole beat in this window falls back to the next kind drawn.
                for kind in rng.permutation(list(kinds)):
                    anomaly = KINDS[str(kind)](x, inside, rng)
                    if anomaly is not None:
                        x, steps = anomaly.signal, anomaly.labelled.astype(np.uint8) * (names.index(str(kind)) + 1)
                        break
            signals.append(x.astype(np.float32))
            kind_steps.append(steps)
            labels.append((steps > 0).astype(np.uint8))
    return Windows(np.stack(signals), np.stack(labels), np.stack(kind_steps))
