"""A bounded fuzzer for the served KServe-v2 endpoints: malformed requests over HTTP and gRPC, with valid ones
interleaved that must always be answered.

Each malformed request is one of a fixed set of *kinds* (mutated shapes, dtypes, data, names and structure of a
JSON infer request; lying binary-extension headers; truncated, oversized-header, chunked and garbage HTTP framing;
bad methods and paths; random, truncated and bit-flipped protobuf bodies and mutated fields over gRPC; unknown gRPC
methods). Every request has a deadline: one that gets no answer within it counts as *hung*. Every ``valid_every``
malformed requests a valid request is sent (alternating HTTP and gRPC through tritonclient) and resent until it is
answered with the reference score, so a crash shows up as an outage, timed, and never as a lost answer.

The known crasher of Triton 2.51 (a JSON request whose declared shape needs more memory than the machine has: the
HTTP frontend allocates for it before any check and aborts with std::bad_alloc) is a kind of its own, sent
``crashers`` times at fixed places; random JSON shapes stay below a few megabytes, so that a run's length does not
depend on how often chance draws a crash (each costs a restart). Huge shapes are drawn freely over gRPC and the
binary extension, which refuse them cleanly.

Used by ``tests/test_self_healing.py`` (bounded, against the supervised server) and ``kd-bench-faults``.
"""

from __future__ import annotations

import json
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2

from kdcore.contract import IMAGE_INPUT, SCORE, UINT8

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
#: The JSON request that aborts tritonserver 2.51's HTTP frontend (std::bad_alloc before any shape check).
CRASH_SHAPE = [1, 2147483648, 32, 3]


@dataclass
class FuzzReport:
    """What a fuzz run sent and saw.

    Attributes:
        requests: Malformed requests sent.
        kinds: Requests per kind.
        outcomes: Answers per protocol and kind of answer (``http 400``, ``grpc INVALID_ARGUMENT``, ``reset``, ...).
        hung: Requests that got no answer within the deadline.
        valid: Valid requests sent; every one was answered with the reference (else ``lost`` counts it).
        valid_resends: Resends the valid requests needed (after a crash, while the server restarted).
        lost: Valid requests never answered correctly within ``valid_deadline``.
        outages: Seconds from a valid request's first failure to its answer, per outage.
        seconds: Length of the run.
    """

    requests: int = 0
    kinds: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    hung: int = 0
    valid: int = 0
    valid_resends: int = 0
    lost: int = 0
    outages: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def longest_outage_s(self) -> float:
        """The longest time valid requests went unanswered."""
        return max(self.outages, default=0.0)

    def to_dict(self) -> dict:
        """JSON-ready figures."""
        d = asdict(self)
        d["kinds"], d["outcomes"] = dict(self.kinds), dict(self.outcomes)
        d["longest_outage_s"] = round(self.longest_outage_s, 2)
        return d


@dataclass(frozen=True)
class Target:
    """The server under test and the valid request: one image and the score it must get."""

    http: str  # host:port
    grpc: str
    model: str
    image: np.ndarray  # (1, H, W, 3) uint8
    score: np.ndarray  # (1, 1) reference
    atol: float


# ---------------------------------------------------------------------------------------------------- HTTP
def _valid_json(t: Target) -> dict:
    return {"inputs": [{"name": IMAGE_INPUT, "shape": list(t.image.shape), "datatype": UINT8,
                        "data": t.image.ravel().tolist()}], "outputs": [{"name": SCORE}]}


def _http(path: str, body: bytes, *, method: str = "POST", headers: dict[str, str] | None = None,
          content_length: str | None = None) -> bytes:
    head = {"Host": "fuzz", "Content-Type": "application/json",
            "Content-Length": str(len(body)) if content_length is None else content_length, **(headers or {})}
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items() if v != "")]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _shape(rng: random.Random, t: Target, *, huge: bool) -> object:
    """A wrong shape; ``huge`` adds ones that declare terabytes (only where the server refuses them cleanly)."""
    s = t.image.shape[1]
    shapes = [[], [1], [1, s, s], [1, s, s, 3, 1], [-1, s, s, 3], [0, s, s, 3], [1, 0, s, 3], [1, s, s, -3],
              [9, s, s, 3], [1, s + 1, s, 3], [1, 1024, 1024, 3], [1, -(2**31), 1, 1], ["1", s, s, 3],
              [1.5, s, s, 3], None, "1,64,64,3", [[1], [s]], {}]
    if huge:
        shapes += [[2**31, s, s, 3], [1, s, s, 2**40], CRASH_SHAPE, [1, 2**26, 64, 3], [2**62, 2**62, 1, 1]]
    return rng.choice(shapes)


def _mutated_json(rng: random.Random, t: Target) -> tuple[str, bytes]:
    body = _valid_json(t)
    tensor = body["inputs"][0]
    kind = rng.choice(["json-shape", "json-datatype", "json-data", "json-name", "json-structure", "json-syntax"])
    if kind == "json-shape":
        # The JSON path allocates for the declared shape before checking it: a few GB is a memory spike, more
        # aborts the server (the crasher kind below); random JSON shapes stay small.
        tensor["shape"] = _shape(rng, t, huge=False)
    elif kind == "json-datatype":
        tensor["datatype"] = rng.choice(["FP32", "INT64", "BYTES", "BOOL", "FP16", "uint8", "", "NOPE", 5, None])
    elif kind == "json-data":
        n = len(tensor["data"])
        tensor["data"] = rng.choice([tensor["data"][: n // 2], tensor["data"] + [0] * 7, [0.5] * n, [-1] * n,
                                     [300] * n, ["a"] * n, [[0, 0]] * (n // 2), None, {"a": 1}, [], "abc",
                                     [1e308] * n])
    elif kind == "json-name":
        if rng.random() < 0.3:
            del tensor["name"]
        else:
            tensor["name"] = rng.choice(["", "imagex", 123, None, "\u00e9\u4e2d" * 50, "x" * 5000])
    elif kind == "json-structure":
        body = rng.choice([{}, {"inputs": {}}, {"inputs": []}, {"inputs": [None]}, {"inputs": [tensor, tensor]},
                           {"inputs": [tensor], "outputs": [{"name": "nope"}]}, {"inputs": [tensor], "outputs": 7},
                           {"inputs": [tensor], "parameters": {"binary_data_output": "yes"}},
                           {"inputs": [tensor], "id": "x" * 10000}, [1, 2, 3], 42, "inputs",
                           {"inputs": [{**tensor, "parameters": {"binary_data_size": -5}}]}])
        if rng.random() < 0.15:  # deep nesting, for recursive parsers
            depth = rng.choice([100, 1000, 5000])
            return kind, _http(f"/v2/models/{t.model}/infer", b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}")
    else:
        raw = bytearray(json.dumps(body).encode())
        how = rng.choice(["truncate", "flip", "utf8", "nan", "trailing"])
        if how == "truncate":
            raw = raw[: rng.randrange(1, len(raw))]
        elif how == "flip":
            for _ in range(rng.randint(1, 20)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        elif how == "utf8":
            raw[rng.randrange(len(raw))] = 0xFF
        elif how == "nan":
            raw = bytearray(json.dumps(body).replace('"data": [', '"data": [NaN, ', 1).encode())
        else:
            raw += b"}}garbage"
        return kind, _http(f"/v2/models/{t.model}/infer", bytes(raw))
    return kind, _http(f"/v2/models/{t.model}/infer", json.dumps(body).encode())


def _binary(rng: random.Random, t: Target) -> tuple[str, bytes]:
    """The binary tensor extension with lying sizes."""
    data = t.image.tobytes()
    header = {"inputs": [{"name": IMAGE_INPUT, "shape": list(t.image.shape), "datatype": UINT8,
                          "parameters": {"binary_data_size": rng.choice([len(data), len(data) + 100, len(data) // 2,
                                                                         0, -1, 2**40])}}]}
    if rng.random() < 0.3:
        header["inputs"][0]["shape"] = _shape(rng, t, huge=True)
    head = json.dumps(header).encode()
    body = head + data[: rng.choice([len(data), len(data) // 3, 0])]
    declared = rng.choice([len(head), len(head) + 10, len(head) - 10, 0, -1, len(body) + 1000, "abc"])
    return "binary-lying-sizes", _http(f"/v2/models/{t.model}/infer", body,
                                       headers={"Inference-Header-Content-Length": str(declared)})


def _framing(rng: random.Random, t: Target) -> tuple[str, bytes]:
    path = f"/v2/models/{t.model}/infer"
    body = json.dumps(_valid_json(t)).encode()
    return "http-framing", rng.choice([
        _http(path, body[:100], content_length=str(len(body))),  # promises more than it sends
        _http(path, body, content_length="10"),  # the rest reads as a second, garbage request
        _http(path, body, content_length=""),  # no length
        _http(path, body, content_length="-5"),
        _http(path, body, content_length="abc"),
        _http(path, body, content_length="99999999999999999999"),
        _http(path, b"zz\r\n" + body[:50] + b"\r\n0\r\n\r\n", content_length="", headers={"Transfer-Encoding": "chunked"}),
        _http(path, b"FFFFFFFFFFFF\r\n" + body[:50], content_length="", headers={"Transfer-Encoding": "chunked"}),
        _http(path, body, headers={"X-Long": "a" * 100_000}),
        _http(path, body, headers={f"X-{i}": "v" for i in range(2000)}),
        _http(path, body, headers={"Host": ""}),
        f"POST {path}\r\n\r\n".encode() + body,  # no version
        bytes(rng.randrange(256) for _ in range(rng.randint(1, 4000))),  # not HTTP at all
        b"",
        b"\r\n\r\n\r\n",
        f"POST {path} HTTP/9.9\r\nContent-Length: 2\r\n\r\n{{}}".encode(),
    ])


def _method_or_path(rng: random.Random, t: Target) -> tuple[str, bytes]:
    body = b"{}"
    if rng.random() < 0.5:
        method = rng.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "FOO", "TRACE", "CONNECT", "get"])
        return "http-method", _http(f"/v2/models/{t.model}/infer", body, method=method)
    path = rng.choice([
        "/v2/models/no_such_model/infer", f"/v2/models/{t.model}/versions/abc/infer",
        f"/v2/models/{t.model}/versions/-1/infer", f"/v2/models/{t.model}/versions/99999999999999999999/infer",
        "/v2/models//infer", "/v2/models/../../etc/passwd/infer", "/v2/models/%2e%2e%2f%2e%2e/infer",
        f"/v2/models/{t.model}%00/infer", "/v2/models/" + "a" * 20_000 + "/infer", "/v2/health/ready",
        "/v2/repository/models/x/load", "/v2/repository/index", "/v2/systemsharedmemory/region/x/register",
        "/v2/systemsharedmemory/region/../../x/register", "/v2/cudasharedmemory/region/x/register",
        "/v2/logging", "/v2/trace/setting", f"/v2/models/{t.model}/stats", "/", "*", "/v2/" + "%" * 50,
    ])
    if "sharedmemory" in path:
        body = json.dumps(rng.choice([{"key": "/no_such_region", "offset": 0, "byte_size": 64},
                                      {"key": "../../etc/passwd", "offset": -1, "byte_size": 2**62},
                                      {"key": 5}, {}])).encode()
    return "http-path", _http(path, body, method=rng.choice(["POST", "GET"]))


def _crasher(rng: random.Random, t: Target) -> tuple[str, bytes]:
    s = t.image.shape[1]
    shape = rng.choice([CRASH_SHAPE, [2**31, s, s, 3], [1, s, s, 2**40]])  # each aborts tritonserver 2.51
    body = {"inputs": [{"name": IMAGE_INPUT, "shape": shape, "datatype": UINT8, "data": [1, 2, 3]}]}
    return "json-huge-shape (known crasher)", _http(f"/v2/models/{t.model}/infer", json.dumps(body).encode())


def _send_http(url: str, data: bytes, timeout: float) -> str:
    """Sends raw bytes, closes the writing side, reads the answer; returns ``http <status>`` or what happened."""
    host, port = url.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(data)
            try:
                sock.shutdown(socket.SHUT_WR)  # the client is done: a server waiting for more body sees EOF
            except OSError:
                pass
            first = sock.recv(64)
            while sock.recv(65536):
                pass
    except socket.timeout:
        return "hung"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "reset"
    if not first:
        return "closed"
    parts = first.split(b" ", 2)
    return f"http {parts[1].decode(errors='replace')}" if first.startswith(b"HTTP/") and len(parts) > 1 else "http ?"


# ---------------------------------------------------------------------------------------------------- gRPC
def _valid_proto(t: Target) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=t.model)
    tensor = request.inputs.add(name=IMAGE_INPUT, datatype=UINT8, shape=list(t.image.shape))
    del tensor  # the pixels travel in raw_input_contents, as tritonclient sends them
    request.raw_input_contents.append(t.image.tobytes())
    request.outputs.add(name=SCORE)
    return request


def _mutated_grpc(rng: random.Random, t: Target) -> tuple[str, str, bytes]:
    request = _valid_proto(t)
    raw = request.SerializeToString()
    kind = rng.choice(["grpc-random-bytes", "grpc-truncated", "grpc-bitflip", "grpc-fields", "grpc-fields",
                       "grpc-method"])
    if kind == "grpc-random-bytes":
        return kind, INFER_METHOD, bytes(rng.randrange(256) for _ in range(rng.randint(0, 5000)))
    if kind == "grpc-truncated":
        return kind, INFER_METHOD, raw[: rng.randrange(len(raw))]
    if kind == "grpc-bitflip":
        flipped = bytearray(raw)
        for _ in range(rng.randint(1, 30)):
            flipped[rng.randrange(min(len(flipped), 200))] ^= 1 << rng.randrange(8)  # the header fields
        return kind, INFER_METHOD, bytes(flipped)
    if kind == "grpc-method":
        method = rng.choice(["/inference.GRPCInferenceService/NoSuchMethod", "/no.Service/Infer", "/",
                             "/inference.GRPCInferenceService/ModelMetadata",
                             "/inference.GRPCInferenceService/RepositoryModelLoad",
                             "/inference.GRPCInferenceService/SystemSharedMemoryRegister"])
        return kind, method, bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
    tensor = request.inputs[0]
    what = rng.choice(["shape", "datatype", "contents", "model", "inputs", "outputs", "params"])
    if what == "shape":
        del tensor.shape[:]
        shape = _shape(rng, t, huge=True)
        tensor.shape.extend([int(v) for v in shape if isinstance(v, int)] if isinstance(shape, list) else [])
    elif what == "datatype":
        tensor.datatype = rng.choice(["FP32", "BYTES", "BOOL", "", "NOPE", "uint8", "\x00"])
    elif what == "contents":
        del request.raw_input_contents[:]
        choice = rng.choice(["short", "long", "none", "two", "typed"])
        data = t.image.tobytes()
        if choice == "short":
            request.raw_input_contents.append(data[: len(data) // 2])
        elif choice == "long":
            request.raw_input_contents.append(data + b"\0" * 999)
        elif choice == "two":
            request.raw_input_contents.extend([data, data])
        elif choice == "typed":
            tensor.contents.uint_contents.extend([1, 2, 3])
    elif what == "model":
        request.model_name = rng.choice(["", "no_such_model", "../ad_inference", "x" * 10_000, "\u4e2d"])
        request.model_version = rng.choice(["", "abc", "-1", "99999999999999999999"])
    elif what == "inputs":
        if rng.random() < 0.5:
            del request.inputs[:]
        else:
            request.inputs.add(name=IMAGE_INPUT, datatype=UINT8, shape=[1])
    elif what == "outputs":
        request.outputs.add(name=rng.choice(["nope", "", SCORE]))
    else:
        request.parameters["binary_data_size"].int64_param = -1
        tensor.parameters["shared_memory_region"].string_param = "no_such_region"
    return f"{kind}:{what}", INFER_METHOD, request.SerializeToString()


def _send_grpc(channel: grpc.Channel, method: str, data: bytes, timeout: float) -> str:
    call = channel.unary_unary(method)  # no serializers: the request and the answer are bytes
    try:
        call(data, timeout=timeout)
        return "grpc OK"
    except grpc.RpcError as e:
        code = e.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "hung"
        return f"grpc {code.name}"


# ---------------------------------------------------------------------------------------------------- valid
def _valid_once(t: Target, protocol: str, timeout: float) -> str:
    """Sends the valid request; returns "" when answered with the reference, else why not."""
    module = grpcclient if protocol == "grpc" else httpclient
    try:
        client = module.InferenceServerClient(t.grpc if protocol == "grpc" else t.http,
                                              **({} if protocol == "grpc" else {"network_timeout": timeout}))
        try:
            tensor = module.InferInput(IMAGE_INPUT, list(t.image.shape), UINT8)
            tensor.set_data_from_numpy(t.image)
            extra = {"client_timeout": timeout} if protocol == "grpc" else {}
            got = client.infer(t.model, [tensor], outputs=[module.InferRequestedOutput(SCORE)], **extra)
            score = got.as_numpy(SCORE)
        finally:
            client.close()
    except Exception as e:  # noqa: BLE001  (down, restarting: resend)
        return f"{type(e).__name__}: {e}"[:200]
    if score is None or not np.allclose(score, t.score, atol=t.atol):
        return f"wrong score {None if score is None else score.ravel()}"
    return ""


def _valid(t: Target, protocol: str, report: FuzzReport, timeout: float, deadline: float) -> str:
    """Sends the valid request until it is answered (or ``deadline`` seconds pass); records the outage."""
    report.valid += 1
    first_failure, error = None, ""
    while True:
        error = _valid_once(t, protocol, timeout)
        if not error:
            if first_failure is not None:
                report.outages.append(time.monotonic() - first_failure)
            return ""
        now = time.monotonic()
        first_failure = now if first_failure is None else first_failure
        if now - first_failure > deadline:
            report.lost += 1
            return error
        report.valid_resends += 1
        time.sleep(0.25)


def run(t: Target, *, requests: int = 2000, seed: int = 0, valid_every: int = 25, crashers: int = 3,
        timeout: float = 10.0, valid_deadline: float = 60.0,
        progress: Callable[[int, FuzzReport], None] | None = None) -> FuzzReport:
    """Sends ``requests`` malformed requests (about half over each protocol) with valid ones interleaved.

    Args:
        t: The server and the valid request.
        requests: Malformed requests to send.
        seed: Seed of the mutations (the same seed sends the same requests).
        valid_every: A valid request after every this many malformed ones (and one at the end).
        crashers: How many of the malformed requests are the known HTTP crasher, spread evenly.
        timeout: Deadline of each request, in seconds.
        valid_deadline: How long a valid request is resent before it counts as lost.
        progress: Called after each malformed request with its index and the report so far.

    Returns:
        The figures of the run.
    """
    rng = random.Random(seed)
    report = FuzzReport()
    crash_at = {round((k + 0.5) * requests / crashers) for k in range(crashers)} if crashers else set()
    http_makers = [_mutated_json, _mutated_json, _mutated_json, _binary, _framing, _method_or_path]
    started = time.monotonic()
    channel = grpc.insecure_channel(t.grpc)
    try:
        for i in range(requests):
            if i in crash_at:
                kind, data = _crasher(rng, t)
                outcome = _send_http(t.http, data, timeout)
            elif rng.random() < 0.5:
                kind, data = rng.choice(http_makers)(rng, t)
                outcome = _send_http(t.http, data, timeout)
            else:
                kind, method, data = _mutated_grpc(rng, t)
                outcome = _send_grpc(channel, method, data, timeout)
            report.requests += 1
            report.kinds[kind] += 1
            report.outcomes[outcome] += 1
            report.hung += outcome == "hung"
            if outcome in ("refused", "grpc UNAVAILABLE") or i in crash_at or (i + 1) % valid_every == 0:
                # After a sign of trouble, or on schedule: the service must still answer (after resends).
                _valid(t, "grpc" if (i // valid_every) % 2 else "http", report, timeout, valid_deadline)
            if progress is not None:
                progress(i, report)
        _valid(t, "http", report, timeout, valid_deadline)
        _valid(t, "grpc", report, timeout, valid_deadline)
    finally:
        channel.close()
    report.seconds = time.monotonic() - started
    return report
