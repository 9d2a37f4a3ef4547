"""``kd-bench-faults``: how long the supervised server takes to answer again after each kind of fault.

Starts ``kd-server`` (the supervisor ``triton_startup_script.sh`` runs) on a model repository and, while a client
sends one request after another, injects faults and times them from the client's side:

* the KServe-v2 JSON request that aborts tritonserver 2.51 (``bench.fuzz.CRASH_SHAPE``), ``--injections`` times:
  from the request and from the process's death to the first correct answer;
* SIGKILL to each python-backend stub of one detector (scorer, decoder, network stand-in), ``--injections`` times
  each: from the kill to the first correct answer (the supervisor reloads the model);
* a fuzz of ``--fuzz`` malformed requests over HTTP and gRPC (:mod:`bench.fuzz`), with the longest outage.

Crashes are spaced past the restart backoff's window (``--start-limit-interval-sec`` is set to 10 s), so each
restart waits the first delay only; the supervisor's other settings are its defaults. Prints a table, writes JSON
and, with ``--readme``, the table into README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from bench import fuzz
from bench.readme import publish
from client.validate import encode_png
from kdcore.contract import SCORE, ModelNames, encoded_input_spec
from kdcore.manifest import ValidationSamples, discover, validation_folder
from serving.supervised import SupervisedServer
from serving.supervisor import SupervisorConfig

BACKOFF_WINDOW_S = 10.0


class Prober(threading.Thread):
    """Sends one request after another over gRPC and records (sent, answered, error) for each.

    Args:
        url: gRPC ``host:port``.
        model: Model to call.
        input_name: Its input.
        data: The batch to send.
        datatype: Its Triton datatype.
        expected: The ``score`` it must answer (within ``atol``).
        atol: Tolerance of the comparison.
    """

    def __init__(self, url: str, model: str, input_name: str, data: np.ndarray, datatype: str,
                 expected: np.ndarray, atol: float = 1e-3) -> None:
        super().__init__(daemon=True)
        self.url, self.model, self.input_name, self.datatype = url, model, input_name, datatype
        self.data, self.expected, self.atol = data, expected, atol
        self.log: list[tuple[float, float, str]] = []
        self.halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        client = None
        while not self.halt.is_set():
            if client is None:
                client = grpcclient.InferenceServerClient(self.url)
            tensor = grpcclient.InferInput(self.input_name, list(self.data.shape), self.datatype)
            tensor.set_data_from_numpy(self.data)
            sent = time.monotonic()
            try:
                got = client.infer(self.model, [tensor], outputs=[grpcclient.InferRequestedOutput(SCORE)],
                                   client_timeout=30).as_numpy(SCORE)
                error = "" if np.allclose(got, self.expected, atol=self.atol) else f"wrong score {got.ravel()}"
            except Exception as e:  # noqa: BLE001  (down, restarting, a dead stub: all are what we time)
                error = " ".join(str(e).split())[:300]
                client.close()
                client = None  # a fresh channel: gRPC's own reconnect backoff would add its delay to ours
            with self._lock:
                self.log.append((sent, time.monotonic(), error))
            if error:
                time.sleep(0.02)
        if client is not None:
            client.close()

    def failures(self) -> list[str]:
        """The errors seen."""
        with self._lock:
            return [e for _, _, e in self.log if e]

    def errors_since(self, t0: float) -> dict[str, int]:
        """How often each error (its first 80 characters) was seen on requests sent since ``t0``."""
        with self._lock:
            return dict(Counter(e[:80] for sent, _, e in self.log if e and sent >= t0))

    def answered_after(self, t0: float, timeout: float = 120) -> float | None:
        """Seconds from ``t0`` to the first correct answer after the first failure of a request sent since ``t0``.

        Waits up to ``timeout`` for it; None if there was none by then.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                after = [entry for entry in self.log if entry[0] >= t0]
            first = next((i for i, (_, _, e) in enumerate(after) if e), None)
            if first is not None:
                answered = next((done for _, done, e in after[first:] if not e), None)
                if answered is not None:
                    return answered - t0
            time.sleep(0.05)
        return None


def _wait_dead(pid: int, timeout: float = 60) -> float:
    """Waits until ``pid`` is gone (or a zombie); returns when."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                break
        except OSError:
            break
        time.sleep(0.01)
    return time.monotonic()


def _summary(values: list[float]) -> dict:
    return {"n": len(values), "median_s": round(statistics.median(values), 2), "worst_s": round(max(values), 2),
            "all_s": [round(v, 2) for v in values]}


def crash_injections(server: SupervisedServer, samples: ValidationSamples, model: str, n: int) -> dict:
    """``n`` times: the crashing HTTP request; from it, and from the process's death, to the next answer."""
    spec = samples.manifest.input
    prober = Prober(server.grpc_url, model, spec.name, samples.inputs[:1], spec.datatype, samples.score[:1])
    prober.start()
    body = json.dumps({"inputs": [{"name": spec.name, "shape": fuzz.CRASH_SHAPE,
                                   "datatype": spec.datatype, "data": [1, 2, 3]}]}).encode()
    from_request, from_death, supervisor, errors = [], [], [], []
    try:
        for k in range(n):
            time.sleep(1.0)
            restarts, pid = server.state()["restarts"], server.server_pid()
            sent = time.monotonic()
            fuzz._send_http(server.http_url, fuzz._http(f"/v2/models/{model}/infer", body), timeout=30)
            dead = _wait_dead(pid)
            answered = prober.answered_after(dead)  # requests sent once it is dead fail until it is back
            state = server.wait_serving(120, restarts=restarts + 1)
            if answered is None:
                raise RuntimeError(f"no answer after crash {k + 1}:\n{server.output()[-3000:]}")
            from_death.append(answered)
            from_request.append(answered + dead - sent)
            supervisor.append(state["crashes"][-1]["serving_again_after_s"])
            errors.append(prober.errors_since(sent))
            print(f"crash {k + 1}/{n}: died {dead - sent:.2f} s after the request, answering {answered:.2f} s "
                  "after its death", file=sys.stderr)
            time.sleep(max(0.0, BACKOFF_WINDOW_S - (time.monotonic() - sent)))  # past the backoff window
    finally:
        prober.halt.set()
        prober.join(60)
    return {"request_to_answer": _summary(from_request), "death_to_answer": _summary(from_death),
            "supervisor_exit_to_ready": _summary(supervisor), "client_errors": errors}


def stub_injections(server: SupervisedServer, samples: ValidationSamples, model: str, n: int, interval: float) -> dict:
    """``n`` times for each python stub of the encoded ensemble: SIGKILL, then the time to the next answer."""
    manifest, names = samples.manifest, ModelNames(model)
    if manifest.encoded_model:
        spec = encoded_input_spec()
        prober = Prober(server.grpc_url, manifest.encoded_model, spec.name,
                        np.array([[encode_png(samples.inputs[0])]], dtype=object), spec.datatype, samples.score[:1])
        victims = [names.scorer, names.decoder, manifest.networks[0]]
    else:
        prober = Prober(server.grpc_url, model, manifest.input.name, samples.inputs[:1], manifest.input.datatype,
                        samples.score[:1])
        victims = [names.scorer, manifest.networks[0]]
    prober.start()
    results: dict[str, dict] = {}
    rng = random.Random(0)
    try:
        for victim in victims:
            times, healed, errors = [], [], []
            for k in range(n):
                time.sleep(rng.uniform(1.0, 1.0 + interval))  # kills land anywhere in the liveness interval
                heals = server.state()["heals"]
                killed = time.monotonic()
                os.kill(server.stub_pid(victim), signal.SIGKILL)
                answered = prober.answered_after(killed)
                if answered is None:
                    raise RuntimeError(f"{victim}: no answer after kill {k + 1}:\n{server.output()[-3000:]}")
                deadline = time.monotonic() + 60
                while server.state()["heals"] == heals and time.monotonic() < deadline:
                    time.sleep(0.05)
                log = server.state()["heal_log"][-1]
                times.append(answered)
                healed.append(log["seconds"] or 0.0)
                errors.append(prober.errors_since(killed))
                print(f"{victim} {k + 1}/{n}: answering {answered:.2f} s after the kill ({log['action']} of "
                      f"{', '.join(log['models'])})", file=sys.stderr)
            results[victim] = {"kill_to_answer": _summary(times), "supervisor_failure_to_healed": _summary(healed),
                               "client_errors": errors}
    finally:
        prober.halt.set()
        prober.join(60)
    return results


def markdown_table(result: dict) -> str:
    """The figures as a Markdown table."""
    rows = ["| fault (kd-server defaults) | injections | median s | worst s |", "|---|---|---|---|"]
    crash = result["crash"]
    rows.append(f"| HTTP request that aborts tritonserver 2.51: process death -> correct answer again | "
                f"{crash['death_to_answer']['n']} | {crash['death_to_answer']['median_s']:.1f} | "
                f"{crash['death_to_answer']['worst_s']:.1f} |")
    rows.append(f"| the same, from the request (the server takes a moment to die) | {crash['request_to_answer']['n']} | "
                f"{crash['request_to_answer']['median_s']:.1f} | {crash['request_to_answer']['worst_s']:.1f} |")
    for victim, r in result["stubs"].items():
        k = r["kill_to_answer"]
        rows.append(f"| stub of `{victim}` killed (SIGKILL) -> correct answer again (model reloaded) | {k['n']} | "
                    f"{k['median_s']:.1f} | {k['worst_s']:.1f} |")
    f = result["fuzz"]
    if f["requests"]:
        outages = f["outages"] or [0.0]
        rows.append(f"| fuzz: {f['requests']} malformed requests ({len(f['kinds'])} kinds, HTTP and gRPC) with {f['valid']} "
                    f"valid ones interleaved ({f['lost']} lost, {f['hung']} hung): valid requests unanswered after each "
                    f"of the {result['fuzz_restarts']} crashes | {result['fuzz_restarts']} | "
                    f"{statistics.median(outages):.1f} | {max(outages):.1f} |")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    """The ``kd-bench-faults`` argument parser."""
    p = argparse.ArgumentParser(prog="kd-bench-faults", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="model repository to serve")
    p.add_argument("--model", default=None, help="detector to fault (default: the first with validation samples)")
    p.add_argument("--injections", type=int, default=5, help="injections of each fault")
    p.add_argument("--fuzz", type=int, default=2000, help="malformed requests of the fuzz (0: no fuzz)")
    p.add_argument("--output", type=Path, default=Path("runs/bench/faults.json"), help="JSON with every figure")
    p.add_argument("--readme", type=Path, default=None, help="README.md to write the table into (faults markers)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``kd-bench-faults``; returns the exit status."""
    args = build_parser().parse_args(argv)
    model = args.model or next(iter(discover(args.repository)), None)
    if model is None:
        print(f"kd-bench-faults: no model with validation samples in {args.repository}", file=sys.stderr)
        return 2
    samples = ValidationSamples.load(validation_folder(args.repository, model))
    with tempfile.TemporaryDirectory(prefix="kd-bench-faults-") as workdir, \
            SupervisedServer(args.repository, Path(workdir),
                             ["--start-limit-interval-sec", str(BACKOFF_WINDOW_S)]) as server:
        result = {"model": model, "repository": str(args.repository), "date": time.strftime("%Y-%m-%d"),
                  "machine": {"cpus": os.cpu_count()}}
        result["stubs"] = stub_injections(server, samples, model, args.injections, SupervisorConfig().health_interval_sec)
        result["crash"] = crash_injections(server, samples, model, args.injections)
        before = server.state()["restarts"]
        target = fuzz.Target(server.http_url, server.grpc_url, model, samples.inputs[:1], samples.score[:1],
                             samples.manifest.atol)
        report = fuzz.run(target, requests=args.fuzz, crashers=3 if args.fuzz else 0)
        result["fuzz"] = report.to_dict()
        result["fuzz_restarts"] = server.wait_serving(120)["restarts"] - before
    table = markdown_table(result)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    written = publish(args.readme, "faults", table, f"kd-bench-faults --repository {args.repository}",
                      "kd-bench-faults")
    lost = result["fuzz"]["lost"] + result["fuzz"]["hung"]
    return 1 if lost or written else 0


if __name__ == "__main__":
    sys.exit(main())
