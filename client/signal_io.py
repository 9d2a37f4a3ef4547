"""Files in and out of ``client.py score-signal``: signal records read at the model's rate, rows, plots.

Reading (:func:`read_signal`), one record per file, every value in the record's physical units (mV):

* ``.npy``: a float (or integer) array ``(steps, leads)``; a 1-D array is one lead.
* ``.csv``: one row per step, one column per lead; ``,``, ``;``, tab or spaces between values; ``#`` starts a
  comment. The first row is a header of lead names when any of its fields is not a number (``II,V1``); without
  one the leads are called ``0``, ``1``, ... A time or index column is a column like any other: leave it out
  with ``--channels``.
* WFDB: the record's ``.hea`` (or its ``.dat``, or its stem ``.../100``) read with ``wfdb.rdrecord`` (the
  ``signals`` extra), physical units, lead names from the header.

``.npy`` and ``.csv`` are taken to be sampled at the model's rate (128 Hz) unless a rate is given; a WFDB header
states its own. Any other rate is brought to 128 Hz by :func:`kdcore.series_io.resample`, the rule training uses
for WFDB records. A record with NaN or infinite values is refused before resampling (which would smear them), and
the error names the first one.

Writing: :class:`RowWriter` streams CSV and JSON-lines rows (flushed as written, so an interrupted run keeps
them); :func:`render_signal_plot` draws a record's leads with its stitched per-step score beneath and the
anomalous intervals shaded (OpenCV, no fonts or GUI backend).
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TextIO

import cv2
import numpy as np

from client.heatmaps import ANOMALOUS_RGB, NORMAL_RGB
from kdcore.contract import ANOMALOUS, DECISION
from kdcore.intervals import Interval
from kdcore.series_io import SAMPLING_RATE, resample

#: File types searched for in folders and globs (a WFDB record is found by its header).
SIGNAL_SUFFIXES = (".npy", ".csv", ".hea")
WFDB_HEADER, WFDB_DATA = ".hea", ".dat"


class SignalReadError(ValueError):
    """A record that cannot be read or cannot be scored; the message says why (and is the record's error row)."""


@dataclass
class Signal:
    """One record at the model's rate."""

    path: str
    values: np.ndarray = field(repr=False)
    """``(steps, leads)`` float32 at :data:`~kdcore.series_io.SAMPLING_RATE`."""
    leads: list[str]
    rate: float
    """The file's own sampling rate, Hz (before resampling)."""

    @property
    def steps(self) -> int:
        """Steps at the model's rate."""
        return int(self.values.shape[0])


# ---------------------------------------------------------------------------------------------- which files
def _wfdb_stem(path: Path) -> Path | None:
    """The WFDB record ``path`` names (its header, its data file or its stem), or ``None``."""
    if path.suffix.lower() in (WFDB_HEADER, WFDB_DATA) and path.with_suffix(WFDB_HEADER).is_file():
        return path.with_suffix("")
    if Path(str(path) + WFDB_HEADER).is_file():
        return path
    return None


def _is_signal(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SIGNAL_SUFFIXES and not path.name.startswith(".")


def _folder(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_signal(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts[:-1]))


def expand_signal_inputs(inputs: Iterable[str | Path]) -> list[str]:
    """The records named by ``inputs``, without duplicates, in the order given (folders and globs sorted).

    Files given explicitly are kept whatever their suffix (an unknown one becomes an error row); a WFDB record may
    be given by its stem (``data/100`` for ``data/100.hea``); folders (recursively) and globs contribute
    ``.npy``, ``.csv`` and ``.hea`` files; ``@FILE`` reads one path per line from FILE.

    Raises:
        FileNotFoundError: An input matches nothing, or nothing at all was found.
    """
    inputs = list(inputs)
    found: list[str] = []
    for item in inputs:
        text = str(item)
        if text.startswith("@"):  # a list file, e.g. the not_scored.txt of an earlier run
            listed = Path(text[1:]).read_text(encoding="utf-8").splitlines()
            found += [line.strip() for line in listed if line.strip()]
            continue
        path = Path(text)
        if path.is_dir():
            found += [str(p) for p in _folder(path)]
        elif path.is_file() or _wfdb_stem(path) is not None:
            found.append(text)
        elif glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            found += [str(p) for p in matches if _is_signal(p)]
            found += [str(q) for p in matches if p.is_dir() for q in _folder(p)]
        else:
            raise FileNotFoundError(f"no such file, folder, WFDB record or pattern: {text}")
    # One row per record: a WFDB record named twice (its stem, its .hea, a folder's scan) is kept in its first form.
    keys = {}
    for item in found:
        stem = _wfdb_stem(Path(item))
        keys.setdefault(os.path.abspath(stem if stem is not None and Path(item).suffix.lower() not in (".npy", ".csv")
                                        else item), item)
    unique = list(keys.values())
    if not unique:
        raise FileNotFoundError(f"no signal files ({', '.join(SIGNAL_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    return unique


# ---------------------------------------------------------------------------------------------- reading
def parse_channels(text: str | None) -> tuple[str, ...] | None:
    """``"0,1"`` or ``"MLII,V1"`` as a tuple of entries (``None``: every lead of the file)."""
    if text is None or not text.strip():
        return None
    entries = tuple(part.strip() for part in text.split(","))
    if any(not e for e in entries):
        raise ValueError(f"channels {text!r}: an empty entry (give lead names or 0-based indices, comma-separated)")
    return entries


def _select(values: np.ndarray, leads: list[str], channels: Sequence[str] | None,
            where: str) -> tuple[np.ndarray, list[str]]:
    """The columns ``channels`` names (lead names first, else 0-based indices), in that order."""
    if channels is None:
        return values, leads
    picked = []
    for entry in channels:
        if entry in leads:
            picked.append(leads.index(entry))
        elif re.fullmatch(r"\d+", entry) and int(entry) < len(leads):
            picked.append(int(entry))
        else:
            raise SignalReadError(f"{where}: no lead {entry!r} (the file has {len(leads)}: {', '.join(leads)}; "
                                  "give names or 0-based indices)")
    return values[:, picked], [leads[i] for i in picked]


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        first, index = None, 0
        for index, line in enumerate(f):  # noqa: B007  (the header's line number is used below)
            if line.strip() and not line.lstrip().startswith("#"):
                first = line.strip()
                break
    if first is None:
        raise SignalReadError(f"{path}: the CSV file holds no rows")
    delimiter = next((d for d in (",", ";", "\t") if d in first), None)
    fields = [f.strip().strip('"').strip() for f in (first.split(delimiter) if delimiter else first.split())]
    header = any(f and not _number(f) for f in fields)
    try:
        with warnings.catch_warnings():  # a header without rows: reported below as an empty record
            warnings.simplefilter("ignore", UserWarning)
            values = np.loadtxt(path, delimiter=delimiter, skiprows=index + 1 if header else 0, ndmin=2,
                                comments="#", dtype=np.float64, quotechar='"', encoding="utf-8-sig")
    except ValueError as e:
        raise SignalReadError(f"{path}: not a CSV of numbers, one column per lead: {e}") from e
    if header and values.size and len(fields) != values.shape[1]:
        raise SignalReadError(f"{path}: the header names {len(fields)} columns, the rows have {values.shape[1]}")
    leads = fields if header else [str(i) for i in range(values.shape[1])]
    return values, leads


def _read_npy(path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SignalReadError(f"{path}: not a readable .npy array: {e}") from e
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise SignalReadError(f"{path}: a signal is a float array, got dtype {array.dtype}")
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise SignalReadError(f"{path}: a signal is (steps, leads), got shape {array.shape}")
    return array.astype(np.float64), [str(i) for i in range(array.shape[1])]


def _read_wfdb(stem: Path) -> tuple[np.ndarray, list[str], float]:
    try:
        import wfdb
    except ImportError as e:
        raise SignalReadError(f"{stem}: reading WFDB records needs the wfdb package "
                              "(pip install 'kd-anomaly-serving[signals]')") from e
    try:
        record = wfdb.rdrecord(str(stem))
    except Exception as e:  # noqa: BLE001  (wfdb raises many kinds; each becomes this record's error)
        raise SignalReadError(f"{stem}: cannot read the WFDB record: {type(e).__name__}: {e}") from e
    if record.p_signal is None or not record.fs:
        raise SignalReadError(f"{stem}: the WFDB record has no physical signal or sampling rate")
    values = np.asarray(record.p_signal, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    leads = [str(n) for n in (record.sig_name or range(values.shape[1]))]
    return values, leads, float(record.fs)


def _check_finite(values: np.ndarray, leads: list[str], rate: float, where: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        step, lead = (int(i) for i in np.argwhere(bad)[0])
        raise SignalReadError(f"{where}: {int(bad.sum())} NaN or infinite values, the first at sample {step} "
                              f"({step / rate:.3f} s) of lead {leads[lead]!r}")


def read_signal(path: str | Path, *, channels: Sequence[str] | None = None, rate: float | None = None) -> Signal:
    """One record as ``(steps, leads)`` float32 at the model's rate (see the module docstring for the formats).

    Args:
        path: A ``.npy`` or ``.csv`` file, or a WFDB record (``.hea``, ``.dat`` or the stem).
        channels: Leads to keep, in order: names or 0-based indices (``None``: all).
        rate: Sampling rate of ``.npy`` and ``.csv`` files in Hz (``None``: already 128 Hz); WFDB headers say theirs.

    Raises:
        SignalReadError: Unreadable, an unknown format, no steps, NaN or infinite values, an unknown channel.
    """
    where = str(path)
    path = Path(path)
    stem = _wfdb_stem(path)
    suffix = path.suffix.lower()
    if stem is not None and suffix not in (".npy", ".csv"):
        values, leads, rate = _read_wfdb(stem)
    elif not path.is_file():
        raise SignalReadError(f"{where}: no such file")
    elif suffix == ".npy":
        values, leads = _read_npy(path)
    elif suffix == ".csv":
        values, leads = _read_csv(path)
    else:
        raise SignalReadError(f"{where}: unknown signal format {path.suffix!r} (.npy, .csv or a WFDB record's .hea)")
    rate = float(rate or SAMPLING_RATE)
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise SignalReadError(f"{where}: the record is empty (shape {values.shape})")
    values, leads = _select(values, leads, channels, where)
    _check_finite(values, leads, rate, where)
    try:
        values = resample(values, rate, SAMPLING_RATE)
    except ValueError as e:
        raise SignalReadError(f"{where}: {e}") from e
    return Signal(where, np.ascontiguousarray(values, dtype=np.float32), leads, rate)


# ---------------------------------------------------------------------------------------------- rows out
def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 6)
    return value


class RowWriter:
    """Streams rows with fixed ``columns`` to a CSV and a JSON-lines file, flushing each; a context manager."""

    def __init__(self, csv_path: Path | None, jsonl_path: Path | None, columns: Sequence[str]) -> None:
        self.csv_path, self.jsonl_path, self.columns = csv_path, jsonl_path, list(columns)
        self._files: list[TextIO] = []
        self._csv: csv.DictWriter | None = None
        self._jsonl: TextIO | None = None
        self.rows = 0

    def __enter__(self) -> Self:
        if self.csv_path is not None:
            handle = open(self.csv_path, "w", newline="", encoding="utf-8")
            self._files.append(handle)
            self._csv = csv.DictWriter(handle, fieldnames=self.columns)
            self._csv.writeheader()
            handle.flush()
        if self.jsonl_path is not None:
            self._jsonl = open(self.jsonl_path, "w", encoding="utf-8")
            self._files.append(self._jsonl)
        return self

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (keys outside ``columns`` are ignored, missing ones left empty) and flush."""
        clean = {k: _clean(row.get(k)) for k in self.columns}
        if self._csv is not None:
            self._csv.writerow({k: "" if v is None else v for k, v in clean.items()})
            self._files[0].flush()
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(clean) + "\n")
            self._jsonl.flush()
        self.rows += 1

    def __exit__(self, *exc: object) -> None:
        for handle in self._files:
            handle.close()


def plot_name(path: str, root: str) -> str:
    """A flat, unique PNG name for a record's plot: its path below ``root``, separators as ``__``, its suffix kept
    (``a.npy`` and ``a.csv`` get different plots)."""
    relative = os.path.relpath(path, root) if root else os.path.basename(path)
    flat = relative.replace(os.sep, "__").replace("..", "up")
    return re.sub(r"[^\w.\-]+", "_", flat) + ".png"


# ---------------------------------------------------------------------------------------------- plots
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK, _GRID, _SHADE = (30, 30, 30), (205, 205, 205), (255, 214, 214)
_LEAD_RGB = ((0, 0, 0), (30, 30, 200), (20, 120, 40))
_SCORE_RGB = (215, 95, 0)
_TRUTH_RGB = (0, 150, 80)
_LEFT, _RIGHT, _TOP, _LEAD_H, _SCORE_H, _AXIS_H, _GAP = 72, 16, 34, 110, 90, 26, 8


def _text(canvas: np.ndarray, text: str, x: int, y: int, rgb: tuple[int, ...] = _INK, scale: float = 0.45) -> None:
    cv2.putText(canvas, text, (x, y), _FONT, scale, rgb, 1, cv2.LINE_AA)


def _trace(values: np.ndarray, width: int, top: int, height: int, low: float, high: float) -> np.ndarray:
    """Polyline points of ``values`` across ``width`` columns of a band: one point per step, or, with more steps
    than columns, each column's minimum and maximum (so a spike a single step wide still shows)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) <= width:
        xs = np.round(np.linspace(0, width - 1, len(v))) if len(v) > 1 else np.zeros(1)
        ys = v
    else:
        bounds = np.floor(np.arange(width) * len(v) / width).astype(np.int64)
        lows, highs = np.minimum.reduceat(v, bounds), np.maximum.reduceat(v, bounds)
        xs = np.repeat(np.arange(width), 2)
        ys = np.stack([lows, highs], 1).ravel()
    level = np.clip((ys - low) / (high - low), 0.0, 1.0)
    rows = top + (height - 1) * (1.0 - level)
    return np.stack([xs + _LEFT, np.round(rows)], 1).astype(np.int32).reshape(-1, 1, 2)


def _range(lead: np.ndarray) -> tuple[float, float]:
    """A lead's drawn value range: its 0.1-99.9 percentiles with a 10 % margin (one outlier does not flatten it)."""
    low, high = (float(v) for v in np.percentile(lead, [0.1, 99.9]))
    if high - low < 1e-6:
        return low - 0.5, high + 0.5
    margin = 0.1 * (high - low)
    return low - margin, high + margin


def _tick_seconds(duration: float, width: int) -> float:
    """A 1-2-5 tick spacing that puts a label every 90 px or more."""
    wanted = duration * 90 / max(width, 1)
    spacing = 10 ** math.floor(math.log10(max(wanted, 1e-3)))
    for factor in (1, 2, 5, 10):
        if spacing * factor >= wanted:
            return spacing * factor
    return spacing * 10


def render_signal_plot(values: np.ndarray, step_scores: np.ndarray, intervals: Sequence[Interval], *,
                       title: str, leads: Sequence[str], score: float, label: str,
                       rate: float = SAMPLING_RATE, max_width: int = 3200,
                       truth: Sequence[Interval] = ()) -> np.ndarray:
    """A record's plot as RGB uint8: the title line, one band per lead, the stitched per-step score (0..1, the
    decision line dashed) beneath, the anomalous intervals shaded across every band, the true intervals (when
    known) as green bars above the first band, and a time axis in seconds.

    Args:
        values: ``(steps, leads)`` at ``rate``.
        step_scores: ``(steps,)`` calibrated per-step scores.
        intervals: The record's anomalous intervals (steps, ``end`` inclusive).
        title: Text of the title line (the record's name).
        leads: Lead names, one per column of ``values``.
        score, label: The record's score and label.
        rate: Steps per second.
        max_width: Widest plot area in pixels (longer records are drawn as per-column minimum and maximum).
        truth: The labelled anomalous intervals (steps, ``end`` inclusive), e.g. from a test split.
    """
    steps, n_leads = values.shape
    width = int(min(max(steps, 800), max_width))
    height = _TOP + n_leads * (_LEAD_H + _GAP) + _SCORE_H + _AXIS_H
    canvas = np.full((height, _LEFT + width + _RIGHT, 3), 255, np.uint8)
    bottom = height - _AXIS_H

    def column(step: float) -> int:
        return _LEFT + int(step * width / steps)

    for interval in intervals:  # shading first: the lines are drawn over it
        left = column(interval.start)
        cv2.rectangle(canvas, (left, _TOP), (max(column(interval.end + 1) - 1, left), bottom - 1), _SHADE, -1)
    for interval in truth:
        left = column(interval.start)
        cv2.rectangle(canvas, (left, _TOP - 6), (max(column(interval.end + 1) - 1, left), _TOP - 3), _TRUTH_RGB, -1)
    if truth:
        _text(canvas, "true", 6, _TOP - 2, _TRUTH_RGB, 0.38)
    colour = ANOMALOUS_RGB if label == ANOMALOUS else NORMAL_RGB
    _text(canvas, title, 8, 22, _INK, 0.5)
    summary = f"score {score:.3f}  {label}  {len(intervals)} interval{'s' if len(intervals) != 1 else ''}"
    (w, _), _ = cv2.getTextSize(summary, _FONT, 0.5, 1)
    _text(canvas, summary, canvas.shape[1] - _RIGHT - w, 22, colour, 0.5)

    top = _TOP
    for i in range(n_leads):
        low, high = _range(values[:, i])
        cv2.rectangle(canvas, (_LEFT, top), (_LEFT + width - 1, top + _LEAD_H - 1), _GRID, 1)
        cv2.polylines(canvas, [_trace(values[:, i], width, top, _LEAD_H, low, high)], False,
                      _LEAD_RGB[i % len(_LEAD_RGB)], 1, cv2.LINE_AA)
        _text(canvas, str(leads[i])[:9], 6, top + _LEAD_H // 2 + 5)
        _text(canvas, f"{high:.2g}", 6, top + 12, (120, 120, 120), 0.35)
        _text(canvas, f"{low:.2g}", 6, top + _LEAD_H - 4, (120, 120, 120), 0.35)
        top += _LEAD_H + _GAP

    cv2.rectangle(canvas, (_LEFT, top), (_LEFT + width - 1, top + _SCORE_H - 1), _GRID, 1)
    line = top + round((_SCORE_H - 1) * (1 - DECISION))
    for x in range(_LEFT, _LEFT + width, 8):  # the decision line, dashed
        cv2.line(canvas, (x, line), (min(x + 3, _LEFT + width - 1), line), (150, 150, 150), 1)
    cv2.polylines(canvas, [_trace(step_scores, width, top, _SCORE_H, 0.0, 1.0)], False, _SCORE_RGB, 1, cv2.LINE_AA)
    _text(canvas, "per step", 6, top + 26, _SCORE_RGB)
    _text(canvas, "1", _LEFT - 14, top + 10, (120, 120, 120), 0.35)
    _text(canvas, f"{DECISION:g}", _LEFT - 22, line + 4, (120, 120, 120), 0.35)
    _text(canvas, "0", _LEFT - 14, top + _SCORE_H - 2, (120, 120, 120), 0.35)

    duration = steps / rate
    spacing = _tick_seconds(duration, width)
    for k in range(int(duration / spacing) + 1):
        seconds = k * spacing
        x = column(seconds * rate)
        cv2.line(canvas, (x, bottom), (x, bottom + 4), _INK, 1)
        _text(canvas, f"{seconds:g}", x - 4, bottom + 17, _INK, 0.38)
    _text(canvas, "s", _LEFT + width + 2, bottom + 17, _INK, 0.38)
    return canvas
