#!/usr/bin/env python3
"""Validation of a served anomaly detector end to end over HTTP and gRPC (``python client/client.py``).

Checks server and model readiness and metadata, sends the validation images that the exporter stored in the
model repository, and checks shapes, dtypes, ranges, agreement with the stored reference outputs (within the
tolerance stored beside them), that served intervals and regions are exactly those of the served maps
(:mod:`kdcore.intervals`, :mod:`kdcore.regions`) and that anomalous images score above good ones. Prints
``PASS: <model>`` and exits 0, or ``FAIL: <what>`` and exits 1; a server that cannot be reached is a failure too.

Needs only numpy, OpenCV (the regions' components, the encoded-input check) and tritonclient, so it runs in a
slim client image.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from client.transport import connect
from kdcore.contract import (
    BOOL,
    BYTES,
    CALIBRATED_ATOL,
    DECISION,
    FP32,
    INTERVALS,
    IS_ANOMALOUS,
    LABEL,
    LABELS,
    MAP,
    MAP_U8,
    RAW_SCORE,
    REGIONS,
    SCORE,
    TensorSpec,
    encoded_input_spec,
    label_of,
    label_text,
)
from kdcore.intervals import anomalous_intervals, intervals_from_json
from kdcore.manifest import ManifestError, ValidationSamples, discover, validation_folder
from kdcore.regions import anomalous_regions, regions_from_json


class CheckFailed(Exception):
    """A validation check that did not hold; the message says what."""


def load_samples(folder: Path) -> ValidationSamples:
    """The exporter's samples and manifest in ``folder``; :class:`CheckFailed` if they cannot be read."""
    try:
        return ValidationSamples.load(folder)
    except ManifestError as e:
        raise CheckFailed(str(e)) from e


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
        self.kind, self.timeout = kind, timeout
        self.module = httpclient if kind == "http" else grpcclient
        self.client = connect(kind, url, timeout=timeout)

    def metadata(self, model: str) -> dict[str, Any]:
        """Model metadata as a dict with ``inputs`` and ``outputs`` lists."""
        if self.kind == "http":
            return self.client.get_model_metadata(model)
        return self.client.get_model_metadata(model, as_json=True)

    def config(self, model: str) -> dict[str, Any]:
        """The model's configuration as a dict (``platform``, ``ensemble_scheduling``, ...)."""
        if self.kind == "http":
            return self.client.get_model_config(model)
        return self.client.get_model_config(model, as_json=True)["config"]

    def infer(self, model: str, spec: TensorSpec, inputs: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
        """Send a batch for the input ``spec`` (name, datatype); returns the requested outputs."""
        tensor = self.module.InferInput(spec.name, list(inputs.shape), spec.datatype)
        tensor.set_data_from_numpy(inputs)
        requested = [self.module.InferRequestedOutput(o) for o in outputs]
        # HTTP's timeout is the connection's; gRPC takes one per call.
        timeout = {"client_timeout": self.timeout} if self.kind == "grpc" else {}
        result = self.client.infer(model, [tensor], outputs=requested, **timeout)
        return {o: result.as_numpy(o) for o in outputs}

    def close(self) -> None:
        """Close the connection."""
        self.client.close()


def _check_metadata(proto: Protocol, model: str, spec: TensorSpec, outputs: dict[str, str]) -> dict[str, str]:
    """The model's input and the expected ``outputs`` (name -> datatype); returns every served output's datatype."""
    meta = proto.metadata(model)
    inputs = meta["inputs"]
    name, dtype, shape = spec.name, spec.datatype, [-1, *spec.dims]
    _check(len(inputs) == 1 and inputs[0]["name"] == name, f"{model}: expected one input '{name}', got {inputs}")
    _check(inputs[0]["datatype"] == dtype, f"{model}: input dtype {inputs[0]['datatype']}, expected {dtype}")
    served_shape = [int(d) for d in inputs[0]["shape"]]
    _check(served_shape == shape, f"{model}: input shape {served_shape}, expected {shape}")
    served = {o["name"]: o["datatype"] for o in meta["outputs"]}
    for name, dtype in outputs.items():
        _check(served.get(name) == dtype, f"{model}: output '{name}' is {served.get(name)}, expected {dtype}")
    return served


def encode_png(image: np.ndarray) -> bytes:
    """An RGB uint8 image as PNG file bytes (lossless, so decoding gives the same pixels)."""
    import cv2  # only the encoded-input check needs OpenCV

    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise CheckFailed("OpenCV could not encode a validation image as PNG")
    return buffer.tobytes()


def validate_protocol(proto: Protocol, model: str, samples: ValidationSamples, log: list[str]) -> None:
    """All checks of one model over one protocol; raises :class:`CheckFailed` on the first that fails."""
    manifest = samples.manifest
    spec, atol = manifest.input, manifest.atol
    _check(proto.client.is_server_live(), f"{proto.kind}: server is not live")
    _check(proto.client.is_server_ready(), f"{proto.kind}: server is not ready")
    for m in [model, *manifest.served_models[1:]]:
        _check(proto.client.is_model_ready(m), f"{proto.kind}: model '{m}' is not ready")
    outputs = samples.outputs
    served = _check_metadata(proto, model, spec, outputs)
    # Image detectors exported with regions serve them beside the map (older repositories do not).
    regions = samples.anomaly_map is not None and not manifest.is_series and served.get(REGIONS) == BYTES

    out = proto.infer(model, spec, samples.inputs, [*outputs, *([REGIONS] if regions else [])])
    n = len(samples.inputs)
    score, label, raw = out[SCORE], out[LABEL], out[RAW_SCORE]
    _check(score.shape == (n, 1) and score.dtype == np.float32, f"{model}: {SCORE} {score.shape} {score.dtype}")
    _check(label.shape == (n, 1), f"{model}: {LABEL} shape {label.shape}")
    _check(bool(np.all((score >= 0) & (score <= 1))), f"{model}: {SCORE} outside [0, 1]")
    labels = np.array([label_text(v) for v in label.ravel()])
    _check(set(labels) <= set(LABELS), f"{model}: labels {sorted(set(labels))} not in {sorted(LABELS)}")
    diffs = [f"raw {_close(f'{model}.{RAW_SCORE}', raw, samples.raw_score, atol):.1e}",
             f"score {_close(f'{model}.{SCORE}', score, samples.score, atol):.1e}"]
    if samples.anomaly_map is not None:
        amap = out[MAP]
        _check(amap.dtype == np.float32, f"{model}: {MAP} dtype {amap.dtype}")
        _check(bool(np.all((amap >= 0) & (amap <= 1))), f"{model}: {MAP} outside [0, 1]")
        diffs.append(f"map {_close(f'{model}.{MAP}', amap, samples.anomaly_map, atol):.1e}")
    if manifest.is_series:
        _check_intervals(model, out[MAP], out[INTERVALS])
    if regions:
        found = _check_regions(model, out[MAP], out[REGIONS])
        log.append(f"{proto.kind}: {model}: {REGIONS} of {n} inputs ({found} in all) are those of the served maps")
    _check_labels(model, labels, samples)
    good, bad = score.ravel()[samples.labels == 0], score.ravel()[samples.labels == 1]
    if good.size and bad.size:
        _check(bad.mean() > good.mean(), f"{model}: anomalous inputs score {bad.mean():.3f} on average, good {good.mean():.3f}")
        log.append(f"{proto.kind}: {model}: mean score good {good.mean():.3f}, anomalous {bad.mean():.3f}")
    log.append(f"{proto.kind}: {model}: {n} inputs, max |diff| " + ", ".join(diffs))

    single = proto.infer(model, spec, samples.inputs[:1], [SCORE])[SCORE]
    _close(f"{model}.{SCORE} (batch of 1)", single, samples.score[:1], atol)

    profiles = manifest.profiles
    if profiles.score:  # the score-only ensemble: no map computed, same scores and labels
        wanted = [SCORE, RAW_SCORE, LABEL]
        got = proto.infer(profiles.score, spec, samples.inputs, wanted)
        _check(set(got) == set(wanted), f"{profiles.score}: outputs {sorted(got)}")
        d = _close(f"{profiles.score}.{SCORE}", got[SCORE], samples.score, atol)
        log.append(f"{proto.kind}: {profiles.score} (score only): max |diff| score {d:.1e}")
    if profiles.fast:  # the calibrated network: the scorer's formula in the graph, decision as BOOL
        _validate_fast(proto, profiles.fast, profiles.score, samples, log)
    if profiles.map8 and samples.anomaly_map is not None:  # UINT8 map: v / 255 within half a step
        got = proto.infer(profiles.map8, spec, samples.inputs, [SCORE, MAP_U8])
        _check(got[MAP_U8].dtype == np.uint8, f"{profiles.map8}: map dtype {got[MAP_U8].dtype}")
        d = _close(f"{profiles.map8}.{MAP_U8} / 255", got[MAP_U8] / 255.0, samples.anomaly_map, atol + 0.5 / 255)
        log.append(f"{proto.kind}: {profiles.map8} (UINT8 map): max |diff| map {d:.1e}")

    if profiles.encoded_score:  # PNG files in, the score alone out
        files = np.array([[encode_png(image)] for image in samples.inputs], dtype=object)
        got = proto.infer(profiles.encoded_score, encoded_input_spec(), files, [SCORE])
        d = _close(f"{profiles.encoded_score}.{SCORE}", got[SCORE], samples.score, atol)
        log.append(f"{proto.kind}: {profiles.encoded_score} (PNG files, score only): max |diff| score {d:.1e}")

    encoded = manifest.encoded_model
    if encoded:
        # Lossless PNG of the exact input pixels: the server-side decoder must reproduce the raw-pixel results.
        files = np.array([[encode_png(image)] for image in samples.inputs], dtype=object)
        got = proto.infer(encoded, encoded_input_spec(), files, [SCORE, RAW_SCORE])
        d = [f"{o} {_close(f'{encoded}.{o}', got[o], ref, atol):.1e}"
             for o, ref in ((RAW_SCORE, samples.raw_score), (SCORE, samples.score))]
        log.append(f"{proto.kind}: {encoded} (PNG files decoded by the server): max |diff| " + ", ".join(d))

    references = [samples.raw_score] + ([samples.raw_map] if samples.raw_map is not None else [])
    for network in manifest.networks:
        names = [o["name"] for o in proto.metadata(network)["outputs"]]
        _check(len(names) == len(references), f"{network}: outputs {names}, expected {len(references)}")
        got = proto.infer(network, manifest.network_spec_input, samples.network_inputs, names)
        d = [f"{o} {_close(f'{network}.{o}', got[o], ref, atol):.1e}" for o, ref in zip(names, references)]
        log.append(f"{proto.kind}: {network}: max |diff| " + ", ".join(d))


def _check_intervals(model: str, step_scores: np.ndarray, intervals: np.ndarray) -> None:
    """Each row's served intervals are exactly the runs of its served per-step scores at or above the decision
    line (:mod:`kdcore.intervals`, the scorer's own rule applied to what it sent)."""
    _check(intervals.shape == (len(step_scores), 1), f"{model}: {INTERVALS} shape {intervals.shape}")
    for row, (scores, text) in enumerate(zip(step_scores, intervals[:, 0])):
        try:
            served = intervals_from_json(text)
        except ValueError as e:
            raise CheckFailed(f"{model}: row {row}: {INTERVALS} is not the documented JSON ({e})") from e
        _check(served == anomalous_intervals(scores), f"{model}: row {row}: {INTERVALS} {served} do not match its "
               f"per-step scores (expected {anomalous_intervals(scores)})")


def _check_regions(model: str, maps: np.ndarray, regions: np.ndarray) -> int:
    """Each row's served regions are exactly the regions of its served calibrated map (:mod:`kdcore.regions`, the
    scorer's own rule applied to what it sent); returns how many there are."""
    _check(regions.shape == (len(maps), 1), f"{model}: {REGIONS} shape {regions.shape}")
    found = 0
    for row, (amap, text) in enumerate(zip(maps, regions[:, 0])):
        try:
            got = regions_from_json(text)
        except ValueError as e:
            raise CheckFailed(f"{model}: row {row}: {REGIONS} is not the documented JSON ({e})") from e
        want = anomalous_regions(amap)
        _check(got == want, f"{model}: row {row}: {len(got)} {REGIONS} {got[:3]} do not match its map "
               f"(expected {len(want)}: {want[:3]})")
        found += len(got)
    return found


def _check_labels(model: str, labels: np.ndarray, samples: ValidationSamples) -> None:
    """Served label words against the references: a raw score within the tolerance of the threshold may
    legitimately flip; every other label must match."""
    manifest = samples.manifest
    decided = np.abs(samples.raw_score.ravel() - manifest.image_threshold) > manifest.atol
    mismatch = decided & (labels != samples.label.ravel())
    _check(not mismatch.any(), f"{model}: labels differ from the reference for {list(samples.names[mismatch])}")


def _validate_fast(proto: Protocol, fast: str, score_model: str | None, samples: ValidationSamples,
                   log: list[str]) -> None:
    """The calibrated network: its outputs, the references, and the score-only ensemble's answer on the same
    images (the two calibrate the same raw scores with one formula: they must agree within
    :data:`~kdcore.contract.CALIBRATED_ATOL`, far tighter than the tolerance to the eager references)."""
    manifest, spec = samples.manifest, samples.manifest.input
    outputs = {SCORE: FP32, IS_ANOMALOUS: BOOL, RAW_SCORE: FP32}
    _check_metadata(proto, fast, spec, outputs)
    got = proto.infer(fast, spec, samples.inputs, list(outputs))
    n, score, decided = len(samples.inputs), got[SCORE], got[IS_ANOMALOUS]
    _check(decided.dtype == np.bool_ and decided.shape == (n, 1), f"{fast}: {IS_ANOMALOUS} {decided.shape} {decided.dtype}")
    _check(bool(np.all((score >= 0) & (score <= 1))), f"{fast}: {SCORE} outside [0, 1]")
    _check(bool(np.all(decided == (score >= DECISION))), f"{fast}: {IS_ANOMALOUS} disagrees with {SCORE} >= {DECISION}")
    diffs = [f"raw {_close(f'{fast}.{RAW_SCORE}', got[RAW_SCORE], samples.raw_score, manifest.atol):.1e}",
             f"score {_close(f'{fast}.{SCORE}', score, samples.score, manifest.atol):.1e}"]
    labels = np.array([label_of(got, row) for row in range(n)])
    _check_labels(fast, labels, samples)
    if score_model:
        ensemble = proto.infer(score_model, spec, samples.inputs, [SCORE, RAW_SCORE, LABEL])
        same = _close(f"{fast}.{SCORE} against {score_model}", score, ensemble[SCORE], CALIBRATED_ATOL)
        _check(list(labels) == [label_text(v) for v in ensemble[LABEL].ravel()],
               f"{fast}: decisions differ from {score_model}'s labels")
        diffs.append(f"score against {score_model} {same:.1e}")
    log.append(f"{proto.kind}: {fast} (calibrated network): max |diff| " + ", ".join(diffs))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; defaults match triton_startup_script.sh."""
    parser = argparse.ArgumentParser(
        description="Validate a served anomaly detector end to end; prints PASS: <model> or FAIL: <what>. "
        "To score your own images instead: client.py score --help.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-u", "--url", default="localhost:8000", help="HTTP endpoint host:port")
    parser.add_argument("-g", "--grpc-url", default="localhost:8001", help="gRPC endpoint host:port")
    parser.add_argument("-i", "--protocol", choices=["http", "grpc", "both"], default="both", help="protocol(s) to test")
    parser.add_argument("-m", "--model", default=None,
                        help="ensemble model to validate (default: every model in the repository with validation samples)")
    parser.add_argument("-r", "--repository", type=Path, default=Path("model_repository"),
                        help="model repository holding <model>/validation/ (the exporter's samples)")
    parser.add_argument("--samples", type=Path, default=None,
                        help="validation folder for --model (default: <repository>/<model>/validation)")
    parser.add_argument("-t", "--timeout", type=float, default=60.0, help="network timeout in seconds")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the PASS / FAIL line")
    return parser


def validate_model(model: str, samples: ValidationSamples, args: argparse.Namespace, log: list[str]) -> None:
    """Every check of one model over the chosen protocol(s)."""
    for kind in ["http", "grpc"] if args.protocol == "both" else [args.protocol]:
        proto = Protocol(kind, args.url if kind == "http" else args.grpc_url, args.timeout)
        try:
            validate_protocol(proto, model, samples, log)
        finally:
            proto.client.close()


def main(argv: list[str] | None = None) -> int:
    """Validate each model; prints one PASS/FAIL line per model; returns 0 only if all pass."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.samples and not args.model:
        parser.error("--samples belongs to one model: give --model too")
    models = [args.model] if args.model else discover(args.repository)
    if not models:
        print(f"FAIL: no model with validation samples in {args.repository} (run kd-export first)")
        return 1
    failures = 0
    for model in models:
        log: list[str] = []
        try:
            samples = load_samples(args.samples or validation_folder(args.repository, model))
            validate_model(model, samples, args, log)
        except (CheckFailed, InferenceServerException, ConnectionError, OSError) as e:
            failures += 1
            if log and not args.quiet:
                print("\n".join(log))
            reason = str(e) if isinstance(e, CheckFailed) else f"{model}: {type(e).__name__}: {e}"
            print(f"FAIL: {reason}")
            continue
        if not args.quiet:
            print("\n".join(log))
        if samples.manifest.profiles.fast:
            print(f"PASS: {samples.manifest.profiles.fast}")
        print(f"PASS: {model}")
    return 1 if failures else 0


