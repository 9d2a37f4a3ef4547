"""The engine of a scoring run: prefetch files, batch their units, keep requests in flight, emit finished files.

:class:`BatchSender` is the request engine every scoring command shares: it packs units (rows of the model's
input) into batches, keeps ``concurrency`` requests in flight through :mod:`client.transport`, resends while the
server is down, sends a refused batch again unit by unit to find the offender, and hands each batch's reply (or
each unit's failure) back to its caller. It knows nothing of images: :func:`client.scoring.score_images` drives it
through a :class:`ScoringPipeline` (worker threads read and prepare images, decode, resize or tile; each file's
replies become its :class:`~client.results.ImageResult` as soon as the last one returns), ``score-signal``
(:mod:`client.signal_scoring`) with the windows of time-series records.
"""

from __future__ import annotations

import signal
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np

from client.results import NOT_SCORED, ImageResult, RunSummary
from client.transport import Pending, Reply, RequestFailed, ServerUnavailable, Transport
from kdcore.contract import ANOMALOUS, MAP, MAP_U8, RAW_SCORE, SCORE, label_of
from kdcore.imageio import ImageDecodeError, decode_image, resize_to
from kdcore.regions import anomalous_regions, regions_in_image
from kdcore.tiling import Box, MapStitcher, cut_tiles, tile_boxes

if TYPE_CHECKING:  # the run's options and the served model: read here, made in client.scoring
    from client.scoring import ModelInfo, ScoreConfig

#: Longest wait between two resends, in seconds.
MAX_BACKOFF = 8.0


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
                   label=label_of(outputs, row), anomaly_map=_map_row(outputs, row))


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
    amap, regions = None, None
    if config.maps:
        if job.boxes is None:
            amap = replies[0].anomaly_map[0]
        else:
            stitcher = MapStitcher(job.height, job.width)
            for box, reply in zip(job.boxes, replies):
                stitcher.add(box, reply.anomaly_map)
            amap = stitcher.result()
        # The regions of the map it has (a tiled frame's at full resolution), placed on the image.
        regions = anomalous_regions(amap)
        if job.height is not None:
            regions = regions_in_image(regions, amap.shape, (job.height, job.width))
    latency = (job.done_at - job.sent_at) * 1000.0
    return ImageResult(status="ok", score=best.score, raw_score=best.raw_score, label=label,
                       latency_ms=latency, anomaly_map=amap, regions=regions, **common)


# ---------------------------------------------------------------------------------------------- the run
class Stopped(Exception):
    """Ctrl-C was pressed: stop submitting, keep what was written."""


class StopOnCtrlC:
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


def report_result(result: Any, summary: Any, on_result: Callable[[Any], None], bar: Any = None) -> None:
    """Count a finished item's ``result`` in ``summary`` (scored or error; anomalous or normal), hand it to
    ``on_result`` and advance the progress ``bar`` (a tqdm bar, or ``None``)."""
    summary.scored += result.ok
    summary.errors += not result.ok
    if result.ok:
        summary.anomalous += result.label == ANOMALOUS
        summary.normal += result.label != ANOMALOUS
    on_result(result)
    if bar is not None:
        bar.update(1)
        bar.set_postfix(anomalous=summary.anomalous, errors=summary.errors, refresh=False)


# ---------------------------------------------------------------------------------------------- the requests
class Unit(Protocol):
    """One row of a batch, as :class:`BatchSender` sends it."""

    @property
    def data(self) -> np.ndarray:
        """The row: one item of the model's input."""
        ...


class SendOptions(Protocol):
    """How :class:`BatchSender` drives the server (fields of ``ScoreConfig`` and ``SignalScoreConfig``)."""

    batch_size: int
    concurrency: int
    retries: int
    backoff: float


U = TypeVar("U", bound=Unit)


def wait_polling(future: Future | Pending, stop: threading.Event) -> Any:
    """``future.result()``, polling so that a Ctrl-C (``stop``) is noticed within a quarter of a second."""
    while True:
        if stop.is_set():
            raise Stopped
        try:
            return future.result(timeout=0.25)
        except FutureTimeout:
            continue


@dataclass(frozen=True, eq=False)
class _InFlight(Generic[U]):
    """A sent batch: its handle, its units in row order, and how many resends it has had."""

    handle: Pending
    units: list[U]
    attempt: int


class BatchSender(Generic[U]):
    """Sends units in batches, keeping ``options.concurrency`` requests in flight, and hands back what returns.

    All its state lives in :meth:`run`'s thread (the transport's threads only carry requests), so it needs no
    lock. A refused batch is sent again unit by unit to find the unit(s) the server rejects; a batch the server
    could not answer is resent after a doubling wait (shared memory registered again, in case the server
    restarted) and, once the retries are spent, it and every unit after it fail as not scored without waiting
    again.

    Args:
        transport: Requests to the served model.
        options: Batch size, requests in flight, resends and the first wait before one.
        summary: The run's counts: its ``retries`` counts the resends.
        stop: Set to stop submitting (the first Ctrl-C).
        take: Up to ``n`` new units, in order; an empty list once there are none left.
        on_reply: Called with a batch's units (in row order) and its :class:`~client.transport.Reply`.
        on_fail: Called with units that will not be scored and why (``server: ...`` for a unit the server
            refused, ``not scored: ...`` once the server stays unreachable).
        on_sent: Called with a batch's units and its handle each time the batch is sent, or ``None``.
    """

    def __init__(self, transport: Transport, options: SendOptions, summary: Any, stop: threading.Event, *,
                 take: Callable[[int], list[U]], on_reply: Callable[[list[U], Reply], None],
                 on_fail: Callable[[list[U], str], None],
                 on_sent: Callable[[list[U], Pending], None] | None = None) -> None:
        self.transport, self.options, self.summary, self.stop = transport, options, summary, stop
        self.take, self.on_reply, self.on_fail, self.on_sent = take, on_reply, on_fail, on_sent
        self.alone: deque[U] = deque()  # units of a refused batch, to be sent one per request
        self.in_flight: deque[_InFlight[U]] = deque()
        self.free_slots = list(range(options.concurrency))
        self.down: str | None = None  # why nothing more is sent, once the retries are spent

    def run(self) -> None:
        """Send every unit ``take`` gives; raises :class:`Stopped` (first Ctrl-C) or ``KeyboardInterrupt``."""
        while True:
            self._fill_slots()
            if not self.in_flight:
                return
            if self.stop.is_set():
                raise Stopped
            self._collect(self.in_flight.popleft())

    def _fill_slots(self) -> None:
        """Send batches while a slot is free: first the units of refused batches, one each, then new ones."""
        while self.free_slots:
            units = [self.alone.popleft()] if self.alone else self.take(self.options.batch_size)
            if not units:
                return
            self._send(units)

    def _send(self, units: list[U]) -> None:
        """Send a new batch (a failure to send is handled like a failed reply)."""
        if self.down:
            self.on_fail(units, self.down)
            return
        try:
            self._submit(units, 0)
        except RequestFailed as e:
            self._failed(units, 0, e)

    def _submit(self, units: list[U], attempt: int) -> None:
        """Send ``units`` as one batch on a free slot; raises the classified error if it cannot be sent."""
        batch = np.stack([u.data for u in units])
        slot = self.free_slots.pop()
        try:
            handle = self.transport.submit(batch, slot)
        except RequestFailed:
            self.free_slots.append(slot)
            raise
        if self.on_sent is not None:
            self.on_sent(units, handle)
        self.in_flight.append(_InFlight(handle, units, attempt))

    def _failed(self, units: list[U], attempt: int, error: RequestFailed) -> None:
        """A batch came back without outputs: resend, split, or report it, as its error says."""
        if self.down:
            self.on_fail(units, self.down)
        elif isinstance(error, ServerUnavailable):
            self._resend(units, attempt, error)
        elif len(units) > 1:
            self.alone.extend(units)  # find the offending unit(s): each alone
        else:
            self.on_fail(units, f"server: {error}")

    def _resend(self, units: list[U], attempt: int, error: RequestFailed) -> None:
        """After a wait that doubles each time, send again; once the retries are spent, give up on the run."""
        while attempt < self.options.retries:
            if self.stop.wait(min(self.options.backoff * 2**attempt, MAX_BACKOFF)):
                raise Stopped
            attempt += 1
            self.summary.retries += 1
            try:
                if self.transport.shared_memory:
                    self.transport.reregister()  # a restarted server has forgotten the regions
                self._submit(units, attempt)
                return
            except RequestFailed as e:  # still down: wait longer
                error = e
        self.down = f"{NOT_SCORED}: server unreachable after {self.options.retries} retries ({error})"
        self.on_fail(units, self.down)

    def _collect(self, flight: _InFlight[U]) -> None:
        """Wait for the oldest batch and hand over its reply (or its failure)."""
        try:
            reply: Reply = wait_polling(flight.handle, self.stop)
        except RequestFailed as e:
            self.free_slots.append(flight.handle.slot)
            self._failed(flight.units, flight.attempt, e)
            return
        self.free_slots.append(flight.handle.slot)
        self.on_reply(flight.units, reply)


# ---------------------------------------------------------------------------------------------- image runs
class ScoringPipeline:
    """One image run: prefetch files, hand their units to a :class:`BatchSender`, emit finished files.

    Worker threads only prepare files; everything else happens in :meth:`run`'s thread. How requests are sent,
    resent and split is :class:`BatchSender`'s (a file keeps the first reason one of its units failed for).

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
        self.paths, self.config = paths, config
        self.on_result, self.summary, self.stop, self.bar = on_result, summary, stop, bar
        self.prepare = _Preparer(config, info)
        self.pool = ThreadPoolExecutor(config.workers, thread_name_prefix="prepare")
        # Prefetch enough rows to keep every slot busy, counted in rows (a tiled frame is many rows).
        self.rows_wanted = 2 * config.concurrency * config.batch_size
        self.rows_per_job = 1.0
        self.prepared: deque[Future] = deque()  # of _Job, in file order
        self.next_path = 0
        self.waiting: deque[_Unit] = deque()  # prepared units waiting for a batch
        self.sender = BatchSender(transport, config, summary, stop, take=self._take, on_reply=self._replied,
                                  on_fail=self._fail, on_sent=self._sent)

    # ------------------------------------------------------------------ driving
    def run(self) -> None:
        """Score every file; raises :class:`Stopped` (first Ctrl-C) or ``KeyboardInterrupt``."""
        self._refill()
        self.sender.run()

    def close(self) -> None:
        """Stop the workers (files not yet prepared are dropped)."""
        self.pool.shutdown(wait=False, cancel_futures=True)

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
            job: _Job = wait_polling(self.prepared.popleft(), self.stop)
            if job.units is not None:
                self.rows_per_job = 0.8 * self.rows_per_job + 0.2 * len(job.units)
            self._refill()
            if job.units is None:
                self._emit(job)
                continue
            self.waiting.extend(_Unit(job, i) for i in range(len(job.units)))
        return [self.waiting.popleft() for _ in range(min(n, len(self.waiting)))]

    # ------------------------------------------------------------------ replies in, results out
    def _sent(self, units: list[_Unit], handle: Pending) -> None:
        """A file's latency runs from the first time one of its units was sent."""
        for u in units:
            u.job.sent_at = handle.sent_at if u.job.sent_at is None else u.job.sent_at

    def _replied(self, units: list[_Unit], reply: Reply) -> None:
        """File a batch's replies; emit the files they complete."""
        for row, unit in enumerate(units):
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
        if result.ok:
            self.summary.latencies_ms.append(result.latency_ms)
        report_result(result, self.summary, self.on_result, self.bar)
        job.drop_arrays()
