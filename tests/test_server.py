"""The exported repository on the real tritonserver: both protocols, both networks, the client, bad requests."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from export.repository import ExportResult
from serving.embedded import TritonServer
from tests.conftest import IMAGE_SIZE

pytestmark = pytest.mark.server
CLIENT = Path(__file__).resolve().parents[1] / "client" / "client.py"
PROTOCOLS = {"http": httpclient, "grpc": grpcclient}


@contextlib.contextmanager
def _client(kind: str, server: TritonServer) -> Iterator:
    """A client that is closed afterwards: an open keep-alive connection would hold the server's shutdown."""
    module = PROTOCOLS[kind]
    client = module.InferenceServerClient(server.http_url if kind == "http" else server.grpc_url)
    try:
        yield client
    finally:
        client.close()


def _infer(kind: str, server: TritonServer, model: str, array: np.ndarray, dtype: str = "UINT8", outputs=("score",)):
    module = PROTOCOLS[kind]
    tensor = module.InferInput("image", list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    with _client(kind, server) as client:
        result = client.infer(model, [tensor], outputs=[module.InferRequestedOutput(o) for o in outputs])
    return {o: result.as_numpy(o) for o in outputs}


def _run_client(server: TritonServer, exported: ExportResult, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CLIENT), "-u", server.http_url, "-g", server.grpc_url, "-r", str(exported.repository), *extra],
        capture_output=True, text=True, timeout=120,
    )


def test_client_passes_every_model(server: TritonServer, exported_all: list[ExportResult]) -> None:
    """Every detector loads on the real server and answers both protocols, ensemble and both networks."""
    done = _run_client(server, exported_all[0])
    assert done.returncode == 0, done.stdout + done.stderr
    passes = sorted(line for line in done.stdout.splitlines() if line.startswith("PASS: "))
    image = [r for r in exported_all if r.names.name != "kdae_digits"]  # image detectors have a calibrated network
    assert passes == sorted([f"PASS: {r.names.name}" for r in exported_all] + [f"PASS: {r.names.fast}" for r in image])
    for r in exported_all:
        for kind in ("http", "grpc"):
            for model in (r.names.onnx, r.names.torchscript):
                assert f"{kind}: {model}: max |diff|" in done.stdout


def test_client_validates_one_model_on_request(server: TritonServer, exported: ExportResult) -> None:
    done = _run_client(server, exported, "-m", "kdae_digits", "-i", "grpc")
    assert done.returncode == 0, done.stdout
    assert [l for l in done.stdout.splitlines() if l.startswith(("PASS", "FAIL"))] == ["PASS: kdae_digits"]


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_ensemble_outputs_are_calibrated(kind: str, server: TritonServer, exported: ExportResult) -> None:
    samples = np.load(exported.repository / "ad_inference" / "validation" / "samples.npz")
    out = _infer(kind, server, "ad_inference", samples["inputs"], outputs=("score", "anomaly_map", "label", "raw_score"))
    n = len(samples["inputs"])
    assert out["score"].shape == (n, 1) and out["anomaly_map"].shape == (n, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert np.all((out["score"] >= 0) & (out["score"] <= 1))
    labels = np.array([v.decode() for v in out["label"].ravel()])
    np.testing.assert_array_equal(labels == "anomalous", out["score"].ravel() >= 0.5)
    np.testing.assert_allclose(out["raw_score"], samples["raw_score"], atol=1e-3)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_calibrated_network_answers_like_the_score_ensemble(kind: str, server: TritonServer, exported: ExportResult) -> None:
    """``<model>_fast`` (one ONNX model) and ``<model>_score`` (network, then the Python scorer) on the same images:
    the same raw scores, calibrated scores within 1e-6, and the label as the boolean."""
    images = np.load(exported.repository / "ad_inference" / "validation" / "samples.npz")["inputs"]
    fast = _infer(kind, server, exported.names.fast, images, outputs=("score", "is_anomalous", "raw_score"))
    ensemble = _infer(kind, server, exported.names.score_only, images, outputs=("score", "label", "raw_score"))
    np.testing.assert_allclose(fast["raw_score"], ensemble["raw_score"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast["score"], ensemble["score"], rtol=0, atol=1e-6)
    assert fast["is_anomalous"].dtype == np.bool_
    np.testing.assert_array_equal(fast["is_anomalous"].ravel(), [v == b"anomalous" for v in ensemble["label"].ravel()])


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_concurrent_single_requests_match_the_batch(kind: str, server: TritonServer, exported: ExportResult) -> None:
    """Dynamic batching regroups requests; each must still get its own image's answer."""
    from concurrent.futures import ThreadPoolExecutor

    samples = np.load(exported.repository / "ad_inference" / "validation" / "samples.npz")
    images = samples["inputs"]
    with ThreadPoolExecutor(4) as pool:
        scores = list(pool.map(lambda i: _infer(kind, server, "ad_inference", images[i:i + 1])["score"][0, 0],
                               [i % len(images) for i in range(16)]))
    expected = samples["score"].ravel()
    np.testing.assert_allclose(scores, [expected[i % len(images)] for i in range(16)], atol=1e-3)


BAD_REQUESTS = {
    "wrong shape": (np.zeros((1, 32, 32, 3), np.uint8), "UINT8", "unexpected shape"),
    "wrong dtype": (np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32), "FP32", "data-type"),
    "empty batch": (np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), "UINT8", "byte size mismatch"),
    "oversized image": (np.zeros((1, 2048, 2048, 3), np.uint8), "UINT8", "unexpected shape"),
    "batch too large": (np.zeros((9, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), "UINT8", "batch"),
}


@pytest.mark.parametrize("kind", ["http", "grpc"])
@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_a_clear_error_and_the_server_stays_ready(
    kind: str, case: str, server: TritonServer, exported: ExportResult, reliability
) -> None:
    array, dtype, expected = BAD_REQUESTS[case]
    with pytest.raises(InferenceServerException) as info:
        _infer(kind, server, "ad_inference", array, dtype)
    message = str(info.value)
    print(f"{kind} {case}: {message}")
    assert expected.lower() in message.lower()
    assert "image" in message or "batch" in message.lower()  # the message names what is wrong
    with _client(kind, server) as client:
        assert client.is_server_ready() and client.is_model_ready("ad_inference")
    samples = np.load(exported.repository / "ad_inference" / "validation" / "samples.npz")
    good = _infer(kind, server, "ad_inference", samples["inputs"][:1])["score"]
    np.testing.assert_allclose(good, samples["score"][:1], atol=1e-3)
    figures = reliability.setdefault("bad requests (shape, dtype, empty, oversized, batch)", {"inputs": 0, "requests": 0})
    figures["inputs"] += 1
    figures["requests"] += 2


def test_unknown_model_is_named(server: TritonServer) -> None:
    with pytest.raises(InferenceServerException, match="nonexistent"):
        _infer("http", server, "nonexistent", np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))


def test_client_fails_on_wrong_reference(server: TritonServer, exported: ExportResult, tmp_path: Path) -> None:
    samples = dict(np.load(exported.repository / "ad_inference" / "validation" / "samples.npz"))
    samples["score"] = np.clip(samples["score"] + 0.2, 0, 1)  # references the server cannot match
    (tmp_path / "manifest.json").write_bytes(
        (exported.repository / "ad_inference" / "validation" / "manifest.json").read_bytes()
    )
    np.savez(tmp_path / "samples.npz", **samples)
    done = _run_client(server, exported, "-m", "ad_inference", "--samples", str(tmp_path), "-i", "grpc")
    assert done.returncode == 1
    assert done.stdout.strip().splitlines()[-1].startswith("FAIL: ad_inference.score: max |served - reference|")


def test_client_fails_when_no_server(exported: ExportResult) -> None:
    done = subprocess.run(
        [sys.executable, str(CLIENT), "-u", "127.0.0.1:9", "-g", "127.0.0.1:9", "-r", str(exported.repository), "-t", "5"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1 and done.stdout.strip().splitlines()[-1].startswith("FAIL: ")


# ---------------------------------------------------------------------------------------------- regions
@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_served_regions_are_the_regions_of_the_served_map(kind: str, server: TritonServer, exported: ExportResult) -> None:
    """The full ensembles (pixels, encoded files) serve ``regions`` with the map; a client may ask for them without
    the map; the score-only and UINT8 ensembles do not list them; client.py checks them (its log says so)."""
    from client.validate import encode_png
    from kdcore.contract import MAP, REGIONS, SCORE
    from kdcore.regions import anomalous_regions, regions_from_json

    samples = np.load(exported.repository / "ad_inference" / "validation" / "samples.npz")
    images, n = samples["inputs"], len(samples["inputs"])
    out = _infer(kind, server, "ad_inference", images, outputs=(MAP, REGIONS))
    assert out[REGIONS].shape == (n, 1)
    served = [regions_from_json(text) for text in out[REGIONS][:, 0]]
    assert served == [anomalous_regions(m) for m in out[MAP]]
    assert sum(map(len, served)) > 0, "the demo model finds regions on its anomalous validation images"
    alone = _infer(kind, server, "ad_inference", images, outputs=(SCORE, REGIONS))  # boxes without the map
    assert [regions_from_json(t) for t in alone[REGIONS][:, 0]] == served
    module = PROTOCOLS[kind]
    files = module.InferInput("image_bytes", [n, 1], "BYTES")
    files.set_data_from_numpy(np.array([[encode_png(i)] for i in images], dtype=object))
    with _client(kind, server) as client:
        encoded = client.infer(exported.names.encoded, [files], outputs=[module.InferRequestedOutput(REGIONS)])
        assert [regions_from_json(t) for t in encoded.as_numpy(REGIONS)[:, 0]] == served
        for model in (exported.names.score_only, exported.names.map8, exported.names.encoded_score):
            meta = client.get_model_metadata(model, **({"as_json": True} if kind == "grpc" else {}))
            assert REGIONS not in {o["name"] for o in meta["outputs"]}, model
    done = _run_client(server, exported, "-m", "ad_inference", "-i", kind)
    assert done.returncode == 0, done.stdout
    assert f"{kind}: ad_inference: {REGIONS} of {n} inputs" in done.stdout


def test_the_scorer_computes_regions_only_when_asked(exported: ExportResult, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exported scorer (its model.py and shipped kdcore) against a stand-in for Triton's Python-backend module:
    regions only for requests that name them, and then those of the calibrated map it returns."""
    import importlib.util
    import json
    import types

    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    from kdcore.contract import LABEL, MAP, RAW_MAP, RAW_PRED, RAW_SCORE, REGIONS, SCORE
    from kdcore.regions import anomalous_regions, regions_from_json

    class Request(dict):
        def __init__(self, inputs: dict, wanted: tuple[str, ...]) -> None:
            super().__init__(inputs)
            self.wanted = wanted

        def requested_output_names(self) -> set:
            return set(self.wanted)

    fake = types.SimpleNamespace(
        Tensor=lambda name, array: (name, array),
        InferenceResponse=lambda output_tensors=(), error=None: types.SimpleNamespace(outputs=dict(output_tensors),
                                                                                      error=error),
        TritonError=type("TritonError", (Exception,), {"INVALID_ARG": 3, "__init__": lambda self, m, c=0: None}),
        get_input_tensor_by_name=lambda r, n: types.SimpleNamespace(as_numpy=lambda: r[n]) if n in r else None,
        triton_string_to_numpy={"TYPE_FP32": np.float32, "TYPE_UINT8": np.uint8, "TYPE_STRING": np.object_}.get,
    )
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder = exported.repository / exported.names.scorer
    spec = importlib.util.spec_from_file_location("exported_scorer", folder / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    scorer = module.TritonPythonModel()
    scorer.initialize({"model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
                       "model_repository": str(folder)})
    calls = []
    regions = scorer.scorer.regions
    monkeypatch.setattr(scorer.scorer, "regions", lambda m: calls.append(len(m)) or regions(m))

    samples = np.load(exported.repository / "ad_inference" / "validation" / "samples.npz")
    raw = {RAW_PRED: samples["raw_score"].astype(np.float32), RAW_MAP: samples["raw_map"].astype(np.float32)}
    without, with_map, boxes = scorer.execute([Request(raw, (SCORE, LABEL, RAW_SCORE)), Request(raw, (SCORE, MAP)),
                                               Request(raw, (SCORE, REGIONS))])
    assert calls == [len(samples["raw_score"])], "regions computed for the one request that asked for them"
    assert REGIONS not in without.outputs and REGIONS not in with_map.outputs
    assert [regions_from_json(t) for t in boxes.outputs[REGIONS][:, 0]] == [
        anomalous_regions(m) for m in with_map.outputs[MAP]]
