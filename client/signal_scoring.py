"""``python client/client.py score-signal``: score time-series records of any length with a served detector.

A time-series detector scores windows of ``T`` steps (its input ``signal``, ``(N, T, C)`` FP32: 256 steps, two
leads, 128 Hz). A record of any length ``L >= T`` is cut into windows every ``stride`` steps (default ``T/2``),
the last one aligned to the record's end so that every step is covered (:func:`window_starts`); the windows go to
the ensemble in batches over HTTP or gRPC by the scoring engine (:class:`client.pipeline.BatchSender`), and the calibrated per-step scores of the
windows that overlap a step are averaged into one score per step (:class:`StepStitcher`). The record's anomalous
intervals are then found on that stitched series with :func:`kdcore.intervals.anomalous_intervals`, the rule the
server applies to each window (runs of steps at or above 0.5); the record's score is its highest stitched step
score, and its label follows the decision line (:data:`~kdcore.contract.DECISION`).

Records that cannot be scored (unreadable, shorter than one window, NaN or infinite values, not the model's
number of leads, refused by the server) become error rows with the reason; the others go on.

Outputs in ``--output``: ``intervals.csv`` / ``intervals.jsonl`` (one row per interval), ``records.csv`` /
``records.jsonl`` (one row per record), all streamed as records finish, then ``summary.json`` (the counts, the
options and every record's row under ``per_record``); with ``--plots`` one PNG per record in ``<output>/plots``.

Exit status: 0 when the run completed (records with errors are reported and counted, not fatal); 2 for bad
arguments, no time-series detector, or an unreachable server or model; 130 when interrupted by Ctrl-C (the rows
already written are kept).

Example::

    from client.signal_scoring import SignalScoreConfig, score_signals

    summary = score_signals(["records/"], SignalScoreConfig(model="ecg_student"), on_result=print)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator
from tritonclient.utils import InferenceServerException

from client.pipeline import MAX_BACKOFF, BatchSender, StopOnCtrlC, Stopped, report_result
from client.reports import write_json
from client.results import NOT_SCORED
from client.scoring import DEFAULT_URLS, ScoringSetupError
from client.signal_io import (
    RowWriter,
    Signal,
    SignalReadError,
    expand_signal_inputs,
    parse_channels,
    plot_name,
    read_signal,
    render_signal_plot,
)
from client.transport import Reply, Transport, connect, error_text
from kdcore.contract import ANOMALOUS, DECISION, FP32, MAP, NORMAL, SIGNAL_INPUT
from kdcore.intervals import Interval, anomalous_intervals
from kdcore.manifest import ManifestError, load_manifests
from kdcore.options import add_config_options, config_values
from kdcore.series_io import SAMPLING_RATE

__all__ = ["RecordResult", "SeriesModel", "SignalRunSummary", "SignalScoreConfig", "StepStitcher", "default_model",
           "main", "score_signals", "series_model_info", "stitch", "window_starts"]


# ---------------------------------------------------------------------------------------------- windows
def window_starts(steps: int, window: int, stride: int) -> np.ndarray:
    """First steps of the windows that cover a record of ``steps``: ``0, stride, 2*stride, ...`` and, unless the
    last of those already ends there, one more aligned to the record's end (``steps - window``).

    Raises:
        ValueError: The record is shorter than one window, or the stride is not in ``1..window`` (longer strides
            would leave steps unscored).
    """
    if window < 1 or not 1 <= stride <= window:
        raise ValueError(f"the stride must be 1..{window} steps (the window), got {stride}")
    if steps < window:
        raise ValueError(f"the record has {steps} steps ({steps / SAMPLING_RATE:.2f} s at {SAMPLING_RATE} Hz), "
                         f"shorter than the model's window of {window} steps ({window / SAMPLING_RATE:g} s)")
    starts = list(range(0, steps - window + 1, stride))
    if starts[-1] != steps - window:
        starts.append(steps - window)
    return np.asarray(starts, dtype=np.int64)


class StepStitcher:
    """Accumulates windows' per-step scores into one score per step of a record: the mean over the windows that
    cover the step (float64 sums, a float32 result)."""

    def __init__(self, steps: int) -> None:
        self.total = np.zeros(steps, dtype=np.float64)
        self.count = np.zeros(steps, dtype=np.int64)

    def add(self, start: int, scores: np.ndarray) -> None:
        """Add one window's per-step scores, the window starting at step ``start``."""
        s = np.asarray(scores, dtype=np.float64).ravel()
        self.total[start:start + len(s)] += s
        self.count[start:start + len(s)] += 1

    def result(self) -> np.ndarray:
        """The stitched scores ``(steps,)`` float32; raises if a step was never covered (a bug, not a user error)."""
        if not self.count.all():
            raise RuntimeError(f"windows leave {int((self.count == 0).sum())} steps uncovered")
        return (self.total / self.count).astype(np.float32)


def stitch(window_scores: np.ndarray, starts: Sequence[int], steps: int) -> np.ndarray:
    """Per-step scores ``(steps,)`` from the windows' ``(W, T)`` per-step scores at ``starts``: overlaps averaged."""
    stitcher = StepStitcher(steps)
    for start, scores in zip(starts, window_scores):
        stitcher.add(int(start), scores)
    return stitcher.result()


# ---------------------------------------------------------------------------------------------- options
class SignalScoreConfig(BaseModel):
    """How to read records, reach the model and drive it (``client.py score-signal`` has one option per field)."""

    model_config = {"extra": "forbid", "protected_namespaces": ()}

    model: str | None = Field(None, description="time-series detector (ensemble) to call (default: the first one "
                              "in --repository whose manifest says it scores time series)")
    repository: Path = Field(Path("model_repository"), description="model repository the default --model is "
                             "found in (<model>/validation/manifest.json)")
    protocol: Literal["grpc", "http"] = Field("grpc", description="wire protocol")
    url: str | None = Field(None, description=f"host:port of that protocol's endpoint (default {DEFAULT_URLS['grpc']} "
                            f"for gRPC, {DEFAULT_URLS['http']} for HTTP)")
    stride: int | None = Field(None, ge=1, description="steps between window starts, at most the window (default: "
                               "half the window); overlapping windows' per-step scores are averaged")
    batch_size: int = Field(8, ge=1, description="windows per request, at most the model's max batch")
    concurrency: int = Field(2, ge=1, le=64, description="requests kept in flight")
    timeout: float = Field(120.0, gt=0, description="seconds to wait for one reply")
    channels: str | None = Field(None, description="leads to send, in order: names (CSV header, WFDB signal names) "
                                 "or 0-based column indices, comma-separated, e.g. 'MLII,V1' or '1,2' (default: "
                                 "every column; their number must be the model's)")
    rate: float | None = Field(None, gt=0, description=f"sampling rate of .npy and .csv files in Hz, resampled to "
                               f"{SAMPLING_RATE} (default: already {SAMPLING_RATE}); WFDB headers give their own")
    retries: int = Field(6, ge=0, le=100, description="resends of a request while the server is unreachable; the "
                         "records still unscored after them are reported as not scored")
    backoff: float = Field(0.5, gt=0, description=f"seconds before the first resend, doubled each time (at most "
                           f"{MAX_BACKOFF:g} s)")
    tls_root: str | None = Field(None, description="PEM CA certificate: talk gRPC over TLS")

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: str | None) -> str | None:
        parse_channels(value)
        return value

    @property
    def endpoint(self) -> str:
        """The URL to use."""
        return self.url or DEFAULT_URLS[self.protocol]

    @property
    def channel_list(self) -> tuple[str, ...] | None:
        """``channels`` split into entries."""
        return parse_channels(self.channels)


@dataclass(frozen=True)
class SeriesModel:
    """What the client needs to know about the served time-series detector."""

    name: str
    window: int
    """Steps per window (``T``)."""
    leads: int
    """Leads per step (``C``)."""
    max_batch_size: int


def default_model(repository: Path) -> str:
    """The first time-series detector of ``repository`` (by name), from the exporter's manifests.

    Raises:
        ScoringSetupError: The repository has none (the message lists the detectors it has).
    """
    try:
        manifests = load_manifests(repository)
    except ManifestError as e:
        raise ScoringSetupError(f"cannot read the manifests of {repository}: {e}") from e
    series = [m.model for m in manifests if m.is_series]
    if not series:
        found = ", ".join(m.model for m in manifests) or "none"
        raise ScoringSetupError(f"no time-series detector in {repository} (detectors there: {found}); "
                                "give --model, or --repository with the exported repository")
    return series[0]


def series_model_info(config: SignalScoreConfig, model: str) -> SeriesModel:
    """Ask the server for the model's window, leads and batch limit.

    Raises:
        InferenceServerException: The server or the model is not ready.
        ScoringSetupError: The model is not a time-series detector.
    """
    client = connect(config.protocol, config.endpoint, timeout=config.timeout, tls_root=config.tls_root)
    try:
        if not client.is_model_ready(model):
            raise InferenceServerException(f"model '{model}' is not ready on {config.endpoint}")
        kwargs = {"as_json": True} if config.protocol == "grpc" else {}
        meta = client.get_model_metadata(model, **kwargs)
        cfg = client.get_model_config(model, **kwargs)
        cfg = cfg.get("config", cfg)
    finally:
        client.close()
    inputs = meta["inputs"]
    shape = [int(d) for d in inputs[0]["shape"]] if len(inputs) == 1 else []
    if len(inputs) != 1 or inputs[0]["name"] != SIGNAL_INPUT or len(shape) != 3:
        got = ", ".join(f"{i['name']} {i['shape']}" for i in inputs)
        raise ScoringSetupError(f"model '{model}' does not score time series: it takes {got}, a time-series "
                                f"detector takes '{SIGNAL_INPUT}' (N, T, C)")
    outputs = {o["name"]: [int(d) for d in o["shape"]] for o in meta["outputs"]}
    if outputs.get(MAP, [])[1:] != shape[1:2]:
        raise ScoringSetupError(f"model '{model}' returns no per-step '{MAP}' (N, {shape[1]}): got {outputs}")
    return SeriesModel(model, shape[1], shape[2], int(cfg.get("max_batch_size", cfg.get("maxBatchSize", 1)) or 1))


# ---------------------------------------------------------------------------------------------- results
@dataclass
class RecordResult:
    """The outcome for one record; ``status`` is ``"ok"`` or ``"error"`` (then ``error`` says why)."""

    record: str
    status: str
    steps: int | None = None
    """Steps at the model's rate (128 Hz)."""
    seconds: float | None = None
    rate: float | None = None
    """The file's own sampling rate, Hz."""
    windows: int | None = None
    score: float | None = None
    label: str | None = None
    intervals: int | None = None
    error: str | None = None
    found: list[Interval] = field(default_factory=list, repr=False, metadata={"array": True})
    """The anomalous intervals (steps at 128 Hz, ``end`` inclusive)."""
    step_scores: np.ndarray | None = field(default=None, repr=False, metadata={"array": True})
    """Stitched calibrated per-step scores ``(steps,)`` float32."""
    signal: Signal | None = field(default=None, repr=False, metadata={"array": True})
    """The record as sent (kept only while the result is handed out)."""

    @property
    def ok(self) -> bool:
        """Whether the record was scored."""
        return self.status == "ok"

    def row(self) -> dict[str, Any]:
        """The ``records.csv`` row."""
        return {name: getattr(self, name) for name in RECORD_COLUMNS}

    def interval_rows(self) -> list[dict[str, Any]]:
        """The ``intervals.csv`` rows: steps (``end`` inclusive) and the seconds of those steps from the start."""
        return [{"record": self.record, **asdict(i), "start_s": i.start / SAMPLING_RATE,
                 "end_s": i.end / SAMPLING_RATE} for i in self.found]


#: ``records.csv`` columns.
RECORD_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RecordResult) if not f.metadata.get("array"))
#: ``intervals.csv`` columns: the record, then :class:`~kdcore.intervals.Interval`'s fields (start, end, peak,
#: score) with the seconds of start and end after them.
_SPAN = tuple(f.name for f in fields(Interval))
INTERVAL_COLUMNS = ("record", *_SPAN[:2], "start_s", "end_s", *_SPAN[2:])


@dataclass
class SignalRunSummary:
    """Counts and throughput of one run."""

    model: str
    protocol: str
    window: int
    stride: int
    records: int = 0
    scored: int = 0
    errors: int = 0
    anomalous: int = 0
    normal: int = 0
    intervals: int = 0
    windows: int = 0
    steps: int = 0
    not_scored: int = 0
    retries: int = 0
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def windows_per_second(self) -> float | None:
        """Windows scored per second of the run."""
        return self.windows / self.seconds if self.seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts with the throughput and the signal time scored."""
        return {**{f.name: getattr(self, f.name) for f in fields(self)},
                "signal_seconds": self.steps / SAMPLING_RATE, "windows_per_second": self.windows_per_second}

    def format(self) -> str:
        """The summary as a few lines."""
        s = self
        lines = [f"{s.model} over {s.protocol}: {s.records} records, {s.scored} scored, {s.errors} errors"
                 + (f", {s.not_scored} not scored (interrupted)" if s.interrupted else "")]
        if s.scored:
            rate = f"{s.windows_per_second:.1f}" if s.windows_per_second else "-"
            lines.append(f"anomalous {s.anomalous}, normal {s.normal}; {s.intervals} intervals; {s.windows} windows "
                         f"of {s.window} steps (stride {s.stride}) over {s.steps / SAMPLING_RATE:.1f} s of signal; "
                         f"{rate} windows/s")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class _Job:
    """One record being scored."""

    result: RecordResult
    signal: Signal | None = None
    starts: np.ndarray | None = None
    stitcher: StepStitcher | None = None
    received: int = 0
    failed: int = 0

    @property
    def resolved(self) -> bool:
        return self.starts is not None and self.received + self.failed == len(self.starts)


@dataclass(frozen=True, eq=False)
class _Window:
    """Steps ``start .. end - 1`` of ``job``'s record: one row of a batch."""

    job: _Job
    start: int
    end: int

    @property
    def data(self) -> np.ndarray:
        """The window to send, ``(T, C)`` float32."""
        return self.job.signal.values[self.start:self.end]


class _SignalRun:
    """Reads records in order and hands their windows to a :class:`~client.pipeline.BatchSender` (which keeps
    ``concurrency`` requests in flight, resends while the server is down and splits refused batches to find the
    record the server rejects); hands out each record's result when its last window returns."""

    def __init__(self, paths: Sequence[str], config: SignalScoreConfig, model: SeriesModel, transport: Transport,
                 on_result: Callable[[RecordResult], None], summary: SignalRunSummary, stop, bar,
                 keep_arrays: bool) -> None:
        self.paths, self.config, self.model = paths, config, model
        self.on_result, self.summary, self.stop, self.bar = on_result, summary, stop, bar
        self.keep_arrays = keep_arrays
        self.next_path = 0
        self.waiting: deque[_Window] = deque()
        self.sender = BatchSender(transport, config, summary, stop, take=self._take, on_reply=self._replied,
                                  on_fail=self._fail)

    def run(self) -> None:
        self.sender.run()

    # ------------------------------------------------------------------ records in
    def _prepare(self, path: str) -> _Job:
        job = _Job(RecordResult(record=path, status="ok"))
        try:
            signal = read_signal(path, channels=self.config.channel_list, rate=self.config.rate)
            job.result.steps, job.result.rate = signal.steps, signal.rate
            job.result.seconds = signal.steps / SAMPLING_RATE
            if signal.values.shape[1] != self.model.leads:
                hint = " (saved as (leads, steps)? a record is (steps, leads))" \
                    if signal.steps == self.model.leads else f"; choose {self.model.leads} with --channels"
                raise SignalReadError(f"{path}: {signal.values.shape[1]} leads ({', '.join(signal.leads)}), the model "
                                      f"reads {self.model.leads}{hint}")
            try:
                starts = window_starts(signal.steps, self.model.window, self.summary.stride)
            except ValueError as e:
                raise SignalReadError(f"{path}: {e}") from e
        except SignalReadError as e:
            job.result.status, job.result.error = "error", str(e)
            return job
        job.signal, job.starts, job.stitcher = signal, starts, StepStitcher(signal.steps)
        job.result.windows = len(starts)
        return job

    def _take(self, n: int) -> list[_Window]:
        """Up to ``n`` windows, reading records in order (records that cannot be scored are emitted)."""
        while len(self.waiting) < n and self.next_path < len(self.paths):
            if self.stop.is_set():
                raise Stopped
            job = self._prepare(self.paths[self.next_path])
            self.next_path += 1
            if job.starts is None:
                self._emit(job)
            else:
                window = self.model.window
                self.waiting.extend(_Window(job, int(s), int(s) + window) for s in job.starts)
        return [self.waiting.popleft() for _ in range(min(n, len(self.waiting)))]

    # ------------------------------------------------------------------ replies in, results out
    def _replied(self, windows: list[_Window], reply: Reply) -> None:
        maps = reply.outputs[MAP]
        for row, w in enumerate(windows):
            w.job.stitcher.add(w.start, maps[row])
            w.job.received += 1
            if w.job.resolved:
                self._emit(w.job)

    def _fail(self, windows: list[_Window], reason: str) -> None:
        for w in windows:
            job = w.job
            job.failed += 1
            if job.result.error is None:
                job.result.status, job.result.error = "error", reason
            if job.resolved:
                self._emit(job)

    def _emit(self, job: _Job) -> None:
        result = job.result
        if result.ok:
            steps = job.stitcher.result()
            result.found = anomalous_intervals(steps)
            result.score = float(steps.max())
            result.label = ANOMALOUS if result.score >= DECISION else NORMAL
            result.intervals = len(result.found)
            result.step_scores = steps
            result.signal = job.signal
            self.summary.intervals += len(result.found)
            self.summary.windows += result.windows
            self.summary.steps += result.steps
        report_result(result, self.summary, self.on_result, self.bar)
        if not self.keep_arrays:
            result.step_scores = result.signal = None
        job.signal = job.stitcher = None


def score_signals(inputs: Iterable[str | Path], config: SignalScoreConfig, on_result: Callable[[RecordResult], None],
                  *, progress: bool = False, keep_arrays: bool = False) -> SignalRunSummary:
    """Score every record of ``inputs``; calls ``on_result`` once per record, in this thread, as each finishes.

    Args:
        inputs: Files, WFDB records, folders (searched recursively) and glob patterns.
        config: Model, endpoint, windowing, batching and reading options.
        on_result: Called with each record's :class:`RecordResult` (``step_scores`` and ``signal`` set during the
            call; kept afterwards only with ``keep_arrays``).
        progress: Show a progress bar on stderr.
        keep_arrays: Keep each result's stitched scores and signal after ``on_result`` returns.

    Returns:
        The run's :class:`SignalRunSummary` (``interrupted`` when Ctrl-C stopped it).

    Raises:
        FileNotFoundError: ``inputs`` name no record.
        InferenceServerException: The server or model cannot be reached before the run starts.
        ScoringSetupError: No time-series detector, or options that do not fit it.
    """
    paths = expand_signal_inputs(inputs)
    model = series_model_info(config, config.model or default_model(config.repository))
    if config.batch_size > model.max_batch_size:
        raise ScoringSetupError(f"batch size {config.batch_size} exceeds the model's max_batch_size "
                                f"{model.max_batch_size}")
    stride = config.stride or max(1, model.window // 2)
    if stride > model.window:
        raise ScoringSetupError(f"stride {stride} is longer than the model's window of {model.window} steps: "
                                "steps between windows would go unscored")
    transport = Transport(config.protocol, config.endpoint, model.name, input_name=SIGNAL_INPUT, input_datatype=FP32,
                          outputs=[MAP], concurrency=config.concurrency, timeout=config.timeout,
                          tls_root=config.tls_root)
    summary = SignalRunSummary(model=model.name, protocol=config.protocol, window=model.window, stride=stride,
                               records=len(paths))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="rec", desc=f"scoring {model.name}", dynamic_ncols=True)
    start = time.perf_counter()
    try:
        with StopOnCtrlC() as stop:
            _SignalRun(paths, config, model, transport, on_result, summary, stop, bar, keep_arrays).run()
    except (KeyboardInterrupt, Stopped):
        summary.interrupted = True
    finally:
        summary.seconds = time.perf_counter() - start
        transport.close()
        if bar is not None:
            bar.close()
    summary.not_scored = summary.records - summary.scored - summary.errors
    return summary


# ---------------------------------------------------------------------------------------------- command line
SHORT_FLAGS = {"model": ["-m"], "protocol": ["-i"], "url": ["-u"], "batch_size": ["-b"], "concurrency": ["-c"],
               "timeout": ["-t"], "repository": ["-r"], "stride": ["-s"]}


def build_parser() -> argparse.ArgumentParser:
    """The ``score-signal`` argument parser."""
    p = argparse.ArgumentParser(
        prog="client.py score-signal",
        description="Score time-series records of any length with a served time-series detector: windows every "
        "--stride steps (the last aligned to the record's end), per-step scores of overlapping windows averaged, "
        "anomalous intervals (runs of steps >= 0.5) over the whole record. Reads .npy (steps, leads) arrays, "
        ".csv files (one column per lead, optional header of lead names) and WFDB records (.hea or the stem), "
        f"at {SAMPLING_RATE} Hz (others are resampled). Writes intervals.csv/.jsonl, records.csv/.jsonl and "
        "summary.json into --output; records that cannot be scored are reported there, never fatal.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", help="record files (.npy, .csv, WFDB .hea or stem), folders or quoted glob "
                   "patterns; @FILE reads paths from FILE")
    add_config_options(p, SignalScoreConfig, aliases=SHORT_FLAGS)
    out = p.add_argument_group("outputs")
    out.add_argument("-o", "--output", type=Path, default=Path("signal_scores"),
                     help="folder for intervals.csv/.jsonl, records.csv/.jsonl and summary.json")
    out.add_argument("--plots", action="store_true",
                     help="write <output>/plots/<record>.png: the leads, the stitched per-step score beneath, the "
                          "anomalous intervals shaded")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``score-signal``; returns the exit status (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = SignalScoreConfig(**config_values(SignalScoreConfig, args))
    except ValidationError as e:
        parser.error("; ".join(f"{'.'.join(map(str, x['loc'])) or 'options'}: {x['msg']}" for x in e.errors()))
    if not args.inputs:
        parser.error("give record files, WFDB records, folders or globs to score")
    try:
        inputs = expand_signal_inputs(args.inputs)
    except (FileNotFoundError, OSError) as e:
        parser.error(str(e))
    if config.model is None:
        try:
            config = config.model_copy(update={"model": default_model(config.repository)})
        except ScoringSetupError as e:
            print(f"score-signal: {e}", file=sys.stderr)
            return 2
    root = os.path.commonpath([os.path.abspath(p) for p in inputs])
    if os.path.isfile(root):
        root = os.path.dirname(root)
    plots = args.output / "plots" if args.plots else None
    rows: list[dict[str, Any]] = []
    unscored: list[str] = []

    def on_result(result: RecordResult) -> None:
        records.write(result.row())
        for row in result.interval_rows():
            intervals.write(row)
        rows.append(result.row())
        if not result.ok:
            if result.error.startswith(NOT_SCORED):
                unscored.append(result.record)
            if not args.quiet:
                where = "" if result.error.startswith(result.record) else f"{result.record}: "
                print(f"error: {where}{result.error}", file=sys.stderr)
        elif plots is not None:
            from client.heatmaps import write_rgb

            image = render_signal_plot(result.signal.values, result.step_scores, result.found, title=result.record,
                                       leads=result.signal.leads, score=result.score, label=result.label)
            write_rgb(plots / plot_name(result.record, root), image)

    args.output.mkdir(parents=True, exist_ok=True)
    out = args.output
    try:
        with RowWriter(out / "records.csv", out / "records.jsonl", RECORD_COLUMNS) as records, \
                RowWriter(out / "intervals.csv", out / "intervals.jsonl", INTERVAL_COLUMNS) as intervals:
            summary = score_signals(inputs, config, on_result, progress=not (args.no_progress or args.quiet))
    except ScoringSetupError as e:
        print(f"score-signal: {e}", file=sys.stderr)
        return 2
    except (InferenceServerException, ConnectionError) as e:
        print(f"score-signal: cannot score on {config.endpoint} ({config.protocol}): {error_text(e)}", file=sys.stderr)
        return 2
    payload: dict[str, Any] = {"config": config.model_dump(mode="json"), **summary.to_dict(), "per_record": rows}
    if plots is not None:
        payload["plots"] = str(plots)
    if unscored:  # the server went away: list what to send again with `score-signal @not_scored.txt`
        (out / "not_scored.txt").write_text("".join(f"{p}\n" for p in unscored), encoding="utf-8")
        payload["not_scored_list"] = str(out / "not_scored.txt")
    write_json(out / "summary.json", payload)
    print(summary.format())
    if unscored:
        print(f"{len(unscored)} records not scored (server unreachable): score them again with "
              f"`client.py score-signal @{out / 'not_scored.txt'}`")
    print(f"results: {out / 'intervals.csv'}, {out / 'records.csv'}, {out / 'summary.json'}"
          + (f", plots in {plots}" if plots is not None else ""))
    return 130 if summary.interrupted else 0
