#!/usr/bin/env python3
"""Validate a served anomaly detector end to end over HTTP and gRPC.

Checks server and model readiness and metadata, sends the validation images that the exporter stored in the
model repository, and checks shapes, dtypes, ranges, agreement with the stored reference outputs (within the
tolerance stored beside them) and that anomalous images score above good ones. Prints ``PASS: <model>`` and
exits 0, or ``FAIL: <what>`` and exits 1; a server that cannot be reached is a failure too.

Needs only numpy and tritonclient, so it runs in a slim client image.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

INPUT = "image"
ENSEMBLE_OUTPUTS = {"score": "FP32", "anomaly_map": "FP32", "label": "BYTES", "raw_score": "FP32"}
LABELS = {"anomalous", "normal"}


class CheckFailed(Exception):
    """A validation check that did not hold; the message says what."""


@dataclass
class Samples:
    """The exporter's validation images and reference outputs."""

    images: np.ndarray
    labels: np.ndarray
    names: np.ndarray
    raw_score: np.ndarray
    raw_map: np.ndarray
    score: np.ndarray
    anomaly_map: np.ndarray
    label: np.ndarray
    manifest: dict[str, Any]

    @classmethod
    def load(cls, folder: Path) -> Samples:
        """Read ``samples.npz`` and ``manifest.json`` from ``folder``."""
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            with np.load(folder / "samples.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise CheckFailed(f"cannot read validation samples in {folder}: {e}") from e
        return cls(manifest=manifest, **{k: arrays[k] for k in cls.__dataclass_fields__ if k != "manifest"})


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)


def _close(name: str, got: np.ndarray, want: np.ndarray, atol: float) -> float:
    _check(got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0
    _check(diff <= atol, f"{name}: max |served - reference| = {diff:.3g} > tolerance {atol:g}")
    return diff


class Protocol:
    """One protocol's client with the calls this validator needs."""

    def __init__(self, kind: str, url: str, timeout: float) -> None:
        self.kind = kind
        self.module = httpclient if kind == "http" else grpcclient
        if kind == "http":
            self.client = httpclient.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
        else:
            self.client = grpcclient.InferenceServerClient(url)

    def metadata(self, model: str) -> dict[str, Any]:
        """Model metadata as a dict with ``inputs`` and ``outputs`` lists."""
        if self.kind == "http":
            return self.client.get_model_metadata(model)
        return self.client.get_model_metadata(model, as_json=True)

    def infer(self, model: str, images: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
        """Send uint8 images ``(N, S, S, 3)``; returns the requested outputs."""
        tensor = self.module.InferInput(INPUT, list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        requested = [self.module.InferRequestedOutput(o) for o in outputs]
        result = self.client.infer(model, [tensor], outputs=requested)
        return {o: result.as_numpy(o) for o in outputs}


def _check_metadata(proto: Protocol, model: str, size: int, outputs: dict[str, str]) -> None:
    meta = proto.metadata(model)
    inputs = meta["inputs"]
    _check(len(inputs) == 1 and inputs[0]["name"] == INPUT, f"{model}: expected one input '{INPUT}', got {inputs}")
    _check(inputs[0]["datatype"] == "UINT8", f"{model}: input dtype {inputs[0]['datatype']}, expected UINT8")
    shape = [int(d) for d in inputs[0]["shape"]]
    _check(shape == [-1, size, size, 3], f"{model}: input shape {shape}, expected [-1, {size}, {size}, 3]")
    served = {o["name"]: o["datatype"] for o in meta["outputs"]}
    for name, dtype in outputs.items():
        _check(served.get(name) == dtype, f"{model}: output '{name}' is {served.get(name)}, expected {dtype}")


def _network_outputs(proto: Protocol, model: str) -> tuple[str, str]:
    """Names of the raw score and raw map outputs (TorchScript models suffix them with ``__<index>``)."""
    names = [o["name"] for o in proto.metadata(model)["outputs"]]
    score = next((n for n in names if n.split("__")[0] == "pred_score"), None)
    amap = next((n for n in names if n.split("__")[0] == "anomaly_map"), None)
    _check(score is not None and amap is not None, f"{model}: outputs {names} lack pred_score / anomaly_map")
    return score, amap


def validate_protocol(proto: Protocol, model: str, samples: Samples, log: list[str]) -> None:
    """All checks over one protocol; raises :class:`CheckFailed` on the first that fails."""
    manifest = samples.manifest
    size, atol = int(manifest["input_size"]), float(manifest["atol"])
    _check(proto.client.is_server_live(), f"{proto.kind}: server is not live")
    _check(proto.client.is_server_ready(), f"{proto.kind}: server is not ready")
    for m in [model, *manifest["networks"]]:
        _check(proto.client.is_model_ready(m), f"{proto.kind}: model '{m}' is not ready")
    _check_metadata(proto, model, size, ENSEMBLE_OUTPUTS)

    out = proto.infer(model, samples.images, list(ENSEMBLE_OUTPUTS))
    n = len(samples.images)
    score, amap, label, raw = out["score"], out["anomaly_map"], out["label"], out["raw_score"]
    _check(score.shape == (n, 1) and score.dtype == np.float32, f"score: {score.shape} {score.dtype}")
    _check(amap.shape == (n, 1, size, size) and amap.dtype == np.float32, f"anomaly_map: {amap.shape} {amap.dtype}")
    _check(label.shape == (n, 1), f"label: shape {label.shape}")
    _check(bool(np.all((score >= 0) & (score <= 1))), "score outside [0, 1]")
    _check(bool(np.all((amap >= 0) & (amap <= 1))), "anomaly_map outside [0, 1]")
    labels = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in label.ravel()])
    _check(set(labels) <= LABELS, f"labels {sorted(set(labels))} not in {sorted(LABELS)}")
    d_raw = _close("raw_score", raw, samples.raw_score, atol)
    d_score = _close("score", score, samples.score, atol)
    d_map = _close("anomaly_map", amap, samples.anomaly_map, atol)
    # A raw score within the tolerance of the threshold may legitimately flip; every other label must match.
    decided = np.abs(samples.raw_score.ravel() - float(manifest["image_threshold"])) > atol
    mismatch = decided & (labels != samples.label.ravel())
    _check(not mismatch.any(), f"labels differ from the reference for {list(samples.names[mismatch])}")
    good, bad = score.ravel()[samples.labels == 0], score.ravel()[samples.labels == 1]
    if good.size and bad.size:
        _check(bad.mean() > good.mean(), f"anomalous images score {bad.mean():.3f} on average, good {good.mean():.3f}")
        log.append(f"{proto.kind}: {model}: mean score good {good.mean():.3f}, anomalous {bad.mean():.3f}")
    log.append(f"{proto.kind}: {model}: {n} images, max |diff| raw {d_raw:.1e}, score {d_score:.1e}, map {d_map:.1e}")

    single = proto.infer(model, samples.images[:1], ["score"])["score"]
    _close("score (batch of 1)", single, samples.score[:1], atol)

    for network in manifest["networks"]:
        s_name, m_name = _network_outputs(proto, network)
        got = proto.infer(network, samples.images, [s_name, m_name])
        d_s = _close(f"{network}.{s_name}", got[s_name], samples.raw_score, atol)
        d_m = _close(f"{network}.{m_name}", got[m_name], samples.raw_map, atol)
        log.append(f"{proto.kind}: {network}: max |diff| score {d_s:.1e}, map {d_m:.1e}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; defaults match triton_startup_script.sh."""
    parser = argparse.ArgumentParser(
        description="Validate a served anomaly detector end to end; prints PASS: <model> or FAIL: <what>.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-u", "--url", default="localhost:8000", help="HTTP endpoint host:port")
    parser.add_argument("-g", "--grpc-url", default="localhost:8001", help="gRPC endpoint host:port")
    parser.add_argument("-i", "--protocol", choices=["http", "grpc", "both"], default="both", help="protocol(s) to test")
    parser.add_argument("-m", "--model", default="ad_inference", help="ensemble model to validate")
    parser.add_argument("-r", "--repository", type=Path, default=Path("model_repository"),
                        help="model repository holding <model>/validation/ (the exporter's samples)")
    parser.add_argument("--samples", type=Path, default=None, help="validation folder (default: <repository>/<model>/validation)")
    parser.add_argument("-t", "--timeout", type=float, default=60.0, help="network timeout in seconds")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the PASS / FAIL line")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run every check; returns 0 on PASS, 1 on FAIL."""
    args = build_parser().parse_args(argv)
    log: list[str] = []
    try:
        samples = Samples.load(args.samples or args.repository / args.model / "validation")
        protocols = ["http", "grpc"] if args.protocol == "both" else [args.protocol]
        for kind in protocols:
            proto = Protocol(kind, args.url if kind == "http" else args.grpc_url, args.timeout)
            try:
                validate_protocol(proto, args.model, samples, log)
            finally:
                proto.client.close()
    except (CheckFailed, InferenceServerException, ConnectionError, OSError) as e:
        if log and not args.quiet:
            print("\n".join(log))
        reason = str(e) if isinstance(e, CheckFailed) else f"{args.model}: {type(e).__name__}: {e}"
        print(f"FAIL: {reason}")
        return 1
    if not args.quiet:
        print("\n".join(log))
    print(f"PASS: {args.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
