"""``kd-server`` as a child process: what the startup script runs, for tests and fault benchmarks.

:class:`SupervisedServer` starts ``python -m serving.cli`` on free loopback ports with a state file, waits for
its ``READY`` line, reads the supervisor's state and finds the processes faults are injected into (the
tritonserver it runs, the python-backend stub of a model).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from serving.embedded import Endpoints, free_port, kill_group, stub_pid
from serving.supervisor import read_state


class SupervisedServer(Endpoints):
    """``kd-server`` on ``repository``, in a process of its own, on free loopback ports.

    Args:
        repository: The model repository.
        workdir: Folder for the server log, the supervisor's output and its state file.
        args: More ``kd-server`` options (e.g. ``["--health-interval", "1"]``).
    """

    def __init__(self, repository: Path, workdir: Path, args: Sequence[str] = ()) -> None:
        self.repository, self.workdir = Path(repository), Path(workdir)
        self.host = self.http_host = "127.0.0.1"  # kd-server's defaults
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.state_path = self.workdir / "supervisor.json"
        self.log_path = self.workdir / "server.log"
        self.output_path = self.workdir / "kd-server.out"
        self.args = list(args)
        self.process: subprocess.Popen | None = None

    def start(self) -> SupervisedServer:
        """Starts kd-server (without waiting)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "serving.cli", "--model-repository", str(self.repository),
                   "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                   "--metrics-port", str(self.metrics_port), "--log-file", str(self.log_path),
                   "--state-file", str(self.state_path), *self.args]
        with open(self.output_path, "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=Path(__file__).resolve().parents[1], start_new_session=True)
        return self

    def wait_serving(self, timeout: float = 120, *, restarts: int | None = None) -> dict[str, Any]:
        """Waits until the supervisor says ``serving`` (after at least ``restarts`` restarts); returns its state.

        Raises:
            RuntimeError: If kd-server exits or does not serve in time (its output is in the message).
        """
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if state.get("status") == "serving" and (restarts is None or state.get("restarts", 0) >= restarts):
                return state
            if self.process.poll() is not None:
                raise RuntimeError(f"kd-server exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"kd-server not serving after {timeout:g} s (state {state}):\n{self.output()}")
            time.sleep(0.1)

    def state(self) -> dict[str, Any]:
        """The supervisor's state file (empty before it is written)."""
        return read_state(self.state_path)

    def output(self) -> str:
        """What kd-server printed (its progress lines and the server log are separate files)."""
        try:
            return self.output_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def server_pid(self) -> int | None:
        """The pid of the tritonserver it runs now."""
        return self.state().get("server_pid")

    def stub_pid(self, model: str) -> int:
        """The pid of the python-backend stub that runs ``model`` now.

        Raises:
            LookupError: If no live stub runs it.
        """
        return stub_pid(self.server_pid(), self.repository / model)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM to kd-server (it stops tritonserver); SIGKILL to its group if it takes longer than ``timeout``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_group(self.process.pid)
                self.process.wait()
        pid = self.server_pid()
        if pid:
            kill_group(pid)  # a server the supervisor lost track of must not outlive the test
        return self.process.returncode

    def __enter__(self) -> SupervisedServer:
        self.start()
        try:
            self.wait_serving()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
