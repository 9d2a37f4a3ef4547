"""Scoring image files with a served detector: the library behind ``python client/client.py score``.

:func:`score_images` reads and prepares images in worker threads (decode, resize or tile), packs them into
batches, keeps ``concurrency`` requests in flight (:mod:`client.transport`) and hands each image's
:class:`ImageResult` to a callback as soon as its last batch returns, so reports stream while the run goes on.
Files that cannot be read or decoded, and requests the server refuses, become error results with the reason:
they are counted, never fatal. Ctrl-C stops submitting and returns what was scored, marked interrupted.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator
from tritonclient.utils import InferenceServerException

from client.inputs import expand_inputs
from client.tiling import Box, MapStitcher, TilingConfig, cut_tiles, tile_boxes
from client.transport import MAP_OUTPUT, Transport, connect
from kdcore.imageio import ImageDecodeError, decode_image, resize_to

DEFAULT_URLS = {"grpc": "localhost:8001", "http": "localhost:8000"}
ENCODED_SUFFIX = "_encoded"
SCORE_ONLY_SUFFIX = "_score"
MAP8_SUFFIX = "_map8"
MAP_U8_OUTPUT = "anomaly_map_u8"
ENCODED_INPUT = "image_bytes"
ANOMALOUS = "anomalous"


class ScoringSetupError(ValueError):
    """The run cannot start: the options do not fit the served model (batch too large, no maps, not images)."""


class ScoreConfig(BaseModel):
    """How to reach the model and how hard to drive it."""

    model_config = {"extra": "forbid"}

    model: str = Field("ad_inference", description="ensemble to call (the pixel-input one; see encoded)")
    url: str | None = Field(None, description="host:port; default localhost:8001 (gRPC) or localhost:8000 (HTTP)")
    protocol: Literal["grpc", "http"] = "grpc"
    batch_size: int = Field(8, ge=1, description="images (or tiles) per request, at most the model's max batch")
    concurrency: int = Field(4, ge=1, le=256, description="requests kept in flight")
    timeout: float = Field(120.0, gt=0, description="seconds to wait for one reply")
    shared_memory: Literal["none", "system"] = Field("none", description="'system': pixels and maps via /dev/shm")
    encoded: bool = Field(False, description="send the files' bytes to <model>_encoded; the server decodes")
    tiling: TilingConfig | None = Field(None, description="sliding windows for large frames")
    maps: bool = Field(False, description="request anomaly maps (heatmaps, pixel metrics)")
    map_format: Literal["fp32", "uint8"] = Field(
        "fp32", description="'uint8': maps as 0..255 from <model>_map8, a quarter of the bytes (resolution 1/255)"
    )
    keep_images: bool = Field(False, description="keep each decoded image on its result (heatmaps)")
    workers: int = Field(2, ge=1, le=64, description="threads reading and preparing images")
    retries: int = Field(6, ge=0, le=100, description="resends of a request when the server is unreachable")
    backoff: float = Field(0.5, gt=0, description="first wait before a resend, doubled each time (capped at 8 s)")
    tls_root: str | None = Field(None, description="PEM CA certificate: gRPC over TLS")

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
        if self.encoded:
            full = self.model + ENCODED_SUFFIX
            return [full] if self.maps else [full + SCORE_ONLY_SUFFIX, full]
        if not self.maps:
            return [self.model + SCORE_ONLY_SUFFIX, self.model]  # no map computed or sent at all
        return [self.model + MAP8_SUFFIX] if self.map_format == "uint8" else [self.model]

    @property
    def map_output(self) -> str:
        """The output carrying the map."""
        return MAP_U8_OUTPUT if self.map_format == "uint8" and not self.encoded else MAP_OUTPUT


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
    anomaly_map: np.ndarray | None = field(default=None, repr=False)
    """Calibrated map in [0, 1]: the model's resolution, or the frame's when tiled. Only with ``maps``."""
    image: np.ndarray | None = field(default=None, repr=False)
    """The decoded RGB image. Only with ``keep_images``."""

    @property
    def ok(self) -> bool:
        """Whether the image was scored."""
        return self.status == "ok"

    def record(self) -> dict[str, Any]:
        """The row written to CSV / JSON lines (no arrays)."""
        row = asdict(self)
        row.pop("anomaly_map")
        row.pop("image")
        return row


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary with the anomalous fraction, images/s and latency percentiles."""
        lat = np.asarray(self.latencies_ms, dtype=np.float64)
        pct = {f"p{q}": float(np.percentile(lat, q)) if lat.size else None for q in (50, 95, 99)}
        d = asdict(self)
        d.pop("latencies_ms")
        return {
            **d,
            "anomalous_fraction": self.anomalous / self.scored if self.scored else None,
            "images_per_second": self.scored / self.seconds if self.seconds > 0 else None,
            "latency_ms": {**pct, "mean": float(lat.mean()) if lat.size else None},
        }


@dataclass
class _Job:
    """One file on its way through the pipeline."""

    index: int
    path: str
    units: np.ndarray | None = None
    boxes: list[Box] | None = None
    width: int | None = None
    height: int | None = None
    image: np.ndarray | None = None
    error: str | None = None
    rows: dict[int, tuple] = field(default_factory=dict)
    failed: int = 0
    sent_at: float | None = None
    done_at: float | None = None

    @property
    def resolved(self) -> bool:
        return self.units is None or len(self.rows) + self.failed == len(self.units)


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
        map_shape=next((tuple(outputs[n][1:]) for n in (MAP_OUTPUT, MAP_U8_OUTPUT) if n in outputs), None),
    )


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
    common = {"path": job.path, "width": job.width, "height": job.height, "image": job.image,
                  "tiles": len(job.units) if job.units is not None else 0}
    if job.error or job.failed:
        return ImageResult(status="error", error=job.error or "not scored", **common)
    rows = [job.rows[i] for i in range(len(job.units))]
    best = max(range(len(rows)), key=lambda i: rows[i][1])
    score, raw, label = rows[best][0], rows[best][1], rows[best][2]
    if any(r[2] == ANOMALOUS for r in rows):
        label = ANOMALOUS  # any anomalous window makes the frame anomalous
    amap = None
    if config.maps:
        if job.boxes is None:
            amap = rows[0][3][0]
        else:
            stitcher = MapStitcher(job.height, job.width)
            for box, row in zip(job.boxes, rows):
                stitcher.add(box, row[3])
            amap = stitcher.result()
    latency = (job.done_at - job.sent_at) * 1000.0
    return ImageResult(status="ok", score=float(score), raw_score=float(raw), label=label,
                       latency_ms=latency, anomaly_map=amap, **common)


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
    if config.batch_size > info.max_batch_size:
        raise ScoringSetupError(f"batch size {config.batch_size} exceeds the model's max_batch_size {info.max_batch_size}")
    outputs = ["score", "raw_score", "label", *([config.map_output] if config.maps else [])]
    if config.maps and info.map_shape is None:
        raise ScoringSetupError(f"model '{config.model}' has no anomaly_map output (a vector model?)")
    if info.size is None:
        raise ScoringSetupError(f"model '{config.model}' does not take images")
    transport = Transport(
        config.protocol, config.endpoint, info.served,
        input_name=info.input_name, input_datatype=info.input_datatype, outputs=outputs,
        concurrency=config.concurrency, timeout=config.timeout, shared_memory=config.shared_memory,
        max_batch=config.batch_size, item_shape=(info.size, info.size, 3), map_shape=info.map_shape,
        tls_root=config.tls_root,
    )
    summary = RunSummary(model=info.served, protocol=config.protocol, images=len(paths))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", desc=f"scoring {info.served}", dynamic_ncols=True)

    def emit(job: _Job) -> None:
        result = _finish(job, config)
        summary.scored += result.ok
        summary.errors += not result.ok
        if result.ok:
            summary.anomalous += result.label == ANOMALOUS
            summary.normal += result.label != ANOMALOUS
            summary.latencies_ms.append(result.latency_ms)
        on_result(result)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(anomalous=summary.anomalous, errors=summary.errors, refresh=False)

    start = time.perf_counter()
    pool = ThreadPoolExecutor(config.workers, thread_name_prefix="prepare")
    stop = threading.Event()
    previous = _catch_ctrl_c(stop)
    try:
        _run(paths, _Preparer(config, info), transport, pool, emit, summary, stop)
    except (KeyboardInterrupt, _Stopped):
        summary.interrupted = True
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        summary.seconds = time.perf_counter() - start
        pool.shutdown(wait=False, cancel_futures=True)
        transport.close()
        if bar is not None:
            bar.close()
    summary.not_scored = summary.images - summary.scored - summary.errors
    return summary


class _Stopped(Exception):
    """Ctrl-C was pressed: stop submitting, keep what was written."""


def _catch_ctrl_c(stop: threading.Event):
    """Turn the first Ctrl-C into ``stop`` (checked between steps, so no library call is cut in half); a second
    one interrupts at once. Returns the previous handler (None when not in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame) -> None:
        if stop.is_set():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    return previous


def _wait(future, stop: threading.Event):
    """``future.result()``, polling so that a Ctrl-C (``stop``) is noticed within a quarter of a second."""
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            return future.result(timeout=0.25)
        except FutureTimeout:
            continue


def _unreachable(error: BaseException) -> bool:
    """Whether a failure means the server is down or restarting (worth a resend), not that it refused the input."""
    if not isinstance(error, InferenceServerException):
        return True  # connection refused / reset (HTTP), timeouts
    text = f"{error.status()} {error.message()}".lower()
    # "unknown model" / "not ready": the model existed when the run started, so the server is restarting.
    return any(s in text for s in ("unavailable", "connect", "socket closed", "not healthy", "shared memory region",
                                   "deadline", "reset", "unknown model", "not ready"))


def _run(paths: Sequence[str], preparer: _Preparer, transport: Transport, pool: ThreadPoolExecutor, emit,
         summary: RunSummary, stop: threading.Event) -> None:
    """The pipeline: prefetch jobs, batch their units, keep requests in flight, emit finished jobs."""
    config = preparer.config
    # Prefetch enough rows to keep every slot busy, counted in rows (a tiled frame is many rows) and capped when
    # whole decoded frames are kept for heatmaps (a 12-megapixel frame is 36 MB).
    rows_wanted = 2 * config.concurrency * config.batch_size
    rows_per_job = 1.0
    prepared: deque[Future] = deque()
    next_path = 0
    units: deque[tuple[_Job, int]] = deque()  # (job, unit index) waiting for a batch
    retry: deque[tuple[_Job, int]] = deque()  # units of a failed batch, to be sent alone
    pending: deque[tuple[Any, list[tuple[_Job, int]], int]] = deque()  # (handle, units, attempt)
    free_slots = list(range(config.concurrency))

    def lookahead() -> int:
        jobs = max(2 * config.workers, round(rows_wanted / rows_per_job))
        return min(jobs, 4 * config.workers + 4) if config.keep_images else jobs

    def refill() -> None:
        nonlocal next_path
        while next_path < len(paths) and len(prepared) < lookahead():
            prepared.append(pool.submit(preparer, next_path, paths[next_path]))
            next_path += 1

    def take_units(n: int) -> list[tuple[_Job, int]]:
        """Up to ``n`` units, pulling prepared jobs in order (error jobs are emitted at once)."""
        nonlocal rows_per_job
        while len(units) < n and (prepared or next_path < len(paths)):
            refill()
            job = _wait(prepared.popleft(), stop)
            if job.units is not None:
                rows_per_job = 0.8 * rows_per_job + 0.2 * len(job.units)
            refill()
            if job.units is None:
                emit(job)
                continue
            units.extend((job, i) for i in range(len(job.units)))
        return [units.popleft() for _ in range(min(n, len(units)))]

    down: list[str] = []  # set once retries are spent: the rest is reported at once, not retried file by file

    def fail(batch_units: list[tuple[_Job, int]], reason: str) -> None:
        for job, _ in batch_units:
            job.failed += 1
            job.error = job.error or reason
            if job.resolved:
                emit(job)

    def send(batch_units: list[tuple[_Job, int]], attempt: int = 0) -> None:
        if down:
            fail(batch_units, down[0])
            return
        batch = np.stack([job.units[i] for job, i in batch_units])
        slot = free_slots.pop()
        try:
            handle = transport.submit(batch, slot)
        except Exception:
            free_slots.append(slot)
            raise
        for job, _ in batch_units:
            job.sent_at = handle.sent_at if job.sent_at is None else job.sent_at
        pending.append((handle, batch_units, attempt))

    def resend(batch_units: list[tuple[_Job, int]], attempt: int, error: BaseException) -> bool:
        """After a wait that doubles each time, send again; False once the retries are spent."""
        while attempt < config.retries:
            if stop.wait(min(config.backoff * 2**attempt, 8.0)):
                raise _Stopped
            attempt += 1
            summary.retries += 1
            try:
                if transport.shared_memory:
                    transport.reregister()
                send(batch_units, attempt)
                return True
            except Exception as e:  # noqa: BLE001  (still down: wait longer)
                error = e
        down.append(f"not scored: server unreachable after {config.retries} retries ({error_text(error)})")
        fail(batch_units, down[0])
        return False

    refill()
    while True:
        while free_slots:
            if retry:
                send([retry.popleft()])
                continue
            batch_units = take_units(config.batch_size)
            if not batch_units:
                break
            send(batch_units)
        if not pending:
            break
        if stop.is_set():
            raise _Stopped
        handle, batch_units, attempt = pending.popleft()
        try:
            reply = _wait(handle, stop)
        except _Stopped:
            raise
        except Exception as e:  # noqa: BLE001  (every failure is either resent or reported per file)
            free_slots.append(handle.slot)
            if down:
                fail(batch_units, down[0])
                continue
            if _unreachable(e):
                resend(batch_units, attempt, e)
                continue
            if len(batch_units) > 1:
                retry.extend(batch_units)  # find the offending file(s): each unit alone
                continue
            job, _ = batch_units[0]
            job.failed += 1
            job.error = job.error or f"server: {error_text(e)}"
            if job.resolved:
                emit(job)
            continue
        free_slots.append(handle.slot)
        out = reply.outputs
        for row, (job, i) in enumerate(batch_units):
            label = out["label"][row, 0]
            job.rows[i] = (
                float(out["score"][row, 0]),
                float(out["raw_score"][row, 0]),
                label.decode() if isinstance(label, bytes) else str(label),
                _map_row(out, row),
            )
            job.done_at = reply.done_at
            if job.resolved:
                emit(job)
                # The job's arrays are no longer needed once emitted; drop them to bound memory.
                job.units = job.units[:0] if job.units is not None else None


def _map_row(out: dict[str, np.ndarray], row: int) -> np.ndarray | None:
    """One image's 0..1 map as float32 (a copy, which frees the reply buffer); UINT8 maps are read back as v/255."""
    if MAP_OUTPUT in out:
        return np.array(out[MAP_OUTPUT][row], dtype=np.float32)
    if MAP_U8_OUTPUT in out:
        return out[MAP_U8_OUTPUT][row].astype(np.float32) / np.float32(255.0)
    return None


def error_text(error: BaseException) -> str:
    """A failure as one line: the server's message for a Triton error, else the exception's text."""
    text = error.message() if isinstance(error, InferenceServerException) else str(error)
    return " ".join(str(text).split())
