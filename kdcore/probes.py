"""Process and memory probes shared by the scoring client and the benchmarks (Linux ``/proc`` and Triton's metrics).

Standard library only: reading a process tree's resident memory and Triton's memory gauges is measurement, and
every part that reports memory (``client.py score --server-pid``, ``kd-bench``) reads it the same way.
"""

from __future__ import annotations

import os
import resource
import sys
import urllib.request
from pathlib import Path
from typing import Any


def client_memory() -> dict[str, int]:
    """This process's peak resident memory in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_bytes": int(peak if sys.platform == "darwin" else peak * 1024)}


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (the server and its Python-backend stubs), Linux only; [] if it is gone."""
    found, todo, seen = [], [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
        found.append(p)
    return found


def _tree_rss(pid: int) -> int | None:
    """Resident memory of a process and its descendants (the server and its Python-backend stubs), Linux only."""
    total, pids = 0, process_tree(pid)
    if not pids:
        return None
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            continue  # exited since the walk
    return total


def server_memory(metrics_url: str | None, pid: int | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """Server memory: Triton's host-memory gauges and, for a local pid, the resident memory of its process tree.

    ``nv_cpu_memory_used_bytes`` is the whole machine's RAM in use as Triton polls it, not the server's own; Triton
    leaves it at 0 until its first poll and where it cannot read /proc, so a 0 is reported as missing, not as a size.
    The process-tree figure is the one that measures the server (and its Python backend stubs).
    """
    out: dict[str, Any] = {}
    if metrics_url:
        url = metrics_url if "://" in metrics_url else f"http://{metrics_url}"
        try:
            with urllib.request.urlopen(url.rstrip("/") + ("" if url.endswith("/metrics") else "/metrics"),
                                        timeout=timeout) as response:
                text = response.read().decode()
            for line in text.splitlines():
                name = line.split("{")[0].split(" ")[0]
                if name in ("nv_cpu_memory_used_bytes", "nv_gpu_memory_used_bytes"):
                    out[name] = out.get(name, 0) + int(float(line.rsplit(" ", 1)[1]))
            for name in [k for k, v in out.items() if v == 0]:
                del out[name]
                out.setdefault("not_reported", []).append(name)
        except (OSError, ValueError) as e:
            out["metrics_error"] = str(e)
    if pid:
        out["process_tree_rss_bytes"] = _tree_rss(pid)
    return out


def process_tree_rss(pid: int) -> int | None:
    """Resident bytes of a process and its descendants (server + backend stubs); Linux only."""
    return server_memory(None, pid).get("process_tree_rss_bytes")


def tree_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) each process of a server tree has used so far, by role: ``tritonserver`` or, for
    a Python-backend stub, the model instance it runs (``<model>_<group>_<instance>``, the stub's second-last
    argument). Differences of two calls say where the CPU went in between. Linux only."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for p in process_tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            argv = Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # exited since the walk
        fields = stat.rsplit(")", 1)[1].split()
        argv = [a for a in argv if a]
        is_stub = len(argv) > 2 and argv[0].endswith("triton_python_backend_stub")
        role = argv[-2] if is_stub else (Path(argv[0]).name if argv else str(p))
        out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def own_cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used so far."""
    return sum(own_cpu_times())


def own_cpu_times() -> tuple[float, float]:
    """CPU seconds this process has used so far, in user space and in the kernel (system calls: for a client,
    mostly the socket's copies)."""
    t = os.times()
    return t.user, t.system
