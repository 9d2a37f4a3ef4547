"""``kd-bench``'s JSON (bench/serving.py ``--output``, by default runs/bench/serving.json), read once for everyone
who uses its figures: ``kd-deploy`` sizes replicas by it and the console's health view shows it.

Layout: ``machine`` (``cpus``, ``arch``), ``server_rss_bytes``, and ``results``, one per detector, with ``model``,
``score_model`` (the served model that was timed), ``batched_concurrency`` and ``served[protocol][key]`` timings
(``images_per_second``, ``p50_ms``, ``p95_ms``, ``p99_ms``, ``requests``, ``failures``). A key is an operating
point: ``"<c>"`` single-image requests at concurrency ``c``; ``"b<n>"`` ``n`` images per request at
``batched_concurrency`` in flight (the client's way of working). Other keys (``"b8_shm"``: system shared memory, the
client on the server's host; ``"c4_ensemble"``, ``"batched_ensemble"``: another model path) are not points of the
score path over a socket and are left out.

Standard library only, like the rest of ``kdcore``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


class BenchFormatError(ValueError):
    """The file is missing, not JSON, or not what kd-bench writes; the message says which."""


@dataclass(frozen=True)
class OperatingPoint:
    """One measured way of loading one server: ``concurrency`` requests of ``batch`` images in flight."""

    detector: str
    served_model: str
    protocol: str
    concurrency: int
    batch: int
    images_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    failures: int

    @property
    def clean(self) -> bool:
        """Whether every request of the run was answered (a run with failures sizes nothing)."""
        return self.requests > 0 and self.failures == 0

    def describe(self) -> str:
        """One line: what was sent and what came back."""
        how = f"{self.concurrency} in flight" + (f", {self.batch} images per request" if self.batch > 1 else "")
        return (f"{self.images_per_second:.0f} images/s at {how} over {self.protocol} "
                f"(p99 {self.p99_ms:.1f} ms, {self.served_model})")


@dataclass(frozen=True)
class BenchFigures:
    """What one kd-bench JSON says, by detector."""

    path: Path
    cpus: int | None
    arch: str | None
    server_rss_bytes: int | None
    points: dict[str, list[OperatingPoint]]


def _point(result: dict, protocol: str, key: str, timing: dict) -> OperatingPoint | None:
    """The operating point of one results key, or ``None`` for keys that are not the score path over a socket."""
    if key.isdigit():
        concurrency, batch = int(key), 1
    elif match := re.fullmatch(r"b(\d+)", key):
        concurrency, batch = int(result["batched_concurrency"]), int(match.group(1))
    else:
        return None
    return OperatingPoint(detector=result["model"], served_model=result["score_model"], protocol=protocol,
                          concurrency=concurrency, batch=batch, images_per_second=float(timing["images_per_second"]),
                          p50_ms=float(timing["p50_ms"]), p99_ms=float(timing["p99_ms"]),
                          requests=int(timing.get("requests", 0)), failures=int(timing.get("failures", 0)))


def load_bench(path: Path | str) -> BenchFigures:
    """Read kd-bench's JSON.

    Raises:
        BenchFormatError: Missing, not JSON, or without the figures kd-bench writes.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        points: dict[str, list[OperatingPoint]] = {}
        for result in data["results"]:
            points[result["model"]] = [
                point for protocol, runs in result["served"].items() for key, timing in runs.items()
                if (point := _point(result, protocol, key, timing)) is not None
            ]
    except OSError as e:
        raise BenchFormatError(f"cannot read kd-bench figures {path}: {e.strerror}") from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BenchFormatError(f"{path} is not kd-bench's JSON (bench/serving.py --output): {e!r}") from e
    machine = data.get("machine") or {}
    return BenchFigures(path=path, cpus=machine.get("cpus"), arch=machine.get("arch"),
                        server_rss_bytes=data.get("server_rss_bytes"), points=points)
