"""The embedded Triton server, its stand-in backends and the startup script, end to end.

One real ``tritonserver`` (from the nvidia-pytriton wheel) serves a tiny model repository for the whole module:
the same torch module as ONNX (``platform: "onnxruntime_onnx"``) and as TorchScript (``"pytorch_libtorch"``),
with the configs the NGC image would serve unchanged. Answers must equal torch's own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import re
import subprocess
import sys
import sysconfig
import time
import types
import urllib.request
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from serving.cli import main
from serving.embedded import (
    ServerStartError,
    TritonServer,
    free_port,
    prepare_backend_dir,
    server_environment,
)

ROOT = Path(__file__).resolve().parents[1]
SIZE = 8


class Tiny(torch.nn.Module):
    """uint8 images (N, H, W, 3) -> (score (N, 1): mean value, map (N, H, W): twice the channel mean)."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = image.float()
        return x.mean(dim=(1, 2, 3)).unsqueeze(1), x.mean(dim=3) * 2.0


# Both models wait up to 20 ms to fill a batch: with no queue delay a tiny model on a slow machine can finish each
# request before the next arrives, and the batching test saw 40 executions for 40 requests in CI.
ONNX_CONFIG = """name: "tiny_onnx"
platform: "onnxruntime_onnx"
max_batch_size: 8
# H and W are left open so that a wrong size reaches ONNX Runtime, which rejects it (the graph is 8x8).
input [ { name: "IMAGE" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] } ]
output [
  { name: "SCORE" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "MAP" data_type: TYPE_FP32 dims: [ -1, -1 ] }
]
dynamic_batching { max_queue_delay_microseconds: 20000 }
instance_group [ { kind: KIND_CPU count: 1 } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""

TORCH_CONFIG = """name: "tiny_pt"
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "IMAGE__0" data_type: TYPE_UINT8 dims: [ 8, 8, 3 ] } ]
output [
  { name: "SCORE__0" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "MAP__1" data_type: TYPE_FP32 dims: [ 8, 8 ] }
]
dynamic_batching { max_queue_delay_microseconds: 20000 }
instance_group [ { kind: KIND_CPU count: 1 } ]
parameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "1" } }
"""

# model name -> (input name, output names in the order Tiny returns them)
MODELS = {"tiny_onnx": ("IMAGE", ("SCORE", "MAP")), "tiny_pt": ("IMAGE__0", ("SCORE__0", "MAP__1"))}


def _write_model(root: Path, name: str, config: str, filename: str | None) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(config)
    example = torch.zeros(2, SIZE, SIZE, 3, dtype=torch.uint8)
    with warnings.catch_warnings():  # The legacy exporter and jit.trace warn that they are deprecated.
        warnings.simplefilter("ignore")
        if filename == "model.onnx":
            torch.onnx.export(
                Tiny().eval(), (example,), str(root / name / "1" / filename),
                input_names=["IMAGE"], output_names=["SCORE", "MAP"],
                dynamic_axes={"IMAGE": {0: "batch"}, "SCORE": {0: "batch"}, "MAP": {0: "batch"}},
                opset_version=17, dynamo=False,
            )
        elif filename == "model.pt":
            torch.jit.trace(Tiny().eval(), example).save(str(root / name / "1" / filename))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model_repository")
    _write_model(root, "tiny_onnx", ONNX_CONFIG, "model.onnx")
    _write_model(root, "tiny_pt", TORCH_CONFIG, "model.pt")
    return root


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("triton")
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    started = time.monotonic()
    with TritonServer(repository, workdir=workdir, **ports) as running:
        print(f"tritonserver ready in {time.monotonic() - started:.1f} s")
        yield running


def _images(batch: int, seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _expected(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        score, amap = Tiny()(torch.from_numpy(images))
    return score.numpy(), amap.numpy()


@contextlib.contextmanager
def _connect(server: TritonServer, protocol: str):
    """Yields (tritonclient module, client) and closes the client: Triton waits for open HTTP connections
    (up to its 30 s exit timeout) before it shuts down."""
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    try:
        yield module, client
    finally:
        client.close()


def _infer(client_module, client, model: str, images: np.ndarray, **kwargs):
    input_name, output_names = MODELS[model]
    tensor = client_module.InferInput(input_name, list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    outputs = [client_module.InferRequestedOutput(name) for name in output_names]
    return client.infer(model, [tensor], outputs=outputs, **kwargs)


@pytest.mark.server
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_infer_matches_torch(server: TritonServer, model: str, protocol: str) -> None:
    images = _images(3, seed=1)
    with _connect(server, protocol) as (module, client):
        result = _infer(module, client, model, images)
    for name, expected in zip(MODELS[model][1], _expected(images)):
        assert result.as_numpy(name).dtype == np.float32
        np.testing.assert_allclose(result.as_numpy(name), expected, rtol=1e-5, atol=1e-4)


def _collect(answers: queue.Queue, key: object, result: object, error: object) -> None:
    """``async_infer`` callback (called with ``result=`` and ``error=`` keywords)."""
    answers.put((key, result, error))


def _infer_concurrently(server: TritonServer, model: str, requests: dict) -> dict:
    """Sends every request at once (gRPC ``async_infer``); returns {key: (result or None, error or None)}."""
    answers: queue.Queue = queue.Queue()
    input_name, output_names = MODELS[model]
    with _connect(server, "grpc") as (module, client):
        for key, images in requests.items():
            tensor = module.InferInput(input_name, list(images.shape), "UINT8")
            tensor.set_data_from_numpy(images)
            client.async_infer(model, [tensor], callback=partial(_collect, answers, key))
        collected = [answers.get(timeout=30) for _ in requests]
    return {key: (result, error) for key, result, error in collected}


def _metric(server: TritonServer, name: str, model: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf'^{name}{{model="{model}",version="1"}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name} for {model} not in /metrics"
    return float(match.group(1))


@pytest.mark.server
@pytest.mark.parametrize("model", list(MODELS))
def test_concurrent_requests_are_batched_and_answered_per_request(server: TritonServer, model: str) -> None:
    before = {m: _metric(server, m, model) for m in ("nv_inference_exec_count", "nv_inference_request_success")}
    batches = {seed: _images(1 + seed % 3, seed=seed) for seed in range(40)}
    results = _infer_concurrently(server, model, batches)
    for seed, (result, error) in results.items():
        assert error is None, error
        for name, expected in zip(MODELS[model][1], _expected(batches[seed])):
            np.testing.assert_allclose(result.as_numpy(name), expected, rtol=1e-5, atol=1e-4)
    executions = _metric(server, "nv_inference_exec_count", model) - before["nv_inference_exec_count"]
    requests = _metric(server, "nv_inference_request_success", model) - before["nv_inference_request_success"]
    assert requests == len(batches)
    assert executions < requests, "the dynamic batcher never grouped requests"


@pytest.mark.server
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_wrong_dtype_is_rejected_and_server_stays_ready(server: TritonServer, protocol: str) -> None:
    with _connect(server, protocol) as (module, client):
        tensor = module.InferInput("IMAGE", [1, SIZE, SIZE, 3], "FP32")
        tensor.set_data_from_numpy(_images(1, seed=2).astype(np.float32))
        with pytest.raises(InferenceServerException, match="IMAGE"):
            client.infer("tiny_onnx", [tensor])
        assert server.is_ready()
        _infer(module, client, "tiny_onnx", _images(1, seed=3))  # Still serving.


@pytest.mark.server
def test_input_the_model_rejects_fails_only_that_request(server: TritonServer) -> None:
    requests = {"bad": _images(1, seed=4, size=4), **{f"good{i}": _images(2, seed=10 + i) for i in range(4)}}
    results = _infer_concurrently(server, "tiny_onnx", requests)
    assert results["bad"][0] is None and "IMAGE" in str(results["bad"][1]), results["bad"]
    for key, images in requests.items():
        if key != "bad":
            assert results[key][1] is None, results[key][1]
            np.testing.assert_allclose(results[key][0].as_numpy("MAP"), _expected(images)[1], rtol=1e-5)
    assert server.is_ready()


@pytest.mark.server
def test_model_that_fails_to_load_raises_with_log_tail(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    _write_model(repository, "tiny_onnx", ONNX_CONFIG, None)  # config.pbtxt but no model.onnx
    server = TritonServer(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          workdir=tmp_path / "triton")
    server.start()
    try:
        with pytest.raises(ServerStartError, match="tiny_onnx") as failure:
            server.wait_ready(timeout=60)
        assert "model.onnx" in str(failure.value)
    finally:
        server.stop()
    assert server.process.poll() is not None


@pytest.mark.server
def test_startup_script_start_status_stop(repository: Path, tmp_path: Path) -> None:
    env = {**os.environ, "TRITON_STATE_DIR": str(tmp_path / "state"), "PYTHON": sys.executable}
    script = [str(ROOT / "triton_startup_script.sh")]
    ports = ["--http-port", str(free_port()), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*script, *args], env=env, capture_output=True, text=True, timeout=150)

    started = run("start", "--mode", "embedded", "--model-repository", str(repository), *ports)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "ready" in started.stdout
        assert (tmp_path / "state" / "server.pid").is_file()
        assert run("status").returncode == 0
        again = run("start", "--mode", "embedded", "--model-repository", str(repository), *ports)
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        stopped = run("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not (tmp_path / "state" / "server.pid").exists()
    assert run("status").returncode == 3


@pytest.mark.server
def test_stop_terminates_within_seconds(server: TritonServer) -> None:
    # Last of the module's server tests: the fixture's own stop() afterwards is a no-op.
    started = time.monotonic()
    code = server.stop(timeout=30)
    elapsed = time.monotonic() - started
    assert code == 0 and elapsed < 10, (code, elapsed)
    assert not server.is_ready()


# ---- Without a server --------------------------------------------------------------------------------------


def test_prepare_backend_dir_is_complete_and_idempotent(tmp_path: Path) -> None:
    backends = prepare_backend_dir(tmp_path / "backends")
    expected = ["python/libtriton_python.so", "python/triton_python_backend_stub",
                "python/triton_python_backend_utils.py", "onnxruntime/model.py", "pytorch/model.py",
                "onnxruntime/batching.py", "pytorch/batching.py"]
    for relative in expected:
        assert (backends / relative).is_file(), relative
    assert os.access(backends / "python" / "triton_python_backend_stub", os.X_OK)
    stamps = {p: p.stat().st_mtime_ns for p in backends.rglob("*") if p.is_file()}
    time.sleep(0.01)
    prepare_backend_dir(backends)
    assert stamps == {p: p.stat().st_mtime_ns for p in backends.rglob("*") if p.is_file()}


def test_server_environment_puts_the_venv_first() -> None:
    env = server_environment()
    libs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert libs[0] == sysconfig.get_config_var("LIBDIR")
    assert libs[1].endswith("nvidia_pytriton.libs")
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_cli_help_lists_every_option(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as leaving:
        main(["--help"])
    assert leaving.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model-repository", "--host", "--http-port", "--grpc-port", "--metrics-port",
                   "--log-file", "--timeout"):
        assert option in text


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class _Response:
    def __init__(self, output_tensors=(), error=None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


class _Request(dict):
    """A request: its input arrays by name, and the outputs it asks for (none named = all)."""

    def __init__(self, inputs: dict, wanted: tuple[str, ...] = ()) -> None:
        super().__init__(inputs)
        self.wanted = wanted

    def requested_output_names(self) -> set:
        return set(self.wanted)


class _TritonError(Exception):
    INVALID_ARG = 3

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


def _load_backend(monkeypatch: pytest.MonkeyPatch, name: str, backends: Path):
    """Imports a prepared backend folder's model.py against a minimal stand-in for triton_python_backend_utils."""
    fake = types.SimpleNamespace(
        Tensor=_Tensor, InferenceResponse=_Response, TritonError=_TritonError, TritonModelException=RuntimeError,
        get_input_tensor_by_name=lambda request, n: _Tensor(n, request[n]) if n in request else None,
        triton_string_to_numpy=lambda t: {"TYPE_UINT8": np.uint8, "TYPE_FP32": np.float32}[t],
    )
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    monkeypatch.delitem(sys.modules, "batching", raising=False)  # re-import it against the fake
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location(f"{name}_standin", backends / name / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backend, model", [("onnxruntime", "tiny_onnx"), ("pytorch", "tiny_pt")])
def test_backend_batches_and_isolates_errors_without_triton(
    repository: Path, monkeypatch: pytest.MonkeyPatch, backend: str, model: str, tmp_path: Path
) -> None:
    module = _load_backend(monkeypatch, backend, prepare_backend_dir(tmp_path / "backends"))
    instance = module.TritonPythonModel()
    instance.initialize({
        "model_config": _config_json(repository / model / "config.pbtxt"),
        "model_repository": str(repository / model),
        "model_version": "1",
    })
    input_name, output_names = MODELS[model]
    good = [_images(n, seed=n) for n in (1, 3, 2)]
    requests = [_Request({input_name: good[0]}), _Request({input_name: _images(1, seed=9, size=4)}),
                _Request({input_name: good[1]}), _Request({}), _Request({input_name: good[2].astype(np.float32)})]
    responses = instance.execute(requests)
    assert len(responses) == len(requests)
    assert responses[0].error is None and responses[2].error is None
    for response, images in ((responses[0], good[0]), (responses[2], good[1])):
        for name, expected in zip(output_names, _expected(images)):
            np.testing.assert_allclose(response.outputs[name], expected, rtol=1e-5, atol=1e-4)
    if backend == "onnxruntime":  # The graph is 8x8; TorchScript's mean accepts any size.
        assert "IMAGE" in str(responses[1].error)
    assert "missing input" in str(responses[3].error) and "expected" in str(responses[4].error)
    # All-good requests run together in one call and are split back per request.
    calls, run = [], instance._run
    instance._run = lambda inputs: calls.append(inputs) or run(inputs)
    responses = instance.execute([_Request({input_name: g}) for g in good])
    assert len(calls) == 1
    for response, images in zip(responses, good):
        np.testing.assert_allclose(response.outputs[output_names[1]], _expected(images)[1], rtol=1e-5)
    # A caller that asks for one output (an ensemble step mapping only the score) gets only that one.
    only = instance.execute([_Request({input_name: good[0]}, wanted=(output_names[0],))])[0]
    assert set(only.outputs) == {output_names[0]}


def _config_json(path: Path) -> str:
    """Reads a config.pbtxt into the JSON that Triton hands to ``initialize`` as ``args["model_config"]``."""
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True))


def test_the_container_entrypoint_runs_the_hardened_flags_of_the_embedded_server(
    server: TritonServer, repository: Path, tmp_path: Path
) -> None:
    """docker/Dockerfile.server's ENTRYPOINT (``python3 -m serving.flags ...``), run here with the wheel's real
    binary on PATH: it becomes tritonserver with exactly the hardened flags the embedded server uses."""
    from serving.flags import HARDENED_FLAGS

    assert all(flag in server.command() for flag in HARDENED_FLAGS)
    dockerfile = (ROOT / "docker" / "Dockerfile.server").read_text()
    entrypoint = json.loads(next(line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT")).split(" ", 1)[1])
    assert entrypoint[:3] == ["python3", "-m", "serving.flags"]
    assert not any(flag in dockerfile for flag in HARDENED_FLAGS), "the flags are typed again in the Dockerfile"
    backends = prepare_backend_dir(tmp_path / "backends")
    http = free_port()
    argv = [sys.executable, *entrypoint[1:]]
    argv = [a.replace("/models", str(repository)) for a in argv] + [
        f"--backend-directory={backends}", f"--http-port={http}", f"--grpc-port={free_port()}",
        f"--metrics-port={free_port()}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1", "--allow-gpu-metrics=false"]
    env = server_environment()
    env["PATH"] = f"{server.command()[0].rsplit('/', 1)[0]}:{env['PATH']}"
    process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2).status == 200:
                    break
            time.sleep(0.5)
        assert process.poll() is None, f"exited {process.returncode}"
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode().split("\0")
        assert cmdline[0].endswith("tritonserver"), cmdline  # exec'd in place: Docker's signals reach the server
        assert cmdline[1:1 + len(HARDENED_FLAGS)] == list(HARDENED_FLAGS)
        assert f"--model-repository={repository}" in cmdline and "--model-control-mode=none" in cmdline
    finally:
        process.terminate()
        process.wait(60)
