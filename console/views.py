"""What the console's page shows, as plain functions over the served models: the page (``console/app.py``) only lays
them out, and the tests call them against a real server.

Everything goes through the project's client (:mod:`client.scoring`, :mod:`client.signal_scoring`,
:mod:`client.heatmaps`, :mod:`client.signal_io`) and the repository's manifests and stats JSON
(:mod:`kdcore.manifest`, :mod:`kdcore.stats`): the console is a client of the Triton server, never a second
inference path.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from client.heatmaps import render_heatmap
from client.inputs import expand_inputs
from client.results import ImageResult
from client.scoring import ScoreConfig, score_images
from client.signal_io import SIGNAL_SUFFIXES, Signal, SignalReadError, read_signal, render_signal_plot
from client.signal_scoring import RecordResult, SignalScoreConfig, score_signals
from client.transport import connect
from kdcore.bench_figures import BenchFigures
from kdcore.bench_figures import BenchFormatError, load_bench
from kdcore.contract import ANOMALOUS, DECISION, NORMAL, SCORER_STATS_FILE
from kdcore.intervals import Interval, anomalous_intervals
from kdcore.manifest import MANIFEST_FILE, Manifest, discover, validation_folder
from kdcore.regions import Region
from kdcore.series_io import read_dataset_meta, read_split
from kdcore.series_metrics import window_precision_recall
from kdcore.stats import StatsError, load_stats
from kdcore.tiling import TilingConfig

#: The largest upload the console scores (bytes): a 20 MP PNG is well under it.
MAX_UPLOAD = 64 * 1024 * 1024
#: The most images one folder run scores (a gallery of more is neither readable nor quick).
MAX_FOLDER = 500
#: Gallery orders the page offers.
ORDERS = ("score, highest first", "score, lowest first", "name")


class ConsoleError(ValueError):
    """Something the page shows as a message instead of a result (a bad upload, a server that is down)."""


@dataclass(frozen=True)
class ModelCard:
    """One detector of the repository, as the page lists it."""

    name: str
    method: str
    input: str
    image: bool
    """Takes images (``image``); otherwise time-series windows (``signal``)."""
    test_metrics: dict[str, float | None]
    window: int | None = None
    """Steps per window of a time-series detector."""

    @property
    def series(self) -> bool:
        """Whether the detector scores time-series windows."""
        return not self.image


def model_cards(repository: Path) -> list[ModelCard]:
    """The repository's detectors with their method, input and the stats JSON's test metrics.

    Raises:
        ConsoleError: No detector in ``repository``.
    """
    names = discover(repository)
    if not names:
        raise ConsoleError(f"no exported detector in {repository} (run kd-export first)")
    cards = []
    for name in names:
        manifest = Manifest.load(validation_folder(repository, name) / MANIFEST_FILE)
        metrics: dict[str, float | None] = {}
        try:
            stats = load_stats(Path(repository) / manifest.names.scorer / SCORER_STATS_FILE)
            metrics = {k: v for k, v in stats.test_metrics.model_dump().items() if isinstance(v, float)}
        except StatsError:
            pass
        spec = manifest.input
        cards.append(ModelCard(name, manifest.method, f"{spec.name} {spec.datatype} {list(spec.dims)}",
                               not manifest.is_series, metrics, int(spec.dims[0]) if manifest.is_series else None))
    return cards


# ---------------------------------------------------------------------------------------------- images
@dataclass(frozen=True)
class Scored:
    """One image, scored by the server."""

    name: str
    score: float
    label: str
    overlay: np.ndarray = field(repr=False)
    """The heatmap over the image with the regions outlined (``client.py score --heatmaps``'s rendering)."""
    regions: list[Region]
    tiles: int = 1
    """Windows the frame was cut into (1: scored whole)."""


@dataclass(frozen=True)
class Gallery:
    """A folder's images scored by the server: the scored ones and, for the others, why not."""

    folder: str
    scored: list[Scored]
    errors: list[tuple[str, str]]
    """``(file, reason)`` for every file that could not be scored (none is dropped silently)."""
    skipped: int = 0
    """Images beyond :data:`MAX_FOLDER`, not scored."""


def check_upload(name: str, data: bytes) -> None:
    """Refuse an upload over :data:`MAX_UPLOAD` with :class:`ConsoleError` (one that is not an image is refused by
    the client's decoder, with its reason, when it is scored)."""
    if len(data) > MAX_UPLOAD:
        raise ConsoleError(f"{name}: {len(data) / 1e6:.1f} MB is over the console's limit of {MAX_UPLOAD / 1e6:.0f} MB")


def _score_files(paths: Sequence[Path], names: Sequence[str], model: str, url: str, protocol: str,
                 tiling: TilingConfig | None) -> tuple[list[Scored], list[tuple[str, str]]]:
    """Score files through the client with maps (and the served patch grid, or ``tiling``); overlays rendered."""
    results: list[ImageResult] = []
    config = ScoreConfig(model=model, url=url, protocol=protocol, maps=True, keep_images=True, batch_size=1,
                         tiling=tiling)
    try:
        score_images([str(p) for p in paths], config, results.append)
    except Exception as e:  # noqa: BLE001  (the page shows any failure as a message and keeps working)
        raise ConsoleError(f"the server at {url} could not score with '{model}': {e}") from e
    by_path = {str(p): n for p, n in zip(paths, names)}
    scored, errors = [], []
    for result in results:
        name = by_path.get(result.path, result.path)
        if not result.ok or result.image is None or result.anomaly_map is None:
            errors.append((name, result.error or "no heatmap came back"))
            continue
        overlay = render_heatmap(result.image, result.anomaly_map, score=result.score, label=result.label, name=name,
                                 regions=result.regions)
        scored.append(Scored(name, float(result.score), result.label, overlay, list(result.regions or []),
                             result.tiles))
    missing = set(by_path) - {r.path for r in results}  # never dropped silently
    errors += [(by_path[p], "no result came back (the run was interrupted)") for p in sorted(missing)]
    return scored, errors


def score_upload(name: str, data: bytes, model: str, url: str, protocol: str = "grpc",
                 tiling: TilingConfig | None = None) -> Scored:
    """Score one uploaded image file with the served ``model`` (maps on; large frames tiled as the client tiles:
    by the served patch grid, else by ``tiling``).

    Raises:
        ConsoleError: The upload is not an image, too large, or the server or model cannot be reached.
    """
    check_upload(name, data)  # the client decodes it once, with the pixels kept for the overlay
    suffix = Path(name).suffix or ".png"
    with tempfile.TemporaryDirectory(prefix="kd-console-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        scored, errors = _score_files([path], [name], model, url, protocol, tiling)
    if errors:
        raise ConsoleError(f"{name}: {errors[0][1]}")
    return scored[0]


def score_folder(folder: str | Path, model: str, url: str, protocol: str = "grpc",
                 tiling: TilingConfig | None = None, limit: int = MAX_FOLDER) -> Gallery:
    """Score the images of a folder on the console's machine (recursively, as ``client.py score`` finds them).

    Raises:
        ConsoleError: No such folder, no image in it, or the server or model cannot be reached.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConsoleError(f"{folder}: no such folder on the console's machine")
    try:
        paths = [Path(p) for p in expand_inputs([root])]
    except FileNotFoundError as e:
        raise ConsoleError(f"{folder}: no image in it ({e})") from e
    skipped = max(0, len(paths) - limit)
    paths = paths[:limit]
    names = [str(p.relative_to(root)) for p in paths]
    scored, errors = _score_files(paths, names, model, url, protocol, tiling)
    return Gallery(str(root), scored, errors, skipped)


def sort_gallery(scored: Sequence[Scored], order: str) -> list[Scored]:
    """``scored`` in one of :data:`ORDERS`."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; one of {ORDERS}")
    if order == "name":
        return sorted(scored, key=lambda s: s.name)
    return sorted(scored, key=lambda s: (s.score, s.name), reverse=order == ORDERS[0])


def score_histogram(scores: Sequence[float], *, bins: int = 20) -> bytes:
    """A PNG histogram of calibrated scores (0..1) with the decision line at 0.5, normal and anomalous coloured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, bins + 1)
    figure, axes = plt.subplots(figsize=(6.4, 2.6), dpi=100)
    try:
        axes.hist([values[values < DECISION], values[values >= DECISION]], bins=edges, stacked=True,
                  color=["#2a9d4a", "#d62828"], label=[NORMAL, ANOMALOUS])
        axes.axvline(DECISION, color="#333333", linestyle="--", linewidth=1.2)
        axes.text(DECISION, axes.get_ylim()[1] * 0.95, f" decision {DECISION:g}", va="top", fontsize=8)
        axes.set_xlim(0, 1)
        axes.set_xlabel("calibrated score")
        axes.set_ylabel("images")
        axes.legend(loc="upper left", fontsize=8, frameon=False)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
    finally:
        plt.close(figure)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- signals
@dataclass(frozen=True)
class SignalWindow:
    """One window to score: ``(T, C)`` values at 128 Hz, and its per-step labels when they are known."""

    title: str
    values: np.ndarray = field(repr=False)
    leads: list[str]
    labels: np.ndarray | None = field(default=None, repr=False)
    """``(T,)`` 1 on anomalous steps (a test split's windows), ``None`` for a file's."""

    @property
    def truth(self) -> list[Interval]:
        """The labelled anomalous intervals (``end`` inclusive); empty without labels."""
        if self.labels is None:
            return []
        return anomalous_intervals(self.labels.astype(np.float32), decision=0.5)


@dataclass(frozen=True)
class SplitWindows:
    """A time-series dataset's test split, as the page offers its windows."""

    root: str
    signals: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    kinds: np.ndarray = field(repr=False)
    kind_names: list[str]
    leads: list[str]

    def describe(self, index: int) -> str:
        """``"#12 anomalous (flatline)"`` / ``"#3 normal"``: the window's number, label and anomaly kinds."""
        kinds = sorted({self.kind_names[k] if k < len(self.kind_names) else str(k)
                        for k in np.unique(self.kinds[index]) if k})
        return f"#{index} " + (f"{ANOMALOUS} ({', '.join(kinds)})" if self.labels[index].any() else NORMAL)

    def window(self, index: int) -> SignalWindow:
        """Window ``index`` with its labels."""
        if not 0 <= index < len(self.labels):
            raise ConsoleError(f"window {index} is not in the test split of {self.root} (0..{len(self.labels) - 1})")
        return SignalWindow(f"test window {self.describe(index)}", self.signals[index], self.leads, self.labels[index])


def load_test_split(root: str | Path) -> SplitWindows:
    """The test split of a time-series dataset folder (``kd-signal-data``'s layout).

    Raises:
        ConsoleError: No dataset there.
    """
    try:
        arrays = read_split(root, "test")
    except (FileNotFoundError, ValueError) as e:
        raise ConsoleError(str(e)) from e
    meta = read_dataset_meta(root)
    leads = [str(x) for x in meta.get("leads", range(arrays["signals"].shape[2]))]
    return SplitWindows(str(root), arrays["signals"], arrays["labels"], arrays["kinds"],
                     [str(k) for k in meta.get("kinds", [])], leads)


def read_signal_upload(name: str, data: bytes) -> Signal:
    """An uploaded record (``.npy`` or ``.csv`` at 128 Hz) read as the client reads it.

    Raises:
        ConsoleError: Too large, not a signal file, or unreadable (the reason said).
    """
    if len(data) > MAX_UPLOAD:
        raise ConsoleError(f"{name}: {len(data) / 1e6:.1f} MB is over the console's limit of {MAX_UPLOAD / 1e6:.0f} MB")
    suffix = Path(name).suffix.lower()
    if suffix not in SIGNAL_SUFFIXES or suffix == ".hea":
        raise ConsoleError(f"{name}: not a signal file the console reads (.npy or .csv; WFDB records: use "
                           "client.py score-signal)")
    with tempfile.TemporaryDirectory(prefix="kd-console-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            signal = read_signal(path)
        except SignalReadError as e:
            raise ConsoleError(f"{name}: {str(e).replace(str(path), 'the file')}") from e
    signal.path = name
    return signal


def file_window(signal: Signal, start: int, steps: int) -> SignalWindow:
    """``steps`` steps of an uploaded record from ``start`` (clamped so the window fits; a shorter record whole)."""
    start = int(np.clip(start, 0, max(0, signal.steps - steps)))
    stop = min(signal.steps, start + steps)
    return SignalWindow(f"{signal.path} steps {start}..{stop - 1}", signal.values[start:stop], list(signal.leads))


@dataclass(frozen=True)
class WindowScore:
    """One detector's answer for a window."""

    model: str
    method: str
    score: float
    label: str
    step_scores: np.ndarray = field(repr=False)
    """Calibrated per-step scores ``(T,)``."""
    intervals: list[Interval]
    msp: float | None
    """Squeezed precision of the window (``None``: no labels, or no predicted point)."""
    msr: float | None
    """Squeezed recall of the window (``None``: no labels, or no true interval)."""
    plot: np.ndarray = field(repr=False)
    """The channels, the per-step score, predicted (shaded) and true (green bars) intervals, RGB."""


def score_window(window: SignalWindow, cards: Sequence[ModelCard], url: str, protocol: str = "grpc") -> list[WindowScore]:
    """Score one window with each time-series detector of ``cards`` through the client (``score-signal``'s path).

    MSP and MSR are the window's squeezed precision and recall (:mod:`kdcore.series_metrics`, the stats JSON's
    rule) against its labels.

    Raises:
        ConsoleError: The server or a model cannot be reached, or the window is not one the model takes.
    """
    answers = []
    for card in cards:
        results: list[RecordResult] = []
        with tempfile.TemporaryDirectory(prefix="kd-console-") as folder:
            path = Path(folder) / "window.npy"
            np.save(path, np.asarray(window.values, dtype=np.float32))
            config = SignalScoreConfig(model=card.name, url=url, protocol=protocol, batch_size=1, concurrency=1)
            try:
                score_signals([path], config, results.append, keep_arrays=True)
            except Exception as e:  # noqa: BLE001  (shown as a message; the page keeps working)
                raise ConsoleError(f"the server at {url} could not score with '{card.name}': {e}") from e
        if not results or not results[0].ok:
            reason = results[0].error if results else "no result came back"
            raise ConsoleError(f"'{card.name}' did not score {window.title}: {reason}")
        result = results[0]
        msp = msr = None
        if window.labels is not None:
            msp, msr = window_precision_recall(result.step_scores, window.labels)
        plot = render_signal_plot(window.values, result.step_scores, result.found, title=f"{card.name} ({card.method})",
                                  leads=window.leads, score=float(result.score), label=str(result.label),
                                  max_width=900, truth=window.truth)
        answers.append(WindowScore(card.name, card.method, float(result.score), str(result.label), result.step_scores,
                                   list(result.found), msp, msr, plot))
    return answers


def teacher_and_student(cards: Sequence[ModelCard]) -> list[ModelCard]:
    """The time-series detectors to show side by side by default: a teacher (plot or VLM) then a student, else the
    first two."""
    series = [c for c in cards if c.series]
    teachers = [c for c in series if "teacher" in c.method]
    students = [c for c in series if "student" in c.method]
    if teachers and students:
        return [teachers[0], students[0]]
    return series[:2]


# ---------------------------------------------------------------------------------------------- health
def server_health(url: str, protocol: str, models: list[str]) -> dict[str, bool]:
    """The server's liveness and readiness and each model's readiness (``{"server live": True, ...}``).

    Raises:
        ConsoleError: The server cannot be reached.
    """
    try:
        client = connect(protocol, url, timeout=5.0)
    except Exception as e:  # noqa: BLE001
        raise ConsoleError(f"cannot reach the server at {url}: {e}") from e
    try:
        status = {"server live": bool(client.is_server_live()), "server ready": bool(client.is_server_ready())}
        status.update({m: bool(client.is_model_ready(m)) for m in models})
        return status
    except Exception as e:  # noqa: BLE001
        raise ConsoleError(f"the server at {url} does not answer: {e}") from e
    finally:
        client.close()


@dataclass(frozen=True)
class BenchmarkView:
    """The figures of the newest benchmark JSON in a folder, as the health view shows them."""

    path: str
    written: str
    """When the file was written (UTC, from its modification time)."""
    lines: list[str]
    """Markdown lines: a table of the operating points for ``kd-bench``'s JSON (:mod:`kdcore.bench_figures`),
    otherwise the file's numbers by key."""
    plot: str | None = None
    """The PNG the benchmark drew beside the JSON, if any."""


def _numbers(value: object, prefix: str = "") -> list[str]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [f"- {prefix}: {value:.4g}"]
    if isinstance(value, dict):
        return [line for k, v in value.items() for line in _numbers(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, list):
        return [line for i, v in enumerate(value) for line in _numbers(v, f"{prefix}[{i}]")]
    return []


def _serving_table(figures: BenchFigures) -> list[str]:
    """``kd-bench``'s operating points as one row per detector, protocol and load: images/s and latency."""
    lines = ["| detector | protocol | in flight | images per request | images/s | p50 ms | p99 ms | failures |",
             "|---|---|---|---|---|---|---|---|"]
    for detector, points in figures.points.items():
        for pt in points:
            lines.append(f"| {detector} | {pt.protocol} | {pt.concurrency} | {pt.batch} | {pt.images_per_second:.1f} | "
                         f"{pt.p50_ms:.1f} | {pt.p99_ms:.1f} | {pt.failures} |")
    machine = ", ".join(f"{k} {v}" for k, v in (("cpus", figures.cpus), ("arch", figures.arch)) if v is not None)
    if machine:
        lines.append(f"\nmachine: {machine}")
    return lines


def benchmark_figures(folder: str | Path, *, limit: int = 60) -> BenchmarkView | None:
    """The newest ``*.json`` of a benchmark folder (``kd-bench`` writes runs/bench/serving.json), as lines the page
    shows; ``None`` when there is none.

    Raises:
        ConsoleError: The newest file is not valid JSON.
    """
    files = sorted(Path(folder).glob("*.json"), key=lambda p: p.stat().st_mtime) if Path(folder).is_dir() else []
    if not files:
        return None
    path = files[-1]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConsoleError(f"{path}: not a readable benchmark JSON ({e})") from e
    try:
        lines = _serving_table(load_bench(path))
    except BenchFormatError:  # another benchmark's JSON (kd-bench-faults, kd-bench-client): its numbers
        lines = _numbers(data)
        if len(lines) > limit:
            lines = lines[:limit] + [f"- ... {len(lines) - limit} more in the file"]
    written = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    plot = path.with_suffix(".png")
    return BenchmarkView(str(path), written, lines, str(plot) if plot.is_file() else None)
