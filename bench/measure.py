"""Timed runs shared by the benchmarks: in-process ONNX Runtime and the served model through the project's
async client (:mod:`client.transport`), both reporting images/s and latency percentiles the same way."""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from client.transport import Transport
from kdcore.contract import MAP, SCORE, TensorSpec


@dataclass(frozen=True)
class Timing:
    """Throughput and per-request latency of one timed run."""

    images_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests: int
    failures: int = 0

    @classmethod
    def of(cls, latencies_s: list[float], images: int, seconds: float, failures: int = 0) -> Timing:
        """From per-request latencies (seconds), images done and wall time."""
        ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
        p50, p95, p99 = (float(np.percentile(ms, q)) for q in (50, 95, 99)) if ms.size else (np.nan,) * 3
        return cls(images / seconds if seconds > 0 else 0.0, p50, p95, p99, int(ms.size), failures)

    def to_dict(self) -> dict:
        """JSON-ready."""
        return asdict(self)

    @classmethod
    def median(cls, runs: list[Timing]) -> Timing:
        """The typical run of several: the median of each figure, requests and failures summed."""
        def med(field: str) -> float:
            return float(np.median([getattr(t, field) for t in runs]))

        return cls(med("images_per_second"), med("p50_ms"), med("p95_ms"), med("p99_ms"),
                   sum(t.requests for t in runs), sum(t.failures for t in runs))


ORT_WARMUP_RUNS = 3


def ort_session(onnx_path: Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU ONNX Runtime session with ``threads`` intra-op threads (default: every core)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def ort_run(session: ort.InferenceSession, inputs: np.ndarray, batch: int, seconds: float) -> Timing:
    """In-process ONNX Runtime at a fixed batch size, back to back for ``seconds``: the limit serving approaches."""
    name = session.get_inputs()[0].name
    x = np.ascontiguousarray(np.resize(inputs, (batch, *inputs.shape[1:])))
    for _ in range(ORT_WARMUP_RUNS):
        session.run(None, {name: x})  # warm-up: first runs allocate
    latencies, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(latencies) < 5:
        t = time.perf_counter()
        session.run(None, {name: x})
        latencies.append(time.perf_counter() - t)
    return Timing.of(latencies, batch * len(latencies), time.perf_counter() - start)


def served_run(
    url: str,
    protocol: str,
    model: str,
    input_spec: TensorSpec,
    inputs: np.ndarray,
    *,
    concurrency: int,
    seconds: float,
    outputs: tuple[str, ...] = (SCORE,),
    batch: int = 1,
    shared_memory: str = "none",
) -> Timing:
    """Closed loop through the server: ``concurrency`` requests of ``batch`` images always in flight.

    Every reply is checked (each requested output present with one row per image); a failed or malformed reply
    counts as a failure, not as throughput.
    """
    transport = Transport(
        protocol, url, model, input_name=input_spec.name, input_datatype=input_spec.datatype,
        outputs=list(outputs), concurrency=concurrency, timeout=120.0, shared_memory=shared_memory,
        max_batch=batch, item_shape=tuple(inputs.shape[1:]),
        map_shape=(1, *inputs.shape[1:3]) if MAP in outputs else None,
    )
    rng = np.random.default_rng(0)
    batches = [np.ascontiguousarray(inputs[rng.integers(0, len(inputs), batch)]) for _ in range(16)]
    pending: deque = deque()
    latencies: list[float] = []
    failures = done = k = 0
    try:
        for i in range(concurrency):  # warm-up round
            transport.submit(batches[i % 16], i).result()
        free = list(range(concurrency))
        start = time.perf_counter()
        while True:
            while free and time.perf_counter() - start < seconds:
                pending.append(transport.submit(batches[k % 16], free.pop()))
                k += 1
            if not pending:
                break
            handle = pending.popleft()
            free.append(handle.slot)
            try:
                reply = handle.result()
            except Exception:  # noqa: BLE001  (any failure is counted, the run goes on)
                failures += 1
                continue
            if all(reply.outputs.get(o) is not None and len(reply.outputs[o]) == batch for o in outputs):
                latencies.append(reply.done_at - handle.sent_at)
                done += batch
            else:
                failures += 1
        elapsed = time.perf_counter() - start
    finally:
        transport.close()
    return Timing.of(latencies, done, elapsed, failures)


