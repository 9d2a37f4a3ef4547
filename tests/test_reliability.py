"""Nothing breaks the server or loses a result: bad inputs, load, faults and the security defaults, all on the
real tritonserver over loopback. Each test records what it tried (printed as "reliability figures" at the end)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from client.client import main as client_main
from client.scoring import ScoreConfig, score_images
from export.repository import ExportResult, export_runs
from serving.embedded import ADMIN_HEADER, TritonServer, free_port
from training.train import TrainResult

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[1]
KEY = "test-admin-key"


def _samples(exported: ExportResult) -> dict[str, np.ndarray]:
    with np.load(exported.repository / "ad_inference" / "validation" / "samples.npz") as z:
        return {k: z[k] for k in z.files}


def _small_repository(exported: ExportResult, target: Path) -> Path:
    """A repository with only the RD4AD detector's models (a restarted server loads it in seconds)."""
    target.mkdir(parents=True, exist_ok=True)
    for folder in exported.repository.iterdir():
        if folder.name.startswith("ad_inference") and not folder.name.startswith(
            ("ad_inference_student", "ad_inference_multiteacher", "ad_inference_mkd")
        ):
            shutil.copytree(folder, target / folder.name)
    return target


def _server(repository: Path, tmp_path: Path, **kwargs) -> TritonServer:
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    ports.update({k: v for k, v in kwargs.items() if k.endswith("_port")})
    rest = {k: v for k, v in kwargs.items() if not k.endswith("_port")}
    workdir = tmp_path / f"triton-{time.monotonic_ns()}"
    return TritonServer(repository, workdir=workdir, log_path=workdir / "server.log", **ports, **rest)


def _score(client, module, model: str, images: np.ndarray, output: str = "score") -> np.ndarray:
    tensor = module.InferInput("image", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    return client.infer(model, [tensor], outputs=[module.InferRequestedOutput(output)]).as_numpy(output)


def _still_serving(server: TritonServer, exported: ExportResult) -> None:
    samples = _samples(exported)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client.is_server_ready()
        got = _score(client, httpclient, "ad_inference", samples["inputs"][:2])
        np.testing.assert_allclose(got, samples["score"][:2], atol=1e-3)
    finally:
        client.close()


# --------------------------------------------------------------------------- bad input
def _raw_http(server: TritonServer, request: bytes) -> bytes:
    """Send raw bytes to the HTTP endpoint and return what comes back (possibly nothing)."""
    host, port = server.http_url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)  # the client goes away mid-body
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def test_bad_inputs_get_clear_errors_and_the_server_stays_ready(
    server: TritonServer, exported: ExportResult, exported_all: list[ExportResult], reliability
) -> None:
    size = _samples(exported)["inputs"].shape[1]
    nan_vector = np.full((1, 64), np.nan, np.float32)
    inf_vector = np.full((1, 64), np.inf, np.float32)
    cases: list[tuple[str, str, object, str]] = []  # (what, protocol, callable, expected text)

    def infer(module, url, model, name, array, dtype, version=""):
        client = module.InferenceServerClient(url)
        try:
            tensor = module.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            return client.infer(model, [tensor], model_version=version)
        finally:
            client.close()

    for protocol, module, url in (("http", httpclient, server.http_url), ("grpc", grpcclient, server.grpc_url)):
        image = np.zeros((1, size, size, 3), np.uint8)
        cases += [
            ("NaN vector", protocol, lambda m=module, u=url: infer(m, u, "kdae_digits", "vector", nan_vector, "FP32"),
             "nan"),
            ("Inf vector", protocol, lambda m=module, u=url: infer(m, u, "kdae_digits", "vector", inf_vector, "FP32"),
             "nan or infinite"),
            ("unknown model", protocol, lambda m=module, u=url: infer(m, u, "no_such_model", "image", image, "UINT8"),
             "no_such_model"),
            ("unknown version", protocol,
             lambda m=module, u=url: infer(m, u, "ad_inference_onnx", "image", image, "UINT8", version="7"), "7"),
            ("path as model name", protocol,
             lambda m=module, u=url: infer(m, u, "../ad_inference", "image", image, "UINT8"), "not found"),
            ("undecodable encoded image", protocol,
             lambda m=module, u=url: infer(m, u, "ad_inference_encoded", "image_bytes",
                                           np.array([[b"\xff\xd8 not a jpeg"]], dtype=object), "BYTES"),
             "decoder: row 0"),
            ("file path as encoded image", protocol,
             lambda m=module, u=url: infer(m, u, "ad_inference_encoded", "image_bytes",
                                           np.array([[str(exported.repository / "ad_inference" / "config.pbtxt")
                                                      .encode()]], dtype=object), "BYTES"),
             "decoder: row 0"),
        ]
    failures = 0
    for what, protocol, call, expected in cases:
        with pytest.raises(InferenceServerException) as info:
            call()
        message = str(info.value)
        print(f"{protocol} {what}: {message}")
        if expected.lower() not in message.lower():
            failures += 1
            print(f"  expected {expected!r} in the message")
        _still_serving(server, exported)

    # A truncated HTTP body: the client promises 100 000 bytes, sends 20 and hangs up.
    header = (f"POST /v2/models/ad_inference/infer HTTP/1.1\r\nHost: {server.http_url}\r\n"
              "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n").encode()
    reply = _raw_http(server, header + b'{"inputs": [{"name":')
    print(f"http truncated body: {reply[:120]!r}")
    _still_serving(server, exported)
    reliability["bad inputs: NaN/Inf, unknown model/version, paths, undecodable, truncated"] = {
        "inputs": len(cases) + 1, "requests": len(cases) + 1 + 2 * (len(cases) + 1), "failures": failures}
    assert failures == 0


# --------------------------------------------------------------------------- load
def test_many_concurrent_clients_every_response_checked(
    server: TritonServer, exported: ExportResult, reliability
) -> None:
    samples = _samples(exported)
    inputs, scores = samples["inputs"], samples["score"]
    clients, per_client = 16, 12
    errors: list[str] = []
    sent = [0]
    lock = threading.Lock()

    def worker(k: int) -> None:
        protocol = "grpc" if k % 2 else "http"
        module = grpcclient if protocol == "grpc" else httpclient
        client = module.InferenceServerClient(server.url(protocol))
        rng = np.random.default_rng(k)
        try:
            for _ in range(per_client):
                pick = rng.choice(len(inputs), size=int(rng.integers(1, 5)))
                model = "ad_inference_score" if rng.random() < 0.5 else "ad_inference"
                with lock:
                    sent[0] += 1
                try:
                    got = _score(client, module, model, np.ascontiguousarray(inputs[pick]))
                    if got.shape != (len(pick), 1) or not np.allclose(got, scores[pick], atol=1e-3):
                        errors.append(f"{protocol} {model}: wrong scores {got.ravel()} vs {scores[pick].ravel()}")
                except InferenceServerException as e:
                    errors.append(f"{protocol} {model}: {e}")
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    print(f"{clients} clients x {per_client} requests: {sent[0]} sent, {len(errors)} failed")
    reliability["load: 16 concurrent clients, both protocols"] = {"requests": sent[0], "failures": len(errors)}
    assert sent[0] == clients * per_client and not errors, errors[:3]
    _still_serving(server, exported)


# --------------------------------------------------------------------------- faults
def _kill_hard(server: TritonServer) -> None:
    """A crash, not a shutdown: SIGKILL to the server and its backend stubs."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)


def test_server_killed_mid_run_client_retries_then_reports_what_was_not_scored(
    exported: ExportResult, demo_root: Path, tmp_path: Path, reliability
) -> None:
    repo = _small_repository(exported, tmp_path / "repo")
    images = tmp_path / "images"
    images.mkdir()
    sources = sorted((demo_root / "brick" / "test").glob("*/*.png"))
    for i in range(60):
        shutil.copy(sources[i % len(sources)], images / f"{i:03d}.png")
    first = _server(repo, tmp_path)
    first.start()
    first.wait_ready(120)
    ports = {"http_port": first.http_port, "grpc_port": first.grpc_port, "metrics_port": first.metrics_port}
    results: list = []
    killed = threading.Event()

    def on_result(result) -> None:
        results.append(result)
        if len(results) == 10:
            _kill_hard(first)  # mid-run: requests in flight die with it
            killed.set()

    second = _server(repo, tmp_path, **ports)

    def restart() -> None:
        killed.wait(60)
        time.sleep(1.0)
        second.start()

    restarter = threading.Thread(target=restart)
    restarter.start()
    try:
        config = ScoreConfig(url=first.grpc_url, batch_size=1, concurrency=2, retries=8, backoff=0.5)
        summary = score_images([images], config, on_result)
    finally:
        restarter.join(60)
    try:
        print(f"killed after 10 results; {summary.scored} scored, {summary.errors} errors, {summary.retries} resends")
        assert killed.is_set() and summary.retries >= 1
        assert summary.scored == 60 and summary.errors == 0, [r.error for r in results if not r.ok][:3]
        assert sorted(Path(r.path).name for r in results) == sorted(p.name for p in images.iterdir())

        # Killed for good: the client gives up after its retries and lists every file it did not score.
        _kill_hard(second)
        out = tmp_path / "out"
        rc = client_main(["score", str(images), "-u", second.grpc_url, "-o", str(out), "--no-progress", "-q",
                          "--retries", "2", "-b", "4"])
    finally:
        for srv in (first, second):
            if srv.process is not None and srv.process.poll() is None:
                srv.stop()
    assert rc == 2  # the server is gone before the run starts: a clear error, nothing written as scored
    # Mid-run loss with no return: start, kill while scoring, no restart.
    third = _server(repo, tmp_path)
    third.start()
    third.wait_ready(120)
    results.clear()

    def kill_at_5(result) -> None:
        results.append(result)
        if len(results) == 5:
            _kill_hard(third)

    summary = score_images([images], ScoreConfig(url=third.grpc_url, batch_size=1, concurrency=1, retries=2,
                                                 backoff=0.2), kill_at_5)
    unscored = [r for r in results if not r.ok]
    print(f"not restarted: {summary.scored} scored, {len(unscored)} reported as not scored")
    assert summary.scored + summary.errors == 60 and len(unscored) == summary.errors > 0
    assert all(r.error.startswith("not scored: server unreachable") for r in unscored)
    reliability["server killed mid-run (restart, and no restart)"] = {
        "requests": 60 + 60, "faults": 2, "failures": summary.errors - len(unscored)}


def _post(server: TritonServer, path: str, body: dict | None = None, key: str | None = KEY) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=json.dumps(body or {}).encode(),
                                     method="POST", headers={ADMIN_HEADER: key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def explicit_server(exported: ExportResult, tmp_path: Path) -> Iterator[TritonServer]:
    """A server whose models can be reloaded through the repository API, restricted by an admin key."""
    server = _server(_small_repository(exported, tmp_path / "repo"), tmp_path, model_control="explicit",
                     admin_key=KEY)
    with server:
        yield server


def test_model_reloaded_while_requests_are_in_flight(
    explicit_server: TritonServer, exported: ExportResult, reliability
) -> None:
    samples = _samples(exported)
    stop = threading.Event()
    sent, errors = [0], []

    def worker() -> None:
        client = grpcclient.InferenceServerClient(explicit_server.grpc_url)
        try:
            while not stop.is_set():
                sent[0] += 1
                try:
                    got = _score(client, grpcclient, "ad_inference_score", samples["inputs"][:2])
                    if not np.allclose(got, samples["score"][:2], atol=1e-3):
                        errors.append(f"wrong scores {got.ravel()}")
                except InferenceServerException as e:
                    errors.append(str(e))
        finally:
            client.close()

    config = explicit_server.model_repository / "ad_inference_onnx" / "config.pbtxt"
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        config.write_text(config.read_text().replace("max_queue_delay_microseconds: 0",
                                                     "max_queue_delay_microseconds: 100"))
        status, text = _post(explicit_server, "/v2/repository/models/ad_inference_onnx/load")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert status == 200, text
    client = httpclient.InferenceServerClient(explicit_server.http_url)
    try:
        reloaded = client.get_model_config("ad_inference_onnx")
    finally:
        client.close()
    assert int(reloaded["dynamic_batching"].get("max_queue_delay_microseconds", 0)) == 100  # the new config serves
    print(f"reload during {sent[0]} requests: {len(errors)} failed")
    reliability["model reloaded with requests in flight"] = {"requests": sent[0], "faults": 1, "failures": len(errors)}
    assert not errors, errors[:3]


def test_corrupt_stats_json_refuses_to_load_naming_the_field_and_the_rest_keeps_serving(
    explicit_server: TritonServer, exported: ExportResult, reliability
) -> None:
    stats_path = explicit_server.model_repository / "ad_inference_scorer" / "stats.json"
    stats = json.loads(stats_path.read_text())
    stats["image_calibration"]["scale"] = -1.0
    stats_path.write_text(json.dumps(stats))
    status, text = _post(explicit_server, "/v2/repository/models/ad_inference_scorer/load")
    print(f"load with a corrupt stats JSON: {status} {text}")
    assert status >= 400 and "image_calibration" in text and "scale" in text
    # The network itself and the server keep serving; the repository API without the key is refused.
    samples = _samples(exported)
    client = httpclient.InferenceServerClient(explicit_server.http_url)
    try:
        raw = _score(client, httpclient, "ad_inference_onnx", samples["inputs"][:2], output="pred_score")
        np.testing.assert_allclose(raw, samples["raw_score"][:2], atol=1e-3)
        assert client.is_server_live()
    finally:
        client.close()
    status, text = _post(explicit_server, "/v2/repository/models/ad_inference_scorer/load", key=None)
    assert status >= 400 and "restricted" in text.lower()
    reliability["corrupt stats JSON on reload"] = {"requests": 3, "faults": 1}


def test_interrupted_export_leaves_the_previous_repository_serving(
    exported: ExportResult, trained_run: TrainResult, tmp_path: Path, monkeypatch, reliability
) -> None:
    import export.repository as repository_module

    repo = _small_repository(exported, tmp_path / "repo")
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    real_replace, calls = os.replace, [0]

    def dying_replace(src, dst):
        calls[0] += 1
        if calls[0] == 3:  # part-way through swapping the new model folders in
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(repository_module.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        export_runs([(trained_run.paths.root, "ad_inference")], repo, threads=1)
    monkeypatch.setattr(repository_module.os, "replace", real_replace)
    after = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    assert after == before, "an interrupted export changed the repository"
    assert not [p for p in repo.parent.iterdir() if p.name.startswith(".repo.")], "staging left behind"
    with _server(repo, tmp_path) as server:
        _still_serving(server, exported)
    reliability["export interrupted while swapping folders in"] = {"faults": 1}


# --------------------------------------------------------------------------- security
def test_loopback_and_restricted_apis_by_default(tmp_path: Path) -> None:
    default = TritonServer(tmp_path).command()
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
                 "--model-control-mode=none"):
        assert flag in default
    exposed = TritonServer(tmp_path, host="0.0.0.0", admin_key="k").command()
    assert any(a.startswith("--http-restricted-api=model-repository") and a.endswith(":admin-key=k") for a in exposed)
    assert any(a.startswith("--grpc-restricted-protocol=model-repository") for a in exposed)
    with pytest.raises(ValueError, match="admin_key"):
        TritonServer(tmp_path, model_control="explicit")


def test_grpc_over_tls_with_a_certificate_the_test_makes(
    exported: ExportResult, tmp_path: Path, mixed_tls_inputs: list[Path], reliability
) -> None:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    repo = _small_repository(exported, tmp_path / "repo")
    with _server(repo, tmp_path, grpc_tls=(cert, key)) as server:
        results = []
        summary = score_images(mixed_tls_inputs, ScoreConfig(url=server.grpc_url, tls_root=str(cert)),
                               results.append)
        assert summary.scored == len(mixed_tls_inputs) and summary.errors == 0
        plain = ScoreConfig(url=server.grpc_url, retries=0, timeout=5)
        with pytest.raises(InferenceServerException):
            score_images(mixed_tls_inputs, plain, results.append)  # no TLS: the handshake fails
    reliability["gRPC over TLS (self-made certificate)"] = {"requests": len(mixed_tls_inputs) + 1}


@pytest.fixture
def mixed_tls_inputs(demo_root: Path) -> list[Path]:
    return sorted((demo_root / "brick" / "test").glob("*/*.png"))[:6]


def test_weights_load_only_as_tensors() -> None:
    """Every torch.load in the project passes weights_only=True; checkpoints are safetensors."""
    loads = []
    for path in [*ROOT.glob("training/**/*.py"), *ROOT.glob("export/**/*.py"), *ROOT.glob("serving/**/*.py"),
                 *ROOT.glob("bench/*.py"), *ROOT.glob("client/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load" and \
                    getattr(node.func.value, "id", "") == "torch":
                loads.append((path.name, {k.arg: getattr(k.value, "value", None) for k in node.keywords}))
    assert loads and all(kw.get("weights_only") is True for _, kw in loads), loads
    checkpoint = (ROOT / "training" / "checkpoint.py").read_text()
    assert "safetensors" in checkpoint and "torch.load" not in checkpoint
