"""Supervision of tritonserver: restart it when it dies, heal a dead backend in place, give up on a start loop.

The options carry the names operators know from systemd (``Restart=``, ``RestartSec=``, ``RestartMaxDelaySec=``,
``StartLimitBurst=``, ``StartLimitIntervalSec=``) and Kubernetes probes (``periodSeconds``, ``timeoutSeconds``,
``failureThreshold``):

* **Restart.** A server that exits without being asked to is started again after ``restart_sec``, doubled for each
  restart within the last ``start_limit_interval_sec`` and capped at ``restart_max_sec``. Each crash is logged with
  the exit status and the tail of the server log.
* **Start budget.** A start that fails (the server exits, or is not ready within ``ready_timeout_sec``: typically
  a model that crashes on load under ``--exit-on-error``) counts against the budget: after ``start_limit_burst``
  of them within ``start_limit_interval_sec`` the supervisor gives up with a message naming the models that failed
  to load. Crashes of a server that was serving are not counted (as Kubernetes' CrashLoopBackOff, they are only
  slowed down): otherwise anyone who can crash the server a few times could turn that into a permanent outage.
* **Healing in place.** Every ``health_interval_sec`` a liveness check (:class:`client.health.HealthCheck`: a real
  inference per detector) runs; after ``health_failures`` failed rounds in a row the models it blames are unloaded
  and loaded again through the repository API (explicit model control, behind the admin key, on the HTTP endpoint),
  and if that does not bring every detector back, the server is restarted.

Progress goes to stdout as ``kd-server: ...`` lines; the give-up message starts with ``ERROR:``. The state
(``status``, restarts, crashes, heals) is written atomically to a JSON file that ``triton_startup_script.sh
status`` reads (:func:`describe`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from serving.embedded import ModelControlError, TritonServer

__all__ = ["LivenessCheck", "RestartPolicy", "Supervisor", "SupervisorConfig", "describe", "read_state"]

#: Exit status when the start budget is spent.
GAVE_UP = 1
_HISTORY = 20  # crashes and heals kept in the state file
_STACK_FRAME = re.compile(r"^\s*\d+# 0x[0-9A-Fa-f]+ in ")  # the backtrace tritonserver prints when it aborts


class RestartPolicy(str, Enum):
    """When to restart a server that exited by itself (systemd's ``Restart=``)."""

    NO = "no"
    ON_FAILURE = "on-failure"  # a non-zero exit status or a signal
    ALWAYS = "always"


class SupervisorConfig(BaseModel):
    """How the supervisor restarts and heals the server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    restart: RestartPolicy = Field(RestartPolicy.ON_FAILURE, description="when to restart a server that exited by itself")
    restart_sec: float = Field(0.5, ge=0, description="wait before the first restart; doubled for each restart "
                                                      "within start_limit_interval_sec")
    restart_max_sec: float = Field(30.0, ge=0, description="longest wait before a restart")
    start_limit_burst: int = Field(3, ge=1, description="failed starts within start_limit_interval_sec that make "
                                                        "the supervisor give up")
    start_limit_interval_sec: float = Field(60.0, gt=0, description="window of the start budget and the backoff")
    health_interval_sec: float = Field(2.0, ge=0, description="seconds between liveness rounds; 0 turns them off")
    health_timeout_sec: float = Field(10.0, gt=0, description="seconds one liveness request may take")
    health_failures: int = Field(3, ge=1, description="failed liveness rounds in a row before the server is "
                                                      "restarted (a failure pinned on a step is reloaded at once)")
    ready_timeout_sec: float = Field(120.0, gt=0, description="seconds a start may take to become ready")
    stop_timeout_sec: float = Field(30.0, gt=0, description="seconds a requested stop waits before killing")


class LivenessReport(Protocol):
    """What the supervisor reads of a liveness round (:class:`client.health.HealthReport`)."""

    healthy: bool
    suspects: list[str]
    failures: list[Any]  # each with .model and .error

    def summary(self) -> str: ...


def _cause(report: LivenessReport) -> str:
    """Why the suspects failed, in their own words (the whole summary when none of them failed alone)."""
    own = [f"{r.model}: {r.error}" for r in report.failures if r.model in report.suspects]
    return "; ".join(own) or report.summary()


class LivenessCheck(Protocol):
    """A liveness check against the running server (:class:`client.health.HealthCheck`)."""

    def check(self) -> LivenessReport: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class Crash:
    """A server exit that nobody asked for."""

    at: str
    exit_code: int | None
    signal: str | None
    uptime_s: float
    serving_again_after_s: float | None = None  # from the exit being noticed to ready again


@dataclass
class Heal:
    """A liveness failure and what fixed it: ``reload`` of the suspects, or a ``restart`` of the server."""

    at: str
    models: list[str]
    cause: str
    action: str
    seconds: float | None = None  # from the first failed round to the first healthy one


@dataclass
class _State:
    status: str = "starting"
    since: str = ""
    supervisor_pid: int = field(default_factory=os.getpid)
    server_pid: int | None = None
    http: str = ""
    grpc: str = ""
    restarts: int = 0
    failed_starts: int = 0
    heals: int = 0
    crashes: list[dict[str, Any]] = field(default_factory=list)
    heal_log: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _signal_name(code: int | None) -> str | None:
    if code is None or code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _log(message: str) -> None:
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    print(f"kd-server: {stamp} {message}", flush=True)


class Supervisor:
    """Runs one :class:`TritonServer` until asked to stop, restarting and healing it.

    Args:
        server: The server to run (not started yet). Healing by reload needs ``model_control="explicit"``.
        config: Restart, budget and liveness settings.
        health: The liveness check, run against the server once it is ready (None: no liveness rounds).
        state_path: JSON file with the state for ``status`` (written atomically on every change); None: none.
        log: Where progress lines go.
    """

    def __init__(
        self,
        server: TritonServer,
        config: SupervisorConfig | None = None,
        *,
        health: LivenessCheck | None = None,
        state_path: Path | None = None,
        log: Callable[[str], None] = _log,
    ) -> None:
        self.server = server
        self.config = config or SupervisorConfig()
        self._health = health if self.config.health_interval_sec > 0 else None
        self.state_path = Path(state_path) if state_path else None
        self.log = log
        self.state = _State(http=server.http_url, grpc=server.grpc_url)
        self._stop = threading.Event()
        self._failed_starts: deque[float] = deque()
        self._restarts: deque[float] = deque()
        self._started_at = 0.0
        self._outage_since: float | None = None  # when the last crash was noticed
        self._restart_heal: tuple[dict[str, Any], float] | None = None  # a heal by restart, waiting for ready
        self._last_failure: tuple[str, dict[str, str]] = ("", {})
        self._lingering = 0  # old instances of reloaded models that keep this server's shutdown waiting
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="liveness")
        self._probe: Future | None = None  # the liveness round in progress

    # ------------------------------------------------------------------ public
    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Asks the loop to stop the server and return (safe from a signal handler)."""
        self._stop.set()
        process = self.server.process
        if process is not None and process.poll() is None:
            process.send_signal(signum)  # Triton shuts down cleanly on SIGTERM and SIGINT alike.

    def run(self) -> int:
        """Serves until stopped; returns the exit status.

        Returns:
            The server's exit status after a requested stop (128 + signal when a signal ended it), the server's
            status when it exited and the policy says not to restart, or :data:`GAVE_UP` (1) when the start budget
            is spent.
        """
        try:
            while True:
                if not self._start():
                    if self._stop.is_set():
                        return self._finish()
                    if self._budget_spent():
                        return self._give_up()
                    if not self._pause():
                        return self._finish()
                    continue
                outcome = self._watch()
                if outcome == "stop":
                    return self._finish()
                if outcome == "exited":
                    code = self.server.process.returncode
                    self._record_crash(code)
                    self.server.stop(timeout=1)  # the stubs it left behind, and their shared memory
                    if not self._restart_wanted(code):
                        self._set("stopped", message=f"tritonserver exited ({self._exit_text(code)}); restart={self.config.restart.value}")
                        return 128 - code if code < 0 else code
                else:  # "unhealthy": healing in place did not help
                    self._close_health()
                    self.server.stop(timeout=3)  # a server with a dead stub waits 30 s on SIGTERM: do not
                    self._outage_since = time.monotonic()
                if not self._pause():
                    return self._finish()
        finally:
            self._close_health()
            self._pool.shutdown(wait=False)
            if self._health is not None:
                self._health.close()

    def _close_health(self) -> None:
        # An open keep-alive connection makes a stopping tritonserver wait for it (up to its exit timeout).
        if self._health is None:
            return
        if self._probe is not None:
            try:
                self._probe.exception(timeout=self.config.health_timeout_sec)  # never two users of one client
            except FutureTimeout:
                return  # still stuck on a dying server: its connection goes with the server
            self._probe = None
        self._health.reset()

    def _check(self) -> LivenessReport | str:
        """One liveness round, in a worker thread, while watching the server and the stop request.

        Returns the report, or ``"exited"`` / ``"stop"`` as soon as the server dies or a stop is asked for: a
        stub forked by a reload inherits the server's sockets, so a request in flight when the server dies gets
        no reset while that stub lives, and the round would sit out its timeout.
        """
        if self._probe is None:
            self._probe = self._pool.submit(self._health.check)
        while True:
            try:
                report = self._probe.result(timeout=0.1)
            except FutureTimeout:
                if self._stop.is_set():
                    return "stop"
                if self.server.process.poll() is not None:
                    return "exited"
                continue
            self._probe = None
            return report

    # ------------------------------------------------------------------ start
    def _start(self) -> bool:
        """Starts the server and waits for readiness; False when the start failed (or a stop was requested)."""
        self._set("starting")
        try:
            self.server.start()
        except Exception as e:  # noqa: BLE001  (missing repository, backend folder: a failed start)
            return self._failed_start(str(e))
        self._started_at = time.monotonic()
        self._lingering = 0
        self.state.server_pid = self.server.process.pid
        self.log(f"tritonserver pid {self.server.process.pid}, log {self.server.log_path}")
        deadline = self._started_at + self.config.ready_timeout_sec
        while not self.server.is_ready():
            if self._stop.is_set():
                return False
            code = self.server.process.poll()
            if code is not None:
                return self._failed_start(f"tritonserver exited ({self._exit_text(code)}) before it was ready")
            if time.monotonic() > deadline:
                return self._failed_start(f"tritonserver not ready after {self.config.ready_timeout_sec:g} s")
            self._stop.wait(0.2)
        self.server.release_orphaned_shm()  # notes the new stubs' regions
        self._close_health()  # its connection and what it learnt were the previous server's
        if self._outage_since is not None:
            outage = time.monotonic() - self._outage_since
            if self.state.crashes and self.state.crashes[-1]["serving_again_after_s"] is None:
                self.state.crashes[-1]["serving_again_after_s"] = round(outage, 2)
            self.log(f"serving again {outage:.1f} s after the failure")
            self._outage_since = None
        if self._restart_heal is not None:
            heal, first_failure = self._restart_heal
            heal["seconds"] = round(time.monotonic() - first_failure, 2)
            self._restart_heal = None
        self._set("serving")
        print(f"READY http://{self.server.http_url} grpc://{self.server.grpc_url}", flush=True)
        return True

    def _failed_start(self, reason: str) -> bool:
        failures = self.server.load_failures()
        detail = "".join(f"\n  model '{m}' failed to load: {why}" for m, why in failures.items())
        errors = self.server.log_errors()
        self.log(f"start failed: {reason}{detail}\n" + self._quote(errors or self.server.log_tail(15).splitlines()))
        self.server.stop(timeout=3)
        self._failed_starts.append(time.monotonic())
        self.state.failed_starts += 1
        self._last_failure = (reason, failures)
        return False

    def _budget_spent(self) -> bool:
        window = self.config.start_limit_interval_sec
        while self._failed_starts and time.monotonic() - self._failed_starts[0] > window:
            self._failed_starts.popleft()
        return len(self._failed_starts) >= self.config.start_limit_burst

    def _give_up(self) -> int:
        reason, failures = self._last_failure
        models = "; ".join(f"model '{m}' failed to load: {why}" for m, why in failures.items())
        message = (f"giving up: tritonserver failed to start {len(self._failed_starts)} times within "
                   f"{self.config.start_limit_interval_sec:g} s (--start-limit-burst {self.config.start_limit_burst}"
                   f" --start-limit-interval-sec {self.config.start_limit_interval_sec:g}); last: {reason}"
                   + (f"; {models}" if models else ""))
        print(f"ERROR: {message}", flush=True)
        self._set("gave_up", message=message)
        return GAVE_UP

    # ------------------------------------------------------------------ watch
    def _watch(self) -> str:
        """Waits while the server serves; returns ``stop``, ``exited`` or ``unhealthy``."""
        interval = self.config.health_interval_sec
        next_probe = time.monotonic() + interval
        failed_rounds, first_failure = 0, 0.0
        while True:
            if self._stop.is_set():
                return "stop"
            if self.server.process.poll() is not None:
                return "exited"
            if self._health is None or time.monotonic() < next_probe:
                self._stop.wait(0.1)
                continue
            round_started = time.monotonic()
            report = self._check()
            if report in ("stop", "exited"):
                return report
            if self._stop.is_set():
                return "stop"
            if self.server.process.poll() is not None:
                return "exited"  # the probe failed because the server died: that is a crash, not a heal
            if report.healthy:
                failed_rounds = 0
                next_probe = time.monotonic() + interval
                continue
            failed_rounds += 1
            if failed_rounds == 1:
                first_failure = round_started
            self.log(f"liveness failed ({failed_rounds} of {self.config.health_failures}): {report.summary()}")
            # A step the check pins the failure on is reloaded at once (the diagnosis already looked twice); a
            # failure it cannot pin (a timeout under load, a hung server) must repeat before the server restarts.
            if report.suspects and self._reload(report, first_failure):
                failed_rounds = 0
                next_probe = time.monotonic() + interval
                continue
            if failed_rounds >= self.config.health_failures:
                return self._restart_for(report, first_failure)
            next_probe = time.monotonic() + min(interval, 1.0)

    def _reload(self, report: LivenessReport, first_failure: float) -> bool:
        """Unloads and loads the suspects; True when every detector answers again."""
        suspects = list(report.suspects)
        if self.server.model_control != "explicit":
            return False
        self._set("healing")
        self.log(f"healing: reloading {', '.join(suspects)}")
        try:
            for model in suspects:
                self.server.unload_model(model)
                self.server.load_model(model)
        except ModelControlError as e:
            self.log(f"reload failed: {e}")
            return False
        after = self._check()
        if isinstance(after, str):
            return False  # the server died or a stop was asked for: the caller's loop sees which
        if not after.healthy:
            self.log(f"still failing after the reload: {after.summary()}")
            return False
        seconds = time.monotonic() - first_failure
        self._lingering += len(suspects)
        removed = self.server.release_orphaned_shm()
        self._record_heal(Heal(_now(), suspects, _cause(report), "reload", round(seconds, 2)))
        self.log(f"healed: {', '.join(suspects)} reloaded, answering again {seconds:.1f} s after the first failed "
                 "check" + (f"; freed the shared memory of {len(removed)} dead stubs" if removed else ""))
        self._set("serving")
        return True

    def _restart_for(self, report: LivenessReport, first_failure: float) -> str:
        self.log(f"restarting tritonserver: {self.config.health_failures} liveness checks failed in a row")
        self._record_heal(Heal(_now(), list(report.suspects), _cause(report), "restart"))
        self._restart_heal = (self.state.heal_log[-1], first_failure)
        return "unhealthy"

    # ------------------------------------------------------------------ restart
    def _restart_wanted(self, code: int) -> bool:
        policy = self.config.restart
        return policy is RestartPolicy.ALWAYS or (policy is RestartPolicy.ON_FAILURE and code != 0)

    def _pause(self) -> bool:
        """Waits the backoff before the next start; False if a stop was requested meanwhile."""
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > self.config.start_limit_interval_sec:
            self._restarts.popleft()
        delay = min(self.config.restart_sec * 2 ** len(self._restarts), self.config.restart_max_sec)
        self._restarts.append(now)
        self.state.restarts += 1
        self._set("restarting")
        self.log(f"restart {self.state.restarts} in {delay:.1f} s")
        return not self._stop.wait(delay)

    def _record_crash(self, code: int) -> None:
        uptime = time.monotonic() - self._started_at
        self._outage_since = time.monotonic()
        crash = Crash(_now(), code if code >= 0 else None, _signal_name(code), round(uptime, 1))
        self.state.crashes = [*self.state.crashes, asdict(crash)][-_HISTORY:]
        lines = self.server.log_tail(80).splitlines()
        frames = [line for line in lines if _STACK_FRAME.match(line)]
        said = [line for line in lines if not _STACK_FRAME.match(line)][-12:]
        self.log(f"tritonserver exited unexpectedly ({self._exit_text(code)}) after {uptime:.1f} s; the end of its "
                 "log" + (f" ({len(frames)} stack frames left out)" if frames else "") + ":\n" + self._quote(said))

    def _record_heal(self, heal: Heal) -> None:
        self.state.heals += 1
        self.state.heal_log = [*self.state.heal_log, asdict(heal)][-_HISTORY:]
        self._write_state()

    def _finish(self) -> int:
        self._close_health()
        lingering = self._lingering

        def only_lingering_left() -> bool:
            waits = self.server.shutdown_waits_for()
            return waits is not None and waits[0] <= lingering and waits[1] == 0

        process = self.server.process
        running = process is not None and process.poll() is None
        code = self.server.stop(timeout=self.config.stop_timeout_sec, settled=only_lingering_left if lingering else None)
        if not running:
            code = 0  # stopped between two runs (a failed start, a backoff): nothing was serving to end badly
        if lingering and code == 0:
            self.log(f"stopped; {lingering} model instances whose stubs died never finish unloading in Triton 2.51 "
                     "(a request that failed on a dead stub keeps them live), so the server was ended once they were "
                     "all it waited for")
        self._set("stopped")
        return 128 - code if code is not None and code < 0 else (code or 0)

    # ------------------------------------------------------------------ state
    @staticmethod
    def _exit_text(code: int) -> str:
        return f"signal {-code} {_signal_name(code)}" if code < 0 else f"exit status {code}"

    @staticmethod
    def _quote(lines: list[str]) -> str:
        return "\n".join(f"  | {line}" for line in lines) if lines else "  (the server log is empty)"

    def _set(self, status: str, *, message: str | None = None) -> None:
        self.state.status, self.state.since = status, _now()
        if message is not None:
            self.state.message = message
        self._write_state()

    def _write_state(self) -> None:
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(asdict(self.state), indent=2) + "\n", encoding="utf-8")
        os.replace(partial, self.state_path)  # a reader never sees half a file


def read_state(path: Path) -> dict[str, Any]:
    """The supervisor's state file as a dict (empty when there is none)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def describe(state: dict[str, Any]) -> list[str]:
    """Lines for ``triton_startup_script.sh status``: status, restarts with the last crash, heals with the last."""
    if not state:
        return ["supervisor: no state file"]
    lines = [f"supervisor: {state['status']} since {state['since']} (pid {state['supervisor_pid']}, "
             f"tritonserver pid {state.get('server_pid')})"]
    crashes = state.get("crashes") or []
    last = ""
    if crashes:
        c = crashes[-1]
        exit_text = c["signal"] or f"exit status {c['exit_code']}"
        again = f", serving again after {c['serving_again_after_s']:.1f} s" if c.get("serving_again_after_s") else ""
        last = f" (last: {exit_text} at {c['at']} after {c['uptime_s']:.0f} s up{again})"
    lines.append(f"restarts: {state['restarts']}{last}; failed starts: {state['failed_starts']}")
    heals = state.get("heal_log") or []
    last = ""
    if heals:
        h = heals[-1]
        took = f" in {h['seconds']:.1f} s" if h.get("seconds") is not None else ""
        last = f" (last: {h['action']} of {', '.join(h['models']) or 'the server'}{took} at {h['at']}: {h['cause'][:160]})"
    lines.append(f"heals: {state['heals']}{last}")
    if state.get("message"):
        lines.append(f"message: {state['message']}")
    return lines


if __name__ == "__main__":  # python -m serving.supervisor STATE_FILE: what `status` prints
    if len(sys.argv) != 2:
        print("usage: python -m serving.supervisor STATE_FILE", file=sys.stderr)
        sys.exit(2)
    print("\n".join(describe(read_state(Path(sys.argv[1])))))
