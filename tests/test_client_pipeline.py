"""The scoring pipeline without a Triton server: how failed requests are classified (real tritonclient errors from
small local gRPC and HTTP servers), the named reply rows, the pipeline's batching, resends and error results
(with a scripted transport), and the ``score`` options generated from :class:`ScoreConfig`."""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Literal

import cv2
import grpc
import numpy as np
import pytest
from pydantic import BaseModel, Field
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from client.pipeline import ScoringPipeline, TileReply
from client.results import RunSummary
from client.score_command import build_parser
from client.scoring import ModelInfo, ScoreConfig
from client.transport import Pending, RequestRefused, ServerUnavailable, Transport, classify
from kdcore.contract import ANOMALOUS, IMAGE_INPUT, LABEL, MAP, MAP_U8, NORMAL, RAW_SCORE, SCORE, UINT8
from kdcore.options import add_config_options, config_values
from kdcore.tiling import TilingConfig

STUB_DEAD = "in ensemble 'm', Stub process 'm_scorer_0_0' is not healthy."
BAD_SHAPE = "unexpected shape for input 'image' for model 'm'. Expected [-1,8,8,3], got [1,4,8,3]."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _transport(protocol: str, url: str, timeout: float = 5.0) -> Transport:
    return Transport(protocol, url, "m", input_name=IMAGE_INPUT, input_datatype=UINT8, outputs=[SCORE],
                     concurrency=1, timeout=timeout)


def _failure(transport: Transport) -> Exception:
    """What one request's :meth:`Pending.result` raises."""
    try:
        pending = transport.submit(np.zeros((1, 8, 8, 3), np.uint8), 0)
        with pytest.raises(Exception) as caught:
            pending.result(timeout=30)
        return caught.value
    finally:
        transport.close()


# --------------------------------------------------------------------------- classification: gRPC
class _Aborting(service_pb2_grpc.GRPCInferenceServiceServicer):
    """A KServe v2 gRPC endpoint whose every inference fails with one status, as Triton's does."""

    def __init__(self) -> None:
        self.code, self.message, self.delay = grpc.StatusCode.UNAVAILABLE, "", 0.0

    def ModelInfer(self, request, context):  # noqa: N802  (the generated servicer's name)
        time.sleep(self.delay)
        context.abort(self.code, self.message)


@pytest.fixture(scope="module")
def grpc_endpoint() -> Iterator[tuple[str, _Aborting]]:
    servicer = _Aborting()
    server = grpc.server(ThreadPoolExecutor(2))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(0)


@pytest.mark.parametrize(
    ("code", "message", "kind"),
    [
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", ServerUnavailable),
        # Not found: the model (or a registered shared-memory region) existed when the run started.
        (grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'm' has no available versions", ServerUnavailable),
        (grpc.StatusCode.NOT_FOUND, "Unable to find shared memory region: 'kd_1_in'", ServerUnavailable),
        (grpc.StatusCode.INTERNAL, STUB_DEAD, ServerUnavailable),
        (grpc.StatusCode.INVALID_ARGUMENT, BAD_SHAPE, RequestRefused),
        (grpc.StatusCode.INVALID_ARGUMENT, "decoder: row 0: truncated JPEG", RequestRefused),
        (grpc.StatusCode.INTERNAL, "onnxruntime: non-zero status code", RequestRefused),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "message larger than max", RequestRefused),
    ],
)
def test_grpc_failures_are_classified_by_status_code(grpc_endpoint, code, message: str, kind: type) -> None:
    url, servicer = grpc_endpoint
    servicer.code, servicer.message, servicer.delay = code, message, 0.0
    error = _failure(_transport("grpc", url))
    assert type(error) is kind and str(error) == message
    assert isinstance(error.cause, InferenceServerException) and error.cause.status() == str(code)


def test_grpc_deadline_and_refused_connection_are_unavailable(grpc_endpoint) -> None:
    url, servicer = grpc_endpoint
    servicer.code, servicer.message, servicer.delay = grpc.StatusCode.INVALID_ARGUMENT, "too late", 1.0
    late = _failure(_transport("grpc", url, timeout=0.2))
    assert isinstance(late, ServerUnavailable) and late.cause.status() == str(grpc.StatusCode.DEADLINE_EXCEEDED)
    down = _failure(_transport("grpc", f"127.0.0.1:{_free_port()}"))
    assert isinstance(down, ServerUnavailable) and down.cause.status() == str(grpc.StatusCode.UNAVAILABLE)


# --------------------------------------------------------------------------- classification: HTTP
class _Answer:
    """What the HTTP endpoint does with the next request: a status and a Triton error body, or hang up."""

    status = 400
    message = ""
    hang_up = False


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802  (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if _Answer.hang_up:
            self.close_connection = True
            return
        body = json.dumps({"error": _Answer.message}).encode()
        self.send_response(_Answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (503, "Server not ready", ServerUnavailable),
        (404, "Request for unknown model: 'm' is not found", ServerUnavailable),
        (404, "Unable to find shared memory region: 'kd_1_in'", ServerUnavailable),
        (502, "bad gateway", ServerUnavailable),
        (500, STUB_DEAD, ServerUnavailable),
        (400, BAD_SHAPE, RequestRefused),
        (500, "onnxruntime: non-zero status code", RequestRefused),
    ],
)
def test_http_failures_are_classified_by_status(http_endpoint: str, status: int, message: str, kind: type) -> None:
    _Answer.status, _Answer.message, _Answer.hang_up = status, message, False
    error = _failure(_transport("http", http_endpoint))
    assert type(error) is kind and str(error) == message
    assert isinstance(error.cause, InferenceServerException) and error.cause.status() == str(status)


def test_http_connection_failures_are_unavailable(http_endpoint: str) -> None:
    _Answer.hang_up = True  # the server dies with the request in flight
    cut = _failure(_transport("http", http_endpoint))
    _Answer.hang_up = False
    assert isinstance(cut, ServerUnavailable) and not isinstance(cut.cause, InferenceServerException)
    refused = _failure(_transport("http", f"127.0.0.1:{_free_port()}"))
    assert isinstance(refused, ServerUnavailable) and isinstance(refused.cause, ConnectionRefusedError)
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        slow = _failure(_transport("http", f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.3))
    assert isinstance(slow, ServerUnavailable) and isinstance(slow.cause, TimeoutError)


def test_other_failures_are_refusals_and_waiting_is_not_a_failure() -> None:
    bug = classify(KeyError("score"))
    assert isinstance(bug, RequestRefused) and str(bug) == "KeyError: 'score'"
    assert classify(bug) is bug
    pending = Pending(Future(), 0, lambda raw, slot: raw, time.perf_counter())
    with pytest.raises(FutureTimeout):  # still in flight: not classified
        pending.result(timeout=0.01)


# --------------------------------------------------------------------------- named rows
def test_tile_replies_are_named_rows() -> None:
    outputs = {SCORE: np.array([[0.2], [0.9]], np.float32), RAW_SCORE: np.array([[1.0], [3.0]], np.float32),
               LABEL: np.array([[NORMAL.encode()], [ANOMALOUS]], dtype=object),
               MAP_U8: np.array([np.zeros((1, 2, 2)), np.full((1, 2, 2), 255)], np.uint8)}
    reply = TileReply.from_outputs(outputs, 1)
    assert (reply.score, reply.raw_score, reply.label) == (pytest.approx(0.9), 3.0, ANOMALOUS)
    assert reply.anomaly_map.dtype == np.float32 and np.all(reply.anomaly_map == 1.0)
    assert TileReply.from_outputs(outputs, 0).label == NORMAL
    with pytest.raises(dataclasses.FrozenInstanceError):
        reply.score = 0.0  # type: ignore[misc]
    fp32 = TileReply.from_outputs({**outputs, MAP: np.full((2, 1, 2, 2), 0.25, np.float32)}, 0)
    assert fp32.anomaly_map.shape == (1, 2, 2) and np.all(fp32.anomaly_map == 0.25)


# --------------------------------------------------------------------------- the pipeline, scripted
class _ScriptedTransport:
    """Answers each batch with ``answer(batch)``: outputs, or an exception as tritonclient would raise it."""

    shared_memory = False

    def __init__(self, answer: Callable[[np.ndarray], dict[str, np.ndarray]]) -> None:
        self.answer, self.batches, self.reregistered = answer, [], 0

    def submit(self, batch: np.ndarray, slot: int) -> Pending:
        self.batches.append(batch)
        future: Future = Future()
        try:
            future.set_result((self.answer(batch), time.perf_counter()))
        except Exception as e:  # noqa: BLE001  (handed to the pipeline through the future, like a real reply)
            future.set_exception(e)
        return Pending(future, slot, lambda raw, slot: raw, time.perf_counter())

    def reregister(self) -> None:
        self.reregistered += 1


def _by_value(batch: np.ndarray) -> dict[str, np.ndarray]:
    """Each image is one grey level v: score v/255, anomalous from 128 up."""
    v = batch.reshape(len(batch), -1).mean(axis=1, keepdims=True).astype(np.float32)
    return {SCORE: v / 255, RAW_SCORE: v,
            LABEL: np.array([[(ANOMALOUS if x >= 128 else NORMAL).encode()] for x in v[:, 0]], dtype=object)}


def _images(folder: Path, values: list[int], size: int = 8) -> list[str]:
    paths = []
    for i, v in enumerate(values):
        path = folder / f"{i:02d}.png"
        cv2.imwrite(str(path), np.full((size, size, 3), v, np.uint8))
        paths.append(str(path))
    return paths


def _run(paths: list[str], transport: _ScriptedTransport, **options) -> tuple[RunSummary, dict[str, object]]:
    config = ScoreConfig(backoff=0.01, **options)
    info = ModelInfo(served="m", input_name=IMAGE_INPUT, input_datatype=UINT8, size=8, max_batch_size=8,
                     map_shape=None)
    summary = RunSummary(model="m", protocol="grpc", images=len(paths))
    results = {}
    pipeline = ScoringPipeline(paths, config, info, transport, lambda r: results.__setitem__(Path(r.path).name, r),
                               summary, threading.Event())
    try:
        pipeline.run()
    finally:
        pipeline.close()
    return summary, results


def test_pipeline_batches_and_reports_unreadable_files(tmp_path: Path) -> None:
    paths = _images(tmp_path, [10, 200, 30, 40, 250])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    transport = _ScriptedTransport(_by_value)
    summary, results = _run([*paths, str(tmp_path / "broken.png")], transport, batch_size=2, concurrency=2)
    assert [len(b) for b in transport.batches] == [2, 2, 1]
    assert (summary.scored, summary.errors, summary.anomalous, summary.normal) == (5, 1, 2, 3)
    assert results["01.png"].label == ANOMALOUS and results["01.png"].score == pytest.approx(200 / 255)
    assert results["00.png"].label == NORMAL and results["00.png"].raw_score == pytest.approx(10)
    assert not results["broken.png"].ok and "decode" in results["broken.png"].error


def test_a_refused_batch_is_resent_file_by_file_to_find_the_offender(tmp_path: Path) -> None:
    paths = _images(tmp_path, [10, 13, 30, 40])

    def refuse_13(batch: np.ndarray) -> dict[str, np.ndarray]:
        if np.any(batch == 13):
            raise InferenceServerException(BAD_SHAPE, status=str(grpc.StatusCode.INVALID_ARGUMENT))
        return _by_value(batch)

    transport = _ScriptedTransport(refuse_13)
    summary, results = _run(paths, transport, batch_size=4, concurrency=1)
    assert [len(b) for b in transport.batches] == [4, 1, 1, 1, 1]
    assert (summary.scored, summary.errors, summary.retries) == (3, 1, 0)
    assert results["01.png"].error == f"server: {BAD_SHAPE}"


def test_tiles_of_a_frame_travel_in_batches_and_any_anomalous_tile_decides(tmp_path: Path) -> None:
    frame = np.full((16, 32, 3), 20, np.uint8)
    frame[:, 24:] = 220  # the last of four windows is anomalous
    cv2.imwrite(str(tmp_path / "frame.png"), frame)
    transport = _ScriptedTransport(_by_value)
    summary, results = _run([str(tmp_path / "frame.png")], transport, batch_size=3,
                            tiling=TilingConfig(columns=4, rows=1, overlap=0.0))
    assert [len(b) for b in transport.batches] == [3, 1]
    result = results["frame.png"]
    assert result.tiles == 4 and result.label == ANOMALOUS and result.raw_score == pytest.approx(220)


def test_an_unreachable_server_is_retried_then_the_rest_reported_at_once(tmp_path: Path) -> None:
    paths = _images(tmp_path, [10, 20, 30, 40, 50, 60])
    down = InferenceServerException("failed to connect to all addresses", status=str(grpc.StatusCode.UNAVAILABLE))
    flaky = iter([down, down])

    def comes_back(batch: np.ndarray) -> dict[str, np.ndarray]:
        error = next(flaky, None)
        if error is not None:
            raise error
        return _by_value(batch)

    summary, results = _run(paths, _ScriptedTransport(comes_back), batch_size=2, concurrency=1, retries=3)
    assert (summary.scored, summary.errors, summary.retries) == (6, 0, 2)

    def gone(batch: np.ndarray) -> dict[str, np.ndarray]:
        raise ConnectionRefusedError(111, "Connection refused")

    transport = _ScriptedTransport(gone)
    summary, results = _run(paths, transport, batch_size=2, concurrency=1, retries=2)
    assert (summary.scored, summary.errors, summary.retries) == (0, 6, 2)
    assert len(transport.batches) == 3  # the first batch and its two resends; nothing sent after that
    assert all(r.error.startswith("not scored: server unreachable after 2 retries (ConnectionRefusedError")
               for r in results.values())


def test_first_ctrl_c_stops_submitting(tmp_path: Path) -> None:
    paths = _images(tmp_path, [10, 20, 30, 40])
    stop = threading.Event()
    config = ScoreConfig(batch_size=1, concurrency=1)
    info = ModelInfo("m", IMAGE_INPUT, UINT8, 8, 8, None)
    seen = []

    def on_result(result) -> None:
        seen.append(result)
        stop.set()

    pipeline = ScoringPipeline(paths, config, info, _ScriptedTransport(_by_value), on_result,
                               RunSummary("m", "grpc", images=4), stop)
    with pytest.raises(Exception) as caught:
        pipeline.run()
    pipeline.close()
    assert type(caught.value).__name__ == "Stopped" and len(seen) == 1


# --------------------------------------------------------------------------- options generated from ScoreConfig
def test_score_options_are_generated_from_the_config() -> None:
    parser = build_parser()
    defaults = config_values(ScoreConfig, parser.parse_args([]))
    tiling = defaults.pop("tiling")
    config = ScoreConfig()
    assert defaults == {k: getattr(config, k) for k in defaults}
    assert set(defaults) == set(ScoreConfig.model_fields) - {"maps", "keep_images", "tiling"}
    assert tiling == {"tile_size": None, "overlap": TilingConfig.model_fields["overlap"].default}
    # Every option the command had before it was generated, short forms included.
    args = parser.parse_args(["-m", "x", "-i", "http", "-u", "h:1", "-b", "3", "-c", "2", "-t", "9", "--workers", "5",
                              "--shared-memory", "system", "--map-format", "uint8", "--encoded", "--tile-grid", "4x3",
                              "--tile-size", "256", "--overlap", "0.1", "--retries", "1", "--tls-root", "ca.pem",
                              "--backoff", "0.2"])
    values = config_values(ScoreConfig, args)
    assert values == {"model": "x", "protocol": "http", "url": "h:1", "batch_size": 3, "concurrency": 2,
                      "timeout": 9.0, "workers": 5, "shared_memory": "system", "map_format": "uint8",
                      "encoded": True, "retries": 1, "tls_root": "ca.pem", "backoff": 0.2,
                      "tiling": {"tile_size": 256, "overlap": 0.1}}
    assert args.tile_grid == "4x3"
    with pytest.raises(SystemExit):
        parser.parse_args(["--protocol", "ftp"])  # Literal choices are enforced
    help_text = parser.format_help()
    for name, field in ScoreConfig.model_fields.items():
        if name not in ("maps", "keep_images", "tiling"):
            assert " ".join(field.description.split()[:3]) in " ".join(help_text.split()), name


def test_the_generator_handles_literals_nested_models_and_true_flags() -> None:
    class Inner(BaseModel):
        size: int | None = Field(None, description="window side")
        hidden: int = 1

    class Outer(BaseModel):
        mode: Literal["a", "b"] = Field("a", description="the mode")
        fast: bool = Field(True, description="go fast")
        inner: Inner | None = Field(None, description="nested part")

    parser = argparse.ArgumentParser()
    groups = add_config_options(parser, Outer, exclude={"inner.hidden"}, aliases={"mode": ["-M"]})
    assert groups["inner"].title == "inner (nested part)"
    assert config_values(Outer, parser.parse_args([])) == {"mode": "a", "fast": True, "inner": {"size": None}}
    assert config_values(Outer, parser.parse_args(["-M", "b", "--no-fast", "--size", "4"])) == {
        "mode": "b", "fast": False, "inner": {"size": 4}}
