#!/usr/bin/env python3
"""Liveness that does real work: one small inference per served model, compared with its stored reference.

Triton's ``/v2/health/ready`` stays 200 while a python-backend stub is dead and every request to its model fails,
so readiness cannot tell a working server from a broken one; only an inference can. :class:`HealthCheck` sends the
first stored validation sample (``<model>/validation/`` of the exporter) through each detector and checks the answer
against the reference within the manifest's tolerance. It is what ``kd-health`` (a Docker ``HEALTHCHECK`` or a
Kubernetes exec liveness probe) runs once, and what the supervisor (``kd-server``) runs every few seconds.

A round sends, per detector and all at once: the request that crosses the most steps (PNG bytes through the
encoded ensemble: decoder, network, scorer; pixels through the ensemble for vector models), each network from
pixels (the calibrated network ``<model>_fast`` too), the scorer from the stored raw score and the decoder from
the PNG. The networks run three times a round,
the rest costs next to nothing; in parallel, a round takes as long as its slowest request (about 1 s when a stub
is dead, since Triton takes that long to fail a request to it). The *suspects* are the failing step models, and
the steps of a failing ensemble that no passing request went through.

Needs only numpy, tritonclient and OpenCV (to encode the PNG), like the validator it shares its sample loader with.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository root importable (see client/client.py)
    sys.path[:] = [str(Path(__file__).resolve().parents[1]),
                   *(p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent)]

from client.validate import CheckFailed, Protocol, encode_png, load_samples  # noqa: E402
from kdcore.contract import (  # noqa: E402
    ENCODED_INPUT,
    FP32,
    RAW_PRED,
    SCORE,
    TensorSpec,
    base_output_name,
    encoded_input_spec,
)
from kdcore.manifest import discover, validation_folder  # noqa: E402

#: Exit status of ``kd-health``: healthy, a model failed (or the server is unreachable), bad usage.
HEALTHY, UNHEALTHY, USAGE = 0, 1, 2


@dataclass(frozen=True)
class Probe:
    """One request of the check: send ``data`` as ``input`` to ``model``, expect ``expected`` in ``output``."""

    model: str
    input: TensorSpec
    data: np.ndarray
    output: str
    expected: np.ndarray
    atol: float


@dataclass
class ProbeResult:
    """What one probe got: ``error`` says why it failed (empty when it passed)."""

    model: str
    seconds: float
    error: str = ""

    @property
    def ok(self) -> bool:
        """Whether the model answered with the reference."""
        return not self.error


@dataclass
class HealthReport:
    """One round of the check.

    Attributes:
        results: One entry per request sent (the cheap round, then the diagnosis if it failed).
        suspects: Models (steps, not ensembles) that failed and that no passing request went through: what to
            reload. Empty when healthy, or when the failure cannot be pinned on a step (server unreachable).
    """

    results: list[ProbeResult]
    suspects: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """Whether every request was answered with its reference."""
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list[ProbeResult]:
        """The requests that failed."""
        return [r for r in self.results if not r.ok]

    def summary(self) -> str:
        """One line: ``HEALTHY: ...`` or ``UNHEALTHY: <model>: <why> ... (suspect: <step>)``."""
        ms = 1000 * sum(r.seconds for r in self.results)
        if self.healthy:
            models = sorted({r.model for r in self.results})
            return f"HEALTHY: {len(models)} models answered their reference ({', '.join(models)}) in {ms:.0f} ms"
        failed = "; ".join(f"{r.model}: {r.error}" for r in self.failures)
        suspects = f" (suspect: {', '.join(self.suspects)})" if self.suspects else ""
        return f"UNHEALTHY: {failed}{suspects}"


class HealthCheck:
    """The liveness check of the detectors of one model repository, against one server.

    Args:
        repository: The model repository with the exporter's validation samples.
        url: ``host:port`` of the server's HTTP (or gRPC) endpoint.
        protocol: ``"http"`` or ``"grpc"``.
        timeout: Seconds one request may take.
        models: Detectors (ensemble names) to check; every one with validation samples when None.

    Raises:
        CheckFailed: If no detector has validation samples, or a sample folder cannot be read.
    """

    def __init__(self, repository: Path, url: str, *, protocol: str = "http", timeout: float = 10.0,
                 models: list[str] | None = None) -> None:
        self.repository, self.url, self.protocol, self.timeout = Path(repository), url, protocol, timeout
        names = models or discover(self.repository)
        if not names:
            raise CheckFailed(f"no model with validation samples in {self.repository} (run kd-export first)")
        self.samples = {name: load_samples(validation_folder(self.repository, name)) for name in names}
        self._probes: list[Probe] = []
        self._steps: dict[str, list[str]] = {}  # ensemble -> the models it runs
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()  # one connection per worker thread: tritonclient's HTTP client is
        self._connections: list[Protocol] = []  # not shared between threads
        self._generation = 0  # bumped by reset(): connections of an older generation are not used again
        self._lock = threading.Lock()

    def check(self) -> HealthReport:
        """Runs one round: every probe at once, each on a connection of its own."""
        try:
            if not self._probes:
                proto = Protocol(self.protocol, self.url, self.timeout)
                try:
                    self._probes, self._steps = self._plan(proto)
                finally:
                    proto.close()
                self._pool = self._pool or ThreadPoolExecutor(min(8, len(self._probes)), thread_name_prefix="health")
        except Exception as e:  # noqa: BLE001  (unreachable, or the server is not up yet: that is the answer)
            self.reset()
            return HealthReport([ProbeResult("server", 0.0, _text(e))])
        # A request to a model whose stub is dead takes about 1 s to fail: in parallel, a round takes one.
        results = list(self._pool.map(self._run_here, self._probes))
        return HealthReport(results, [] if all(r.ok for r in results) else self._suspects(results))

    def _run_here(self, probe: Probe) -> ProbeResult:
        """Runs ``probe`` on this worker thread's connection (opened on first use after a reset)."""
        generation, proto = getattr(self._local, "connection", (-1, None))
        if proto is None or generation != self._generation:
            try:
                proto = Protocol(self.protocol, self.url, self.timeout)
            except Exception as e:  # noqa: BLE001
                return ProbeResult(probe.model, 0.0, _text(e))
            self._local.connection = (self._generation, proto)
            with self._lock:
                self._connections.append(proto)
        return self._run(proto, probe)

    def reset(self) -> None:
        """Close the connections and forget what was learnt from the server (call it after a restart)."""
        with self._lock:
            self._generation += 1
            connections, self._connections = self._connections, []
        for proto in connections:
            try:
                proto.close()
            except Exception:  # noqa: BLE001  (a dead server's connection)
                pass
        self._probes, self._steps = [], {}

    def close(self) -> None:
        """Close the connections and the worker threads."""
        self.reset()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _plan(self, proto: Protocol) -> tuple[list[Probe], dict[str, list[str]]]:
        """The probes of a round, from the samples and what the server says of its models."""
        probes, steps = [], {}
        for name, s in self.samples.items():
            m = s.manifest
            spec, atol = m.input, m.atol
            # The ensemble that crosses the most steps: PNG bytes through <name>_encoded (decoder, network,
            # scorer), else pixels through <name>.
            png = np.array([[encode_png(s.inputs[0])]], dtype=object) if m.encoded_model else None
            ensemble = (Probe(m.encoded_model, encoded_input_spec(), png, SCORE, s.score[:1], atol)
                        if png is not None else Probe(name, spec, s.inputs[:1], SCORE, s.score[:1], atol))
            steps[ensemble.model] = [step["model_name"] for step in
                                     proto.config(ensemble.model).get("ensemble_scheduling", {}).get("step", [])]
            probes.append(ensemble)
            if m.profiles.fast:  # the calibrated network: the score-only path clients call first
                probes.append(Probe(m.profiles.fast, spec, s.inputs[:1], SCORE, s.score[:1], atol))
            for network in m.networks:
                names = [o["name"] for o in proto.metadata(network)["outputs"]]
                score_output = next((n for n in names if base_output_name(n) == RAW_PRED), names[0])
                probes.append(Probe(network, m.network_spec_input, s.network_inputs[:1], score_output,
                                    s.raw_score[:1], atol))
            # The other steps alone: the scorer from the raw score, the decoder from the PNG (lossless: exact).
            for step in steps[ensemble.model]:
                if step in m.networks:
                    continue
                inputs = {i["name"] for i in proto.metadata(step)["inputs"]}
                if RAW_PRED in inputs:
                    probes.append(Probe(step, TensorSpec(RAW_PRED, FP32, (1,)), s.raw_score[:1].astype(np.float32),
                                        SCORE, s.score[:1], atol))
                elif ENCODED_INPUT in inputs and png is not None:
                    probes.append(Probe(step, encoded_input_spec(), png, spec.name, s.inputs[:1], 0.0))
                elif m.network_input is not None and spec.name in inputs:  # a series' renderer: the exact plot
                    probes.append(Probe(step, spec, s.inputs[:1], m.network_input.name, s.network_inputs[:1], 0.0))
        return probes, steps

    def _run(self, proto: Protocol, probe: Probe) -> ProbeResult:
        started = time.perf_counter()
        try:
            got = proto.infer(probe.model, probe.input, probe.data, [probe.output])[probe.output]
            if got is None or got.shape != probe.expected.shape:
                error = f"{probe.output} has shape {None if got is None else got.shape}, expected {probe.expected.shape}"
            else:
                diff = float(np.max(np.abs(got.astype(np.float64) - probe.expected.astype(np.float64))))
                error = "" if diff <= probe.atol else \
                    f"{probe.output} differs from the reference by {diff:.3g} (tolerance {probe.atol:g})"
        except Exception as e:  # noqa: BLE001  (any failure of the request is the finding)
            error = _text(e)
        return ProbeResult(probe.model, time.perf_counter() - started, error)

    def _suspects(self, results: list[ProbeResult]) -> list[str]:
        """Steps of the failing requests that no passing request went through (a failing network is its own)."""
        healthy: set[str] = set()
        for r in results:
            if r.ok:
                healthy.update(self._steps.get(r.model) or [r.model])
        suspects: list[str] = []
        for r in results:
            if not r.ok:
                suspects += [m for m in self._steps.get(r.model) or [r.model] if m not in healthy and m not in suspects]
        return suspects


def _text(error: BaseException) -> str:
    """An error as one line (Triton's message when it has one)."""
    message = error.message() if hasattr(error, "message") and callable(error.message) else str(error)
    return " ".join(str(message or type(error).__name__).split())


def build_parser() -> argparse.ArgumentParser:
    """The ``kd-health`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="kd-health",
        description="Liveness check that does real inference: sends each detector's first stored validation sample "
        "(the repository's <model>/validation/) and compares the answer with the reference within the manifest's "
        "tolerance. Prints HEALTHY or UNHEALTHY naming the model that failed and the step to blame; exit 0 healthy, "
        "1 unhealthy or unreachable, 2 bad usage. Meant for Docker HEALTHCHECK and Kubernetes exec liveness probes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-u", "--url", default="127.0.0.1:8000", help="host:port of the endpoint of --protocol")
    parser.add_argument("-i", "--protocol", choices=["http", "grpc"], default="http", help="wire protocol")
    parser.add_argument("-r", "--repository", type=Path, default=Path("model_repository"),
                        help="model repository holding <model>/validation/ (the exporter's samples)")
    parser.add_argument("-m", "--model", action="append", default=None,
                        help="detector (ensemble name) to check; repeat for several (default: every detector with "
                             "validation samples)")
    parser.add_argument("-t", "--timeout", type=float, default=5.0, help="seconds one request may take")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of one line")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs ``kd-health``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        check = HealthCheck(args.repository, args.url, protocol=args.protocol, timeout=args.timeout, models=args.model)
    except CheckFailed as e:
        print(f"UNHEALTHY: {e}", file=sys.stderr)
        return USAGE
    try:
        report = check.check()
    finally:
        check.close()
    if args.json:
        print(json.dumps({"healthy": report.healthy, "suspects": report.suspects,
                          "results": [asdict(r) for r in report.results]}, indent=2))
    else:
        print(report.summary())
    return HEALTHY if report.healthy else UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
