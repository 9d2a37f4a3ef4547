"""Scoring image files with a served detector: the library behind ``python client/client.py score``.

:func:`score_images` checks the served model, then runs a :class:`ScoringPipeline`: worker threads read and
prepare images (decode, resize or tile), the pipeline packs their units (whole images or tiles) into batches,
keeps ``concurrency`` requests in flight (:mod:`client.transport`) and hands each image's :class:`ImageResult` to
a callback as soon as its last batch returns, so reports stream while the run goes on. Files that cannot be
read or decoded, and requests the server refuses, become error results with the reason: they are counted,
never fatal. Ctrl-C stops submitting and returns what was scored, marked interrupted.

Example::

    from client.scoring import ScoreConfig, score_images

    summary = score_images(["line3/*.png"], ScoreConfig(model="ad_inference"), on_result=print)
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator
from tritonclient.utils import InferenceServerException

from client.inputs import expand_inputs
from client.tiling import Box, MapStitcher, TilingConfig, cut_tiles, tile_boxes
from client.transport import Pending, Reply, RequestFailed, ServerUnavailable, Transport, connect, error_text
from kdcore.contract import ANOMALOUS, LABEL, MAP, MAP_U8, RAW_SCORE, SCORE, ModelNames, label_text
from kdcore.imageio import ImageDecodeError, decode_image, resize_to

__all__ = [
    "DEFAULT_URLS", "NOT_SCORED", "ImageResult", "ModelInfo", "RunSummary", "ScoreConfig", "ScoringPipeline",
    "ScoringSetupError", "TileReply", "error_text", "model_info", "score_images",
]

DEFAULT_URLS = {"grpc": "localhost:8001", "http": "localhost:8000"}
#: How the error of a file that was never sent (the server stayed unreachable) begins.
NOT_SCORED = "not scored"
#: Longest wait between two resends, in seconds.
MAX_BACKOFF = 8.0


class ScoringSetupError(ValueError):
    """The run cannot start: the options do not fit the served model (batch too large, no maps, not images)."""


class ScoreConfig(BaseModel):
    """How to reach the model and how hard to drive it (``client.py score`` has one option per field)."""

    model_config = {"extra": "forbid"}

    model: str = Field("ad_inference", description="ensemble to call (the pixel-input one; the encoded-input "
                       "and output-profile ensembles are found by its name)")
    protocol: Literal["grpc", "http"] = Field("grpc", description="wire protocol")
    url: str | None = Field(None, description=f"host:port of that protocol's endpoint (default {DEFAULT_URLS['grpc']} "
                            f"for gRPC, {DEFAULT_URLS['http']} for HTTP)")
    batch_size: int = Field(8, ge=1, description="images (or tiles) per request, at most the model's max batch")
    concurrency: int = Field(4, ge=1, le=256, description="requests kept in flight")
    timeout: float = Field(120.0, gt=0, description="seconds to wait for one reply")
    shared_memory: Literal["none", "system"] = Field(
        "none", description="'system': pass pixels and maps through POSIX shared memory (client and server on one host)"
    )
    encoded: bool = Field(False, description="send the files' bytes unchanged to <model>_encoded; the server decodes "
                          "and resizes them (less bandwidth; no tiling)")
    tiling: TilingConfig | None = Field(None, description="sliding windows for large frames")
    maps: bool = Field(False, description="request anomaly maps (heatmaps, pixel metrics)")
    map_format: Literal["fp32", "uint8"] = Field(
        "fp32", description="'uint8': maps as 0..255 from <model>_map8, a quarter of the bytes (resolution 1/255)"
    )
    keep_images: bool = Field(False, description="keep each decoded image on its result (heatmaps)")
    workers: int = Field(2, ge=1, le=64, description="threads reading and preparing images")
    retries: int = Field(6, ge=0, le=100, description="resends of a request while the server is unreachable; the "
                         "files still unscored after them are reported as not scored")
    backoff: float = Field(0.5, gt=0, description=f"seconds before the first resend, doubled each time (at most "
                           f"{MAX_BACKOFF:g} s)")
    tls_root: str | None = Field(None, description="PEM CA certificate: talk gRPC over TLS")

    @model_validator(mode="after")
    def _compatible(self) -> ScoreConfig:
        if self.encoded and self.tiling is not None:
            raise ValueError("tiling cuts decoded frames on the client: it cannot be combined with encoded input")
        if self.encoded and self.shared_memory != "none":
            raise ValueError("shared memory carries decoded pixels: it cannot be combined with encoded input")
        return self

    @property
    def endpoint(self) -> str:
        """The URL to use."""
        return self.url or DEFAULT_URLS[self.protocol]

    @property
    def candidates(self) -> list[str]:
        """Models that can serve these options, best first (repositories exported before the output profiles
        existed have only ``<model>``)."""
        names = ModelNames(self.model)
        if self.encoded:
            return [names.encoded] if self.maps else [names.encoded_score, names.encoded]
        if not self.maps:
            return [names.score_only, names.ensemble]  # no map computed or sent at all
        return [names.map8] if self.map_format == "uint8" else [names.ensemble]

    @property
    def map_output(self) -> str:
        """The output carrying the map."""
        return MAP_U8 if self.map_format == "uint8" and not self.encoded else MAP

    @property
    def outputs(self) -> list[str]:
        """The outputs to request."""
        return [SCORE, RAW_SCORE, LABEL, *([self.map_output] if self.maps else [])]


def _array(**kwargs: Any) -> Any:
    """A result field holding an array: left out of the written rows and of the repr."""
    return field(default=None, repr=False, metadata={"array": True}, **kwargs)


@dataclass
class ImageResult:
    """The outcome for one file; ``status`` is ``"ok"`` or ``"error"`` (then ``error`` says why)."""

    path: str
    status: str
    score: float | None = None
    raw_score: float | None = None
    label: str | None = None
    latency_ms: float | None = None
    width: int | None = None
    height: int | None = None
    tiles: int = 1
    error: str | None = None
    anomaly_map: np.ndarray | None = _array()
    """Calibrated map in [0, 1]: the model's resolution, or the frame's when tiled. Only with ``maps``."""
    image: np.ndarray | None = _array()
    """The decoded RGB image. Only with ``keep_images``."""

    @property
    def ok(self) -> bool:
        """Whether the image was scored."""
        return self.status == "ok"

    def record(self) -> dict[str, Any]:
        """The row written to CSV / JSON lines (no arrays), keys in :data:`RECORD_FIELDS` order."""
        return {name: getattr(self, name) for name in RECORD_FIELDS}


#: The fields of :class:`ImageResult` that are written to the reports, in order.
RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ImageResult) if not f.metadata.get("array"))


@dataclass
class RunSummary:
    """Counts, throughput and latency of one scoring run."""

    model: str
    protocol: str
    images: int = 0
    scored: int = 0
    errors: int = 0
    anomalous: int = 0
    normal: int = 0
    not_scored: int = 0
    retries: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def anomalous_fraction(self) -> float | None:
        """Anomalous share of the scored images."""
        return self.anomalous / self.scored if self.scored else None

    @property
    def images_per_second(self) -> float | None:
        """Scored images per second of the run."""
        return self.scored / self.seconds if self.seconds > 0 else None

    def latency(self) -> dict[str, float | None]:
        """Latency percentiles (p50, p95, p99) and mean in milliseconds (``None`` without scored images)."""
        lat = np.asarray(self.latencies_ms, dtype=np.float64)
        pct = {f"p{q}": float(np.percentile(lat, q)) if lat.size else None for q in (50, 95, 99)}
        return {**pct, "mean": float(lat.mean()) if lat.size else None}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary with the anomalous fraction, images/s and latency percentiles."""
        counts = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "latencies_ms"}
        return {**counts, "anomalous_fraction": self.anomalous_fraction,
                "images_per_second": self.images_per_second, "latency_ms": self.latency()}


@dataclass(frozen=True)
class ModelInfo:
    """What the client needs to know about the served model."""

    served: str
    input_name: str
    input_datatype: str
    size: int | None
    max_batch_size: int
    map_shape: tuple[int, ...] | None


def model_info(config: ScoreConfig) -> ModelInfo:
    """Ask the server for the model's input, batch limit and map shape; raises if it is not ready."""
    client = connect(config.protocol, config.endpoint, timeout=config.timeout, tls_root=config.tls_root)
    try:
        served = next((m for m in config.candidates if client.is_model_ready(m)), None)
        if served is None:
            raise InferenceServerException(f"model '{config.candidates[0]}' is not ready on {config.endpoint}")
        kwargs = {"as_json": True} if config.protocol == "grpc" else {}
        meta = client.get_model_metadata(served, **kwargs)
        cfg = client.get_model_config(served, **kwargs)
        cfg = cfg.get("config", cfg)
        # The pixel ensemble's input tells the model's image size (the encoded ensembles take bytes).
        base = client.get_model_metadata(config.model, **kwargs) if served != config.model else meta
    finally:
        client.close()
    inp = meta["inputs"][0]
    shape = [int(d) for d in base["inputs"][0]["shape"]]
    outputs = {o["name"]: [int(d) for d in o["shape"]] for o in meta["outputs"]}
    return ModelInfo(
        served=served,
        input_name=inp["name"],
        input_datatype=inp["datatype"],
        size=shape[1] if len(shape) == 4 else None,
        max_batch_size=int(cfg.get("max_batch_size", cfg.get("maxBatchSize", 1)) or 1),
        map_shape=next((tuple(outputs[n][1:]) for n in (MAP, MAP_U8) if n in outputs), None),
    )


def _check_fits(config: ScoreConfig, info: ModelInfo) -> None:
    """Raise :class:`ScoringSetupError` when the options cannot work with the served model."""
    if config.batch_size > info.max_batch_size:
        raise ScoringSetupError(f"batch size {config.batch_size} exceeds the model's max_batch_size {info.max_batch_size}")
    if config.maps and info.map_shape is None:
        raise ScoringSetupError(f"model '{config.model}' has no {MAP} output (a vector model?)")
    if info.size is None:
        raise ScoringSetupError(f"model '{config.model}' does not take images")


# ---------------------------------------------------------------------------------------------- one file
@dataclass(frozen=True)
class TileReply:
    """The served outputs for one unit of a file: the whole image, or one of its tiles."""

    score: float
    """Calibrated 0..1 score."""
    raw_score: float
    label: str
    """:data:`~kdcore.contract.ANOMALOUS` or :data:`~kdcore.contract.NORMAL`."""
    anomaly_map: np.ndarray | None = field(default=None, repr=False, compare=False)
    """Calibrated 0..1 map ``(1, S, S)`` float32, or ``None`` when no map was requested."""

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray], row: int) -> TileReply:
        """Row ``row`` of a batch's outputs (the map copied, which frees the reply's buffer)."""
        return cls(score=float(outputs[SCORE][row, 0]), raw_score=float(outputs[RAW_SCORE][row, 0]),
                   label=label_text(outputs[LABEL][row, 0]), anomaly_map=_map_row(outputs, row))


def _map_row(outputs: dict[str, np.ndarray], row: int) -> np.ndarray | None:
    """One unit's 0..1 map as float32; UINT8 maps are read back as v/255."""
    if MAP in outputs:
        return np.array(outputs[MAP][row], dtype=np.float32)
    if MAP_U8 in outputs:
        return outputs[MAP_U8][row].astype(np.float32) / np.float32(255.0)
    return None


@dataclass(eq=False)
class _Job:
    """One file on its way through the pipeline: its units (model inputs), then their replies."""

    index: int
    path: str
    units: np.ndarray | None = None
    """``(U, S, S, 3)`` pixels or ``(1, 1)`` encoded bytes; ``None`` when the file could not be prepared."""
    boxes: list[Box] | None = None
    width: int | None = None
    height: int | None = None
    image: np.ndarray | None = None
    error: str | None = None
    replies: dict[int, TileReply] = field(default_factory=dict)
    failed: int = 0
    sent_at: float | None = None
    done_at: float | None = None

    @property
    def resolved(self) -> bool:
        """Every unit has a reply or has failed (or the file never had units)."""
        return self.units is None or len(self.replies) + self.failed == len(self.units)

    def drop_arrays(self) -> None:
        """Free the pixels and replies once the result is out (a tiled 12-megapixel frame holds many MB)."""
        self.units = self.units[:0] if self.units is not None else None
        self.image = None
        self.replies = {}


@dataclass(frozen=True, eq=False)
class _Unit:
    """Unit ``index`` of ``job``: one row of a batch."""

    job: _Job
    index: int

    @property
    def data(self) -> np.ndarray:
        """The row to send."""
        return self.job.units[self.index]


@dataclass(frozen=True, eq=False)
class _InFlight:
    """A sent batch: its handle, its units in row order, and how many resends it has had."""

    handle: Pending
    units: list[_Unit]
    attempt: int


class _Preparer:
    """Reads and prepares one file (runs in worker threads; OpenCV releases the GIL)."""

    def __init__(self, config: ScoreConfig, info: ModelInfo) -> None:
        self.config, self.info = config, info

    def __call__(self, index: int, path: str) -> _Job:
        job = _Job(index, path)
        try:
            data = Path(path).read_bytes()
            image = None
            if not self.config.encoded or self.config.keep_images:
                image = decode_image(data)
                job.height, job.width = image.shape[:2]
            if self.config.encoded:
                job.units = np.array([[data]], dtype=object)
            elif self.config.tiling is not None and self.config.tiling.applies_to(*image.shape[:2]):
                job.boxes = tile_boxes(*image.shape[:2], self.config.tiling)
                job.units = cut_tiles(image, job.boxes, self.info.size, resize_to)
            else:
                job.units = resize_to(image, self.info.size)[None]
            if self.config.keep_images:
                job.image = image
        except (OSError, ImageDecodeError) as e:
            job.error = f"{type(e).__name__}: {e}" if isinstance(e, OSError) else str(e)
            job.units = None
        return job


def _finish(job: _Job, config: ScoreConfig) -> ImageResult:
    """Turn a resolved job into its result (stitching tiles when there are several)."""
    common = dict(path=job.path, width=job.width, height=job.height, image=job.image,
                  tiles=len(job.units) if job.units is not None else 0)
    if job.error or job.failed:
        return ImageResult(status="error", error=job.error or NOT_SCORED, **common)
    replies = [job.replies[i] for i in range(len(job.units))]
    best = max(replies, key=lambda r: r.raw_score)
    # Any anomalous window makes the frame anomalous.
    label = ANOMALOUS if any(r.label == ANOMALOUS for r in replies) else best.label
    amap = None
    if config.maps:
        if job.boxes is None:
            amap = replies[0].anomaly_map[0]
        else:
            stitcher = MapStitcher(job.height, job.width)
            for box, reply in zip(job.boxes, replies):
                stitcher.add(box, reply.anomaly_map)
            amap = stitcher.result()
    latency = (job.done_at - job.sent_at) * 1000.0
    return ImageResult(status="ok", score=best.score, raw_score=best.raw_score, label=label,
                       latency_ms=latency, anomaly_map=amap, **common)


# ---------------------------------------------------------------------------------------------- the run
class _Stopped(Exception):
    """Ctrl-C was pressed: stop submitting, keep what was written."""


class _CtrlC:
    """While active, the first Ctrl-C sets :attr:`stop` (checked between steps, so no library call is cut in
    half) and a second one interrupts at once. Only the main thread receives signals: elsewhere it does nothing."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._previous = None

    def __enter__(self) -> threading.Event:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self.stop

    def _handle(self, signum, frame) -> None:
        if self.stop.is_set():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.stop.set()

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class ScoringPipeline:
    """One run's engine: prefetch files, batch their units, keep requests in flight, emit finished files.

    All its state lives in :meth:`run`'s thread (workers only prepare files, the transport's threads only carry
    requests), so it needs no lock. A refused batch is sent again unit by unit to find the file(s) the server
    rejects; a batch the server could not answer is resent after a doubling wait (shared memory registered
    again, in case the server restarted) and, once the retries are spent, it and every file after it are
    reported as not scored without waiting again.

    Args:
        paths: The files, in order.
        config: The run's options.
        info: The served model (see :func:`model_info`).
        transport: Requests to the served model.
        on_result: Called with each file's result, in this thread.
        summary: Counts updated as results are emitted.
        stop: Set to stop submitting (the first Ctrl-C).
        bar: A tqdm progress bar to advance, or ``None``.
    """

    def __init__(self, paths: Sequence[str], config: ScoreConfig, info: ModelInfo, transport: Transport,
                 on_result: Callable[[ImageResult], None], summary: RunSummary, stop: threading.Event,
                 bar: Any = None) -> None:
        self.paths, self.config, self.transport = paths, config, transport
        self.on_result, self.summary, self.stop, self.bar = on_result, summary, stop, bar
        self.prepare = _Preparer(config, info)
        self.pool = ThreadPoolExecutor(config.workers, thread_name_prefix="prepare")
        # Prefetch enough rows to keep every slot busy, counted in rows (a tiled frame is many rows).
        self.rows_wanted = 2 * config.concurrency * config.batch_size
        self.rows_per_job = 1.0
        self.prepared: deque[Future] = deque()  # of _Job, in file order
        self.next_path = 0
        self.waiting: deque[_Unit] = deque()  # prepared units waiting for a batch
        self.alone: deque[_Unit] = deque()  # units of a refused batch, to be sent one per request
        self.in_flight: deque[_InFlight] = deque()
        self.free_slots = list(range(config.concurrency))
        self.down: str | None = None  # why nothing more is sent, once the retries are spent

    # ------------------------------------------------------------------ driving
    def run(self) -> None:
        """Score every file; raises :class:`_Stopped` (first Ctrl-C) or ``KeyboardInterrupt``."""
        self._refill()
        while True:
            self._fill_slots()
            if not self.in_flight:
                return
            if self.stop.is_set():
                raise _Stopped
            self._collect(self.in_flight.popleft())

    def close(self) -> None:
        """Stop the workers (files not yet prepared are dropped)."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _wait(self, future: Future | Pending) -> Any:
        """``future.result()``, polling so that a Ctrl-C (``stop``) is noticed within a quarter of a second."""
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                return future.result(timeout=0.25)
            except FutureTimeout:
                continue

    # ------------------------------------------------------------------ files in
    def _lookahead(self) -> int:
        """Files to keep prepared: enough rows for every slot, capped when whole decoded frames are kept for
        heatmaps (a 12-megapixel frame is 36 MB)."""
        jobs = max(2 * self.config.workers, round(self.rows_wanted / self.rows_per_job))
        return min(jobs, 4 * self.config.workers + 4) if self.config.keep_images else jobs

    def _refill(self) -> None:
        while self.next_path < len(self.paths) and len(self.prepared) < self._lookahead():
            self.prepared.append(self.pool.submit(self.prepare, self.next_path, self.paths[self.next_path]))
            self.next_path += 1

    def _take(self, n: int) -> list[_Unit]:
        """Up to ``n`` units, pulling prepared files in order (files that could not be prepared are emitted)."""
        while len(self.waiting) < n and (self.prepared or self.next_path < len(self.paths)):
            self._refill()
            job: _Job = self._wait(self.prepared.popleft())
            if job.units is not None:
                self.rows_per_job = 0.8 * self.rows_per_job + 0.2 * len(job.units)
            self._refill()
            if job.units is None:
                self._emit(job)
                continue
            self.waiting.extend(_Unit(job, i) for i in range(len(job.units)))
        return [self.waiting.popleft() for _ in range(min(n, len(self.waiting)))]

    # ------------------------------------------------------------------ requests out
    def _fill_slots(self) -> None:
        """Send batches while a slot is free: first the units of refused batches, one each, then new ones."""
        while self.free_slots:
            if self.alone:
                self._send([self.alone.popleft()])
                continue
            units = self._take(self.config.batch_size)
            if not units:
                return
            self._send(units)

    def _send(self, units: list[_Unit], attempt: int = 0) -> None:
        if self.down:
            self._fail(units, self.down)
            return
        try:
            self._submit(units, attempt)
        except RequestFailed as e:
            self._failed(units, attempt, e)

    def _submit(self, units: list[_Unit], attempt: int) -> None:
        """Send ``units`` as one batch on a free slot; raises the classified error if it cannot be sent."""
        slot = self.free_slots.pop()
        try:
            handle = self.transport.submit(np.stack([u.data for u in units]), slot)
        except RequestFailed:
            self.free_slots.append(slot)
            raise
        for u in units:
            u.job.sent_at = handle.sent_at if u.job.sent_at is None else u.job.sent_at
        self.in_flight.append(_InFlight(handle, units, attempt))

    def _failed(self, units: list[_Unit], attempt: int, error: RequestFailed) -> None:
        """A batch came back without outputs: resend, split, or report it, as its error says."""
        if self.down:
            self._fail(units, self.down)
        elif isinstance(error, ServerUnavailable):
            self._resend(units, attempt, error)
        elif len(units) > 1:
            self.alone.extend(units)  # find the offending file(s): each unit alone
        else:
            self._fail(units, f"server: {error}")

    def _resend(self, units: list[_Unit], attempt: int, error: RequestFailed) -> None:
        """After a wait that doubles each time, send again; once the retries are spent, give up on the run."""
        while attempt < self.config.retries:
            if self.stop.wait(min(self.config.backoff * 2**attempt, MAX_BACKOFF)):
                raise _Stopped
            attempt += 1
            self.summary.retries += 1
            try:
                if self.transport.shared_memory:
                    self.transport.reregister()  # a restarted server has forgotten the regions
                self._submit(units, attempt)
                return
            except RequestFailed as e:  # still down: wait longer
                error = e
        self.down = f"{NOT_SCORED}: server unreachable after {self.config.retries} retries ({error})"
        self._fail(units, self.down)

    # ------------------------------------------------------------------ replies in, results out
    def _collect(self, flight: _InFlight) -> None:
        """Wait for the oldest batch and file its replies (or its failure)."""
        try:
            reply: Reply = self._wait(flight.handle)
        except RequestFailed as e:
            self.free_slots.append(flight.handle.slot)
            self._failed(flight.units, flight.attempt, e)
            return
        self.free_slots.append(flight.handle.slot)
        for row, unit in enumerate(flight.units):
            unit.job.replies[unit.index] = TileReply.from_outputs(reply.outputs, row)
            unit.job.done_at = reply.done_at
            if unit.job.resolved:
                self._emit(unit.job)

    def _fail(self, units: list[_Unit], reason: str) -> None:
        """Count ``units`` as failed for ``reason`` (a file keeps its first reason)."""
        for unit in units:
            unit.job.failed += 1
            unit.job.error = unit.job.error or reason
            if unit.job.resolved:
                self._emit(unit.job)

    def _emit(self, job: _Job) -> None:
        """Hand a resolved file's result to ``on_result`` and count it."""
        result = _finish(job, self.config)
        summary = self.summary
        summary.scored += result.ok
        summary.errors += not result.ok
        if result.ok:
            summary.anomalous += result.label == ANOMALOUS
            summary.normal += result.label != ANOMALOUS
            summary.latencies_ms.append(result.latency_ms)
        self.on_result(result)
        job.drop_arrays()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(anomalous=summary.anomalous, errors=summary.errors, refresh=False)


def score_images(
    inputs: Iterable[str | Path],
    config: ScoreConfig,
    on_result: Callable[[ImageResult], None],
    *,
    progress: bool = False,
) -> RunSummary:
    """Score every image of ``inputs`` (files, folders, globs); calls ``on_result`` once per file.

    Args:
        inputs: Files, folders (searched recursively) and glob patterns.
        config: Model, endpoint, batching, concurrency and options.
        on_result: Called in the calling thread for each file, as results arrive.
        progress: Show a progress bar with images/s on stderr.

    Returns:
        The run's :class:`RunSummary` (``interrupted`` when Ctrl-C stopped it).

    Raises:
        FileNotFoundError: ``inputs`` name no image.
        InferenceServerException: The server or model cannot be reached before the run starts.
        ScoringSetupError: The options do not fit the served model.
    """
    paths = expand_inputs(inputs)
    info = model_info(config)
    _check_fits(config, info)
    transport = Transport(
        config.protocol, config.endpoint, info.served,
        input_name=info.input_name, input_datatype=info.input_datatype, outputs=config.outputs,
        concurrency=config.concurrency, timeout=config.timeout, shared_memory=config.shared_memory,
        max_batch=config.batch_size, item_shape=(info.size, info.size, 3), map_shape=info.map_shape,
        tls_root=config.tls_root,
    )
    summary = RunSummary(model=info.served, protocol=config.protocol, images=len(paths))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", desc=f"scoring {info.served}", dynamic_ncols=True)
    start = time.perf_counter()
    pipeline = None
    try:
        with _CtrlC() as stop:
            pipeline = ScoringPipeline(paths, config, info, transport, on_result, summary, stop, bar)
            pipeline.run()
    except (KeyboardInterrupt, _Stopped):
        summary.interrupted = True
    finally:
        summary.seconds = time.perf_counter() - start
        if pipeline is not None:
            pipeline.close()
        transport.close()
        if bar is not None:
            bar.close()
    summary.not_scored = summary.images - summary.scored - summary.errors
    return summary
