"""The service heals itself: the supervised server (kd-server, as triton_startup_script.sh starts it) comes back
after a crash, reloads a model whose backend stub died, survives a fuzz of malformed requests, and gives up on a
model that crashes at load. Everything runs on the real tritonserver over loopback; figures go to the
"reliability figures" printed at the end of the run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import bench.fuzz as fuzz
from bench.faults import Prober
from client.health import HealthCheck
from client.health import main as health_main
from client.scoring import ScoreConfig, score_images
from client.validate import encode_png
from export.repository import ExportResult
from serving.cli import build_parser, build_server, supervisor_config
from serving.embedded import TritonServer, free_port, stub_pid
from serving.supervised import SupervisedServer
from serving.supervisor import describe

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[1]
#: The issue's goal: answers again within this many seconds of a backend stub's death.
HEAL_GOAL_S = 10.0
#: A crashed server serves again within this many seconds (a restart of this repository takes about 5 s).
RESTART_GOAL_S = 30.0


def _repository(exported_all: list[ExportResult], target: Path) -> Path:
    """RD4AD's models (an image detector: decoder, network, scorer) and KD-AE's (another detector's ensemble)."""
    source = exported_all[0].repository
    target.mkdir(parents=True)
    for folder in source.iterdir():
        if folder.name.startswith(("ad_inference", "kdae_digits")) and not folder.name.startswith(
                ("ad_inference_student", "ad_inference_multiteacher", "ad_inference_mkd")):
            shutil.copytree(folder, target / folder.name)
    return target


def _samples(repository: Path, model: str) -> dict[str, np.ndarray]:
    with np.load(repository / model / "validation" / "samples.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def healing_repo(exported_all: list[ExportResult], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _repository(exported_all, tmp_path_factory.mktemp("healing") / "repo")


@pytest.fixture(scope="module")
def healing_server(healing_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SupervisedServer]:
    """kd-server with its default liveness settings; restarts quickly (the backoff is not under test here)."""
    with SupervisedServer(healing_repo, tmp_path_factory.mktemp("kd-server"), ["--restart-sec", "0.2"]) as server:
        yield server
    assert server.process.returncode == 0, server.output()[-3000:]


def _crash(server: SupervisedServer) -> None:
    """The ~150-byte KServe-v2 JSON request that aborts tritonserver 2.51 (std::bad_alloc)."""
    body = json.dumps({"inputs": [{"name": "image", "shape": fuzz.CRASH_SHAPE, "datatype": "UINT8",
                                   "data": [1, 2, 3]}]}).encode()
    fuzz._send_http(server.http_url, fuzz._http("/v2/models/ad_inference/infer", body), timeout=10)


# --------------------------------------------------------------------------- dead backend stubs
def test_a_killed_backend_stub_is_reloaded_and_answers_resume_within_10_s_other_ensembles_unaffected(
    healing_server: SupervisedServer, healing_repo: Path, reliability
) -> None:
    image = _samples(healing_repo, "ad_inference")
    vector = _samples(healing_repo, "kdae_digits")
    png = np.array([[encode_png(image["inputs"][0])]], dtype=object)
    # The encoded ensemble runs all three stubs of the detector: decoder -> network stand-in -> scorer.
    encoded = Prober(healing_server.grpc_url, "ad_inference_encoded", "image_bytes", png, "BYTES", image["score"][:1])
    # The calibrated network is a model of its own (one stub): the score-only path clients call first.
    fast = Prober(healing_server.grpc_url, "ad_inference_fast", "image", image["inputs"][:1], "UINT8",
                  image["score"][:1])
    other = Prober(healing_server.grpc_url, "kdae_digits", "vector", vector["inputs"][:2], "FP32", vector["score"][:2])
    for prober in (encoded, fast, other):
        prober.start()
    resumed: dict[str, float | None] = {}
    try:
        for model, victim in (("ad_inference_scorer", encoded), ("ad_inference_decoder", encoded),
                              ("ad_inference_onnx", encoded), ("ad_inference_fast", fast)):
            heals = healing_server.state()["heals"]
            pid = healing_server.stub_pid(model)
            time.sleep(1.0)  # some answers before the kill
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            resumed[model] = victim.answered_after(killed, timeout=30)
            deadline = killed + 30
            while healing_server.state()["heals"] == heals and time.monotonic() < deadline:
                time.sleep(0.1)
            state = healing_server.state()
            assert state["heals"] == heals + 1, (model, healing_server.output()[-3000:])
            last = state["heal_log"][-1]
            assert last["action"] == "reload" and last["models"] == [model] and "not healthy" in last["cause"], last
            assert healing_server.stub_pid(model) != pid
    finally:
        for prober in (encoded, fast, other):
            prober.halt.set()
        for prober in (encoded, fast, other):
            prober.join(60)
    print(f"answers resumed after the stub's death (s): {resumed}; kdae_digits: {len(other.log)} requests, "
          f"{len(other.failures())} failed")
    assert all(r is not None and r < HEAL_GOAL_S for r in resumed.values()), resumed
    assert not other.failures(), other.failures()[:3]
    assert healing_server.state()["restarts"] == 0  # healed in place, never restarted
    reliability["dead backend stub (scorer, decoder, network, calibrated network) healed in place"] = {
        "requests": len(encoded.log) + len(fast.log) + len(other.log), "faults": 4, "failures": len(other.failures()),
        "worst_ms_to_answers": round(1000 * max(resumed.values()))}


# --------------------------------------------------------------------------- the HTTP request that aborts Triton
def test_the_http_request_that_aborts_tritonserver_costs_one_restart_and_no_result(
    healing_server: SupervisedServer, demo_root: Path, tmp_path: Path, reliability
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    sources = sorted((demo_root / "brick" / "test").glob("*/*.png"))
    for i in range(60):
        shutil.copy(sources[i % len(sources)], images / f"{i:03d}.png")
    before = healing_server.state()
    results: dict[str, list] = {"grpc": [], "http": []}
    summaries: dict[str, object] = {}
    ten = threading.Event()

    def on_result(protocol: str, result) -> None:
        results[protocol].append(result)
        if len(results[protocol]) >= 10:
            ten.set()
        time.sleep(0.1)  # a camera's pace: both runs are still going when the server dies

    def score(protocol: str) -> None:
        config = ScoreConfig(url=healing_server.url(protocol), protocol=protocol, batch_size=1, concurrency=2,
                             retries=8, backoff=0.5)
        summaries[protocol] = score_images([images], config, lambda r: on_result(protocol, r))

    runs = [threading.Thread(target=score, args=(p,)) for p in ("grpc", "http")]
    for run in runs:
        run.start()
    assert ten.wait(120)
    crashed_at = time.monotonic()
    _crash(healing_server)
    state = healing_server.wait_serving(60, restarts=before["restarts"] + 1)
    serving_again = time.monotonic() - crashed_at
    for run in runs:
        run.join(300)
    crash = state["crashes"][-1]
    print(f"crash: {crash}; serving again {serving_again:.1f} s after the request; scored "
          f"{ {p: (s.scored, s.errors, s.retries) for p, s in summaries.items()} }")
    assert crash["signal"] == "SIGABRT" and state["server_pid"] != before["server_pid"]
    assert crash["serving_again_after_s"] < RESTART_GOAL_S
    assert "bad_alloc" in healing_server.log_path.read_text(errors="replace")
    for protocol, summary in summaries.items():
        assert summary.scored == 60 and summary.errors == 0, (protocol, [r.error for r in results[protocol] if not r.ok])
    assert all(s.retries >= 1 for s in summaries.values())  # the runs really were in progress when it died
    reliability["HTTP request that aborts tritonserver: restarted, 2 scoring runs finish"] = {
        "inputs": 120, "requests": 121, "faults": 1, "failures": sum(s.errors for s in summaries.values()),
        "ms_crash_to_serving": round(1000 * crash["serving_again_after_s"]),
        "ms_request_to_serving": round(1000 * serving_again)}


# --------------------------------------------------------------------------- fuzz
def test_fuzz_of_malformed_requests_over_http_and_grpc_every_valid_request_answered(
    healing_server: SupervisedServer, healing_repo: Path, reliability
) -> None:
    samples = _samples(healing_repo, "ad_inference")
    target = fuzz.Target(healing_server.http_url, healing_server.grpc_url, "ad_inference", samples["inputs"][:1],
                         samples["score"][:1], 1e-3)
    before = healing_server.state()["restarts"]
    report = fuzz.run(target, requests=2000, seed=0, crashers=3, timeout=10)
    state = healing_server.wait_serving(60)
    restarts = state["restarts"] - before
    print(json.dumps(report.to_dict(), indent=1))
    print(f"server restarts during the fuzz: {restarts}")
    assert report.requests == 2000 and report.valid >= 2000 // 25
    assert report.lost == 0, "a valid request went unanswered"
    assert report.hung == 0, "a request got no answer within its deadline"
    assert restarts >= 3  # the three known crashers, each survived
    reliability["fuzz: malformed HTTP and gRPC requests, a valid one every 25"] = {
        "inputs": len(report.kinds), "requests": report.requests + report.valid, "faults": restarts,
        "failures": report.lost + report.hung, "longest_outage_ms": round(1000 * report.longest_outage_s)}


# --------------------------------------------------------------------------- the liveness command
def test_kd_health_passes_then_names_the_model_whose_stub_died(healing_repo: Path, base_env: Path, tmp_path: Path,
                                                               capsys) -> None:
    # A plain server (no supervisor), so nothing heals the stub behind the check's back.
    server = TritonServer(healing_repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          workdir=tmp_path / "triton")
    with server:
        for protocol in ("http", "grpc"):
            assert health_main(["-u", server.url(protocol), "-i", protocol, "-r", str(healing_repo)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 2 and all(line.startswith("HEALTHY: ") and "ad_inference_encoded" in line and
                                       "kdae_digits" in line for line in lines), lines
        (tmp_path / "image").mkdir()
        _docker_healthcheck_passes(server, healing_repo, base_env, tmp_path / "image")
        check = HealthCheck(healing_repo, server.http_url)
        assert check.check().healthy
        os.kill(stub_pid(server.process.pid, healing_repo / "ad_inference_scorer"), signal.SIGKILL)
        time.sleep(0.3)
        rc = health_main(["-u", server.http_url, "-r", str(healing_repo)])
        out = capsys.readouterr().out
        report = check.check()
        check.close()
        server.stop(timeout=3)  # a server with a dead stub waits 30 s on SIGTERM
    assert rc == 1 and out.startswith("UNHEALTHY") and "ad_inference_scorer" in out, out
    assert report.suspects == ["ad_inference_scorer"], report.summary()
    assert {r.model for r in report.failures} >= {"ad_inference_encoded", "ad_inference_scorer"}
    assert all(r.ok for r in report.results if r.model.startswith("kdae_digits"))
    # The same command through client.py, as a Docker HEALTHCHECK or an exec probe would call it.
    unreachable = subprocess.run([sys.executable, str(ROOT / "client" / "client.py"), "health", "-u",
                                  f"127.0.0.1:{free_port()}", "-r", str(healing_repo), "-t", "2"],
                                 capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 1 and "UNHEALTHY: server" in unreachable.stdout, unreachable


def _docker_healthcheck_passes(server: TritonServer, repository: Path, base_env: Path, root: Path) -> None:
    """docker/Dockerfile.server's HEALTHCHECK command, run with what the image has: the project's base install."""
    dockerfile = (ROOT / "docker" / "Dockerfile.server").read_text()
    assert not [line for line in dockerfile.splitlines() if line.startswith("COPY client/")], "loose files copied"
    command = json.loads(dockerfile.split("HEALTHCHECK", 1)[1].split("CMD", 1)[1].splitlines()[0])
    argv = [str(base_env / a) if (base_env / a).is_file() else
            a.replace("/models", str(repository)).replace("127.0.0.1:8000", server.http_url) for a in command]
    env = {"PATH": f"{base_env}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=root, env=env)
    assert result.returncode == 0 and result.stdout.startswith("HEALTHY"), (argv, result.stdout, result.stderr)


# --------------------------------------------------------------------------- a model that crashes at load
CRASHING_MODEL = '''import os


class TritonPythonModel:
    def initialize(self, args):
        os.abort()  # as a backend that segfaults or runs out of memory while loading

    def execute(self, requests):
        return []
'''


def test_a_model_that_crashes_at_load_makes_the_supervisor_give_up_naming_it(
    healing_repo: Path, tmp_path: Path, reliability
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(healing_repo / "kdae_digits_scorer", repo / "kdae_digits_scorer")
    (repo / "crashes_at_load" / "1").mkdir(parents=True)
    (repo / "crashes_at_load" / "1" / "model.py").write_text(CRASHING_MODEL)
    (repo / "crashes_at_load" / "config.pbtxt").write_text(
        'name: "crashes_at_load"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n')
    env = {**os.environ, "TRITON_STATE_DIR": str(tmp_path / "state"), "PYTHON": sys.executable}
    ports = ["--http-port", str(free_port()), "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
    started = time.monotonic()
    run = subprocess.run([str(ROOT / "triton_startup_script.sh"), "start", "--mode", "embedded", "--model-repository",
                          str(repo), *ports, "--", "--start-limit-burst", "3", "--restart-sec", "0.2"],
                         env=env, capture_output=True, text=True, timeout=240)
    seconds = time.monotonic() - started
    print(run.stdout[-2000:], run.stderr[-2000:])
    assert run.returncode == 1
    assert "giving up: tritonserver failed to start 3 times" in run.stderr
    assert "model 'crashes_at_load' failed to load" in run.stderr
    log = (tmp_path / "state" / "server.log").read_text(errors="replace")
    assert log.count("start failed: tritonserver exited") == 3  # each failure logged, then no more tries
    assert not (tmp_path / "state" / "server.pid").exists()
    reliability["model crashing at load: supervisor gives up after its budget"] = {
        "faults": 3, "ms_to_give_up": round(1000 * seconds)}


# --------------------------------------------------------------------------- what is exposed
def test_an_exposed_host_keeps_http_on_loopback_unless_asked(tmp_path: Path) -> None:
    def command(*argv: str) -> list[str]:
        args = build_parser().parse_args(["--model-repository", str(tmp_path), *argv])
        return build_server(args, supervisor_config(args)).command()

    exposed = command("--host", "0.0.0.0", "--admin-key", "k")
    assert "--http-address=127.0.0.1" in exposed and "--grpc-address=0.0.0.0" in exposed
    assert "--model-control-mode=explicit" in exposed
    assert any(a.startswith("--grpc-restricted-protocol=model-repository,") for a in exposed)
    assert "--http-address=0.0.0.0" in command("--host", "0.0.0.0", "--http-host", "0.0.0.0", "--admin-key", "k")
    # Loopback by default: the supervisor's own key guards the repository API alone; statistics stay open.
    default = command()
    assert "--http-address=127.0.0.1" in default and "--grpc-address=127.0.0.1" in default
    restricted = [a for a in default if a.startswith("--http-restricted-api=")]
    assert len(restricted) == 1 and restricted[0].startswith("--http-restricted-api=model-repository:admin-key=")
    # Without liveness checks nothing needs model control: the repository stays fixed, as before.
    assert "--model-control-mode=none" in command("--health-interval", "0")


def test_status_lines_name_restarts_and_heals() -> None:
    state = {"status": "serving", "since": "2026-12-01T10:00:00+00:00", "supervisor_pid": 10, "server_pid": 11,
             "restarts": 2, "failed_starts": 0, "heals": 1, "message": "",
             "crashes": [{"at": "t1", "exit_code": None, "signal": "SIGABRT", "uptime_s": 42.0,
                          "serving_again_after_s": 5.1}],
             "heal_log": [{"at": "t2", "models": ["m_scorer"], "cause": "Stub process 'm_scorer_0_0' is not healthy.",
                           "action": "reload", "seconds": 1.4}]}
    text = "\n".join(describe(state))
    assert "restarts: 2 (last: SIGABRT at t1 after 42 s up, serving again after 5.1 s)" in text
    assert "heals: 1 (last: reload of m_scorer in 1.4 s at t2" in text
