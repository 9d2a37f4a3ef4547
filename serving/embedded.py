"""Run the real Triton Inference Server (2.51, the one in the NGC 24.10 image) from the nvidia-pytriton wheel.

The wheel ships the ``tritonserver`` binary, the python backend and its stubs, but neither the ``onnxruntime``
nor the ``pytorch`` backend. :func:`prepare_backend_dir` builds a backend directory of our own with the python
backend plus Python-based stand-ins for those two (``serving/backends/*/model.py``), so a model repository made
for ``nvcr.io/nvidia/tritonserver:24.10-py3`` runs unchanged here, CPU-only.

Example:
    >>> with TritonServer(Path("model_repository"), http_port=free_port()) as server:
    ...     print(server.http_url)
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from serving.flags import SHM_DEFAULT_BYTES, command

__all__ = [
    "Endpoints",
    "SHM_DEFAULT_BYTES",
    "ModelControlError",
    "RESTRICTED_APIS",
    "ServerStartError",
    "TritonServer",
    "free_port",
    "kill_group",
    "prepare_backend_dir",
    "server_environment",
    "stub_pid",
    "tritonserver_root",
]

#: API groups behind the admin key by default: changing what is served, or reading its statistics and logs.
#: Inference, health, metadata and model config (clients read max_batch_size from it) stay open.
RESTRICTED_APIS = ("model-repository", "logging", "trace", "statistics")

_STANDIN_BACKENDS = ("onnxruntime", "pytorch")
# Error-level log lines that a CPU-only machine always prints; they are not why a start failed.
_HARMLESS_ERRORS = ("CudaDriverHelper", "CUDA driver", "NVML", "DCGM")
_SOURCE_BACKENDS = Path(__file__).resolve().parent / "backends"
# Triton's log line for a model that did not load: `... "failed to load 'NAME' version 1: Internal: WHY"`.
_LOAD_FAILURE = re.compile(r"failed to load '([^']+)' version \S+: (.*)")
_SHUTDOWN_WAIT = re.compile(r"Found (\d+) live models and (\d+) in-flight non-inference requests")


class ServerStartError(RuntimeError):
    """The server exited, or did not become ready in time; the message carries the tail of its log."""


class ModelControlError(RuntimeError):
    """The repository API refused a load or unload, or the model failed to load."""


def _site_packages() -> Path:
    spec = importlib.util.find_spec("pytriton")  # Locating it does not import it (and its heavy imports).
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError("nvidia-pytriton is not installed in this interpreter's environment")
    return Path(next(iter(spec.submodule_search_locations))).parent


def tritonserver_root() -> Path:
    """Returns the wheel's ``pytriton/tritonserver`` folder (``bin/``, ``backends/``, ``python_backend_stubs/``)."""
    return _site_packages() / "pytriton" / "tritonserver"


def _sync_file(source: Path, target: Path) -> None:
    """Copies ``source`` to ``target`` unless an identical copy (size and mtime) is already there."""
    if target.exists():
        src, dst = source.stat(), target.stat()
        if src.st_size == dst.st_size and src.st_mtime_ns == dst.st_mtime_ns:
            return
    target.parent.mkdir(parents=True, exist_ok=True)
    # Copy then rename, so a server starting from the same folder never sees a half-written file.
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.copy2(source, partial)
    os.replace(partial, target)


def prepare_backend_dir(dest: Path) -> Path:
    """Builds (or refreshes) a Triton backend directory: the python backend and the stand-in backends.

    ``dest/python`` gets the wheel's python backend and the stub for this interpreter's Python version;
    ``dest/onnxruntime`` and ``dest/pytorch`` get our ``model.py`` stand-ins. Files already up to date are
    left alone, so calling it again is cheap. The wheel's own folders are never modified.

    Args:
        dest: The backend directory to build; created if missing.

    Returns:
        ``dest``, for ``--backend-directory``.

    Raises:
        ServerStartError: If the wheel has no stub for this Python version.
    """
    dest = Path(dest)
    root = tritonserver_root()
    for source in sorted((root / "backends" / "python").iterdir()):
        if source.is_file():
            _sync_file(source, dest / "python" / source.name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerStartError(f"nvidia-pytriton has no python backend stub for Python {version}: {stub}")
    _sync_file(stub, dest / "python" / stub.name)
    for name in _STANDIN_BACKENDS:
        _sync_file(_SOURCE_BACKENDS / name / "model.py", dest / name / "model.py")
        # A backend folder is all Triton loads, so the shared batching code travels into each one.
        _sync_file(_SOURCE_BACKENDS / "batching.py", dest / name / "batching.py")
    return dest


def server_environment() -> dict[str, str]:
    """Returns the environment for ``tritonserver`` and its python-backend stubs.

    The stub embeds libpython: the venv interpreter's ``LIBDIR`` first on ``LD_LIBRARY_PATH`` and the venv's
    ``bin/`` first on ``PATH`` make ``model.py`` run on this venv's Python and see its packages (otherwise it
    silently picks the system's). ``nvidia_pytriton.libs`` holds the server's own shared libraries.
    """
    env = dict(os.environ)
    libdirs = [sysconfig.get_config_var("LIBDIR"), str(_site_packages() / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([d for d in libdirs if d] + _split(env.get("LD_LIBRARY_PATH")))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent)] + _split(env.get("PATH")))
    env.pop("PYTHONHOME", None)  # Would point the embedded interpreter somewhere else than the venv.
    return env


def _split(value: str | None) -> list[str]:
    return [part for part in (value or "").split(os.pathsep) if part]


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that is free now (for tests; another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Endpoints:
    """The client-side addresses of a server whose endpoints bind to ``host`` (gRPC) and ``http_host`` (HTTP)."""

    host: str
    http_host: str
    http_port: int
    grpc_port: int

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint, as ``tritonclient.http`` expects it."""
        return f"{_reachable(self.http_host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint, as ``tritonclient.grpc`` expects it."""
        return f"{_reachable(self.host)}:{self.grpc_port}"

    def url(self, protocol: str) -> str:
        """``host:port`` of the ``"grpc"`` or ``"http"`` endpoint."""
        return self.grpc_url if protocol == "grpc" else self.http_url


class TritonServer(Endpoints):
    """The wheel's ``tritonserver`` serving one model repository, as a child process in its own session.

    Args:
        model_repository: The model repository (``<model>/config.pbtxt``, ``<model>/<version>/...``).
        http_port: HTTP/REST port.
        grpc_port: gRPC port.
        metrics_port: Prometheus metrics port.
        host: Address the gRPC and metrics endpoints bind to (and HTTP, unless ``http_host`` is given).
        http_host: Address the HTTP endpoint binds to; ``host`` when None. Triton 2.51's HTTP frontend aborts on
            a JSON request that declares a huge shape (the gRPC frontend refuses it), so a caller exposing the
            server keeps HTTP on loopback.
        workdir: Folder for the backend directory (and the log by default); a temporary one, removed by
            :meth:`stop`, when None.
        log_path: File that receives the server's stdout and stderr (appended); ``<workdir>/server.log`` when
            None.
        extra_args: More ``tritonserver`` flags, appended last (so they win over the defaults).
        model_control: ``"none"`` (the repository is fixed at start) or ``"explicit"`` (models can be unloaded and
            loaded through the repository API, which then needs ``admin_key``).
        admin_key: Key of the restricted APIs, sent in the ``admin-key`` header.
        restricted_apis: The API groups that need the key when one is given.
        grpc_tls: ``(certificate, private key)`` PEM files: serve gRPC over TLS.
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        host: str = "127.0.0.1",
        http_host: str | None = None,
        workdir: Path | None = None,
        log_path: Path | None = None,
        extra_args: Sequence[str] = (),
        model_control: str = "none",
        admin_key: str | None = None,
        restricted_apis: Sequence[str] = RESTRICTED_APIS,
        grpc_tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.host = host
        self.http_host = http_host or host
        self._own_workdir = workdir is None
        # Absolute: the server runs with the workdir as its cwd, so a relative backend path would not resolve.
        self.workdir = Path(tempfile.mkdtemp(prefix="kd-triton-")) if workdir is None else Path(workdir).resolve()
        self.log_path = Path(log_path).resolve() if log_path is not None else self.workdir / "server.log"
        self.extra_args = list(extra_args)
        if model_control not in ("none", "explicit"):
            raise ValueError(f"model_control must be 'none' or 'explicit', got {model_control!r}")
        if model_control == "explicit" and not admin_key:
            raise ValueError("explicit model control exposes load/unload: give an admin_key to restrict those APIs")
        self.model_control, self.admin_key = model_control, admin_key
        self.restricted_apis = tuple(restricted_apis)
        if model_control == "explicit" and "model-repository" not in self.restricted_apis:
            raise ValueError("explicit model control needs the model-repository API among the restricted ones")
        self.grpc_tls = tuple(Path(p).resolve() for p in grpc_tls) if grpc_tls else None
        self.process: subprocess.Popen | None = None
        self._regions: set[str] = set()  # shared-memory regions seen on live stubs' command lines
        self._log_offset = 0  # Where this run's output starts in an appended log file.

    def command(self) -> list[str]:
        """Returns the ``tritonserver`` command line (the backend directory must exist to run it)."""
        return command(str(tritonserver_root() / "bin" / "tritonserver"), [
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.workdir / 'backends'}",
            f"--http-address={self.http_host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            f"--model-control-mode={self.model_control}",
            *(["--load-model=*"] if self.model_control == "explicit" else []),
            *self._hardening(),
            *self.extra_args,
        ])

    def _hardening(self) -> list[str]:
        """Restricted APIs behind the admin key, and TLS on gRPC (Triton's deployment guide)."""
        args = []
        if self.admin_key and self.restricted_apis:
            apis = ",".join(self.restricted_apis)
            args += [f"--http-restricted-api={apis}:{ADMIN_HEADER}={self.admin_key}",
                     f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={self.admin_key}"]
        if self.grpc_tls:
            cert, key = self.grpc_tls
            args += ["--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"]
        return args

    def start(self) -> TritonServer:
        """Starts the server in the background (without waiting for it to be ready).

        Returns:
            self.

        Raises:
            ServerStartError: If the model repository is missing or the server is already running.
        """
        if self.process is not None and self.process.poll() is None:
            raise ServerStartError(f"tritonserver is already running (pid {self.process.pid})")
        if not self.model_repository.is_dir():
            raise ServerStartError(f"model repository not found: {self.model_repository}")
        prepare_backend_dir(self.workdir / "backends")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            # A session of its own: a Ctrl-C in our terminal does not reach it, and stop() can end its stubs.
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_environment(),
                cwd=self.workdir,
                start_new_session=True,
            )
        return self

    def is_ready(self) -> bool:
        """Returns whether ``/v2/health/ready`` answers 200 (all models loaded, with ``--strict-readiness``)."""
        try:
            url = f"http://{self.http_url}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (fixed http URL)
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def load_model(self, name: str, timeout: float = 120) -> None:
        """Loads (or, after :meth:`unload_model`, reloads) a model through the repository API.

        Needs ``model_control="explicit"``; the request carries the admin key and goes to the HTTP endpoint.

        Raises:
            ModelControlError: If the server refuses or the model fails to load (Triton's message included).
        """
        self._control(f"/v2/repository/models/{urllib.parse.quote(name, safe='')}/load", timeout)

    def unload_model(self, name: str, timeout: float = 60) -> None:
        """Unloads a model (its python-backend stubs end; ensembles that use it become unavailable).

        Raises:
            ModelControlError: If the server refuses.
        """
        self._control(f"/v2/repository/models/{urllib.parse.quote(name, safe='')}/unload", timeout)

    def _control(self, path: str, timeout: float) -> None:
        if self.model_control != "explicit":
            raise ModelControlError(f"{path}: the server runs with --model-control-mode={self.model_control}")
        request = urllib.request.Request(f"http://{self.http_url}{path}", data=b"{}", method="POST",
                                         headers={ADMIN_HEADER: self.admin_key or ""})
        try:
            with urllib.request.urlopen(request, timeout=timeout):  # noqa: S310 (fixed http URL)
                return
        except urllib.error.HTTPError as e:
            raise ModelControlError(f"{path}: HTTP {e.code}: {e.read().decode(errors='replace')}") from e
        except (urllib.error.URLError, OSError) as e:
            raise ModelControlError(f"{path}: {e}") from e

    def wait_ready(self, timeout: float = 120) -> None:
        """Blocks until the server is ready.

        Args:
            timeout: Seconds to wait.

        Raises:
            ServerStartError: If the server exits first (e.g. a model failed to load) or is not ready in time;
                the message ends with the tail of the server log.
        """
        if self.process is None:
            raise ServerStartError("tritonserver was not started")
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(self._failure(f"tritonserver exited with code {code} before it was ready"))
            if self.is_ready():
                return
            if time.monotonic() > deadline:
                raise ServerStartError(self._failure(f"tritonserver not ready after {timeout:g} s"))
            time.sleep(0.2)

    def log_errors(self, n: int = 10) -> list[str]:
        """The last ``n`` error lines of this run's log, without those every CPU-only start prints."""
        return _error_lines(self.log_tail(n=10_000).splitlines(), n)

    def _failure(self, summary: str) -> str:
        """``summary``, the log's error lines (the cause, often above the tail) and the log tail."""
        lines = self.log_tail(n=10_000).splitlines()
        errors = _error_lines(lines, 10)
        parts = [summary + "."]
        if errors:
            parts.append("Errors in the log:\n" + "\n".join(errors))
        parts.append(f"Log tail ({self.log_path}):\n" + "\n".join(lines[-40:]))
        return "\n".join(parts)

    def stop(self, timeout: float = 30, *, settled: Callable[[], bool] | None = None) -> int | None:
        """Stops the server: SIGTERM, wait up to ``timeout`` s, then SIGKILL to its whole process group.

        Args:
            timeout: Seconds to wait for a clean shutdown.
            settled: Polled while waiting; when it returns True, whatever the server still waits for will never
                finish (see :meth:`shutdown_waits_for`), so the group is killed at once and the stop counts as
                clean (exit code 0).

        Returns:
            The server's exit code (negative for a signal), or None if it was never started.
        """
        process, code = self.process, None
        if process is not None:
            regions = self._regions | _shm_regions(process.pid)
            killed_settled = False
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while process.poll() is None and time.monotonic() < deadline:
                    if settled is not None and settled():
                        killed_settled = True
                        break
                    time.sleep(0.1)
                if process.poll() is None:
                    kill_group(process.pid)
                    process.wait()
            # Python-backend stubs outlive a server that crashed; its group is ours alone, so end what is left.
            regions |= _shm_regions(process.pid)
            kill_group(process.pid)
            _unlink_shm(regions)
            self._regions = set()
            code = 0 if killed_settled else process.returncode
        if self._own_workdir:
            # The log would go with the workdir; a caller who wants it passes log_path or workdir.
            shutil.rmtree(self.workdir, ignore_errors=True)
        return code

    def release_orphaned_shm(self) -> list[str]:
        """Unlinks the shared memory of stubs that died since the last call, and notes the live stubs' regions.

        The python backend does not unlink a dead stub's region when its model is reloaded; each is 16 MiB of
        /dev/shm. Only regions once seen on a live stub's command line and no longer on any are removed.

        Returns:
            The names removed.
        """
        if self.process is None:
            return []
        live = _shm_regions(self.process.pid)
        orphans = sorted(self._regions - live)
        _unlink_shm(set(orphans))
        self._regions = live
        return orphans

    def shutdown_waits_for(self) -> tuple[int, int] | None:
        """While stopping: the live models and in-flight requests Triton last said it waits for, or None.

        Triton logs ``Found N live models and M in-flight non-inference requests`` once a second until both
        are 0 or its exit timeout expires.
        """
        found = _SHUTDOWN_WAIT.findall(self.log_tail(n=200))
        return (int(found[-1][0]), int(found[-1][1])) if found else None

    def load_failures(self) -> dict[str, str]:
        """Models this run of the server failed to load, with Triton's reason, read from its log."""
        return {m.group(1): m.group(2).strip().rstrip('"') for m in _LOAD_FAILURE.finditer(self.log_tail(n=10_000))}

    def log_tail(self, n: int = 40) -> str:
        """Returns the last ``n`` lines that this run of the server wrote to its log."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                lines = log.read().decode("utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


#: Header that carries the admin key of the restricted APIs (HTTP header; gRPC metadata key).
ADMIN_HEADER = "admin-key"


def _error_lines(lines: list[str], n: int) -> list[str]:
    return [line for line in lines if line.startswith("E") and not any(h in line for h in _HARMLESS_ERRORS)][-n:]


def kill_group(pgid: int) -> None:
    """SIGKILL to every process of group ``pgid`` (a server and its stubs); nothing if it is gone."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# The python backend names each stub's shared-memory region on the stub's command line; a server that is killed
# or aborts never unlinks them, and each is shm-default-byte-size (16 MiB) of RAM in /dev/shm.
_SHM_REGION = re.compile(r"^triton_\w+_backend_shm_region_[0-9a-f-]+$")


def _group_processes(pgid: int) -> list[tuple[int, list[str]]]:
    """(pid, command line) of the live processes in process group ``pgid``, read from /proc."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.getpgid(int(proc.name)) != pgid:
                continue
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
        found.append((int(proc.name), args))
    return found


def _shm_regions(pgid: int) -> set[str]:
    """Names of the shared-memory regions of the stubs in process group ``pgid``."""
    return {a for _, args in _group_processes(pgid) for a in args if _SHM_REGION.match(a)}


def stub_pid(pgid: int, model_dir: Path) -> int:
    """The pid of the python-backend stub that runs the model in ``model_dir``, in the server's group ``pgid``.

    The stub's command line is ``triton_python_backend_stub <model_dir>/<version>/<file> <shm region> ...``.

    Raises:
        LookupError: If no live stub of that server runs it.
    """
    prefix = f"{Path(model_dir).resolve()}/"
    for pid, args in _group_processes(pgid):
        if len(args) > 1 and args[0].endswith("triton_python_backend_stub") and args[1].startswith(prefix):
            return pid
    raise LookupError(f"no python-backend stub of server {pgid} runs {model_dir}")


def _unlink_shm(names: set[str]) -> None:
    for name in names:
        try:
            os.unlink(Path("/dev/shm") / name)
        except OSError:
            pass  # already removed by the server's own clean shutdown


def _reachable(host: str) -> str:
    """An address to connect to for a server bound to ``host`` (a wildcard bind answers on loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
