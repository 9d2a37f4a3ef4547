"""Capacity from ``kd-bench``'s figures: images/s per replica, replicas for a line rate, and the pod's resources.

``kd-bench`` (bench/serving.py) writes JSON with, per detector, the served score path's throughput and latency at
several operating points (read by :mod:`kdcore.bench_figures`: single-image requests at concurrency 1, 2, 4 and 8,
and the client's own way of working, ``batch`` images per request at ``batched_concurrency`` in flight), over gRPC
and HTTP, on a machine of ``machine.cpus`` cores, with the server's resident memory (``server_rss_bytes``). One
replica is one such server, so the best operating point whose p99 fits the latency budget is what one replica
serves. Points through system shared memory are left out (they need the client on the server's host, which a pod
behind a Service is not), and so are runs in which a request failed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from deploy.config import (
    DEFAULT_CPU_LIMIT,
    DEFAULT_CPU_REQUEST,
    DEFAULT_MEMORY_LIMIT,
    DEFAULT_MEMORY_REQUEST,
    HOT_MODEL_QUEUE_US,
    DeployConfig,
)
from deploy.repository import DeployError, RepositoryInfo
from kdcore.bench_figures import BenchFigures, BenchFormatError, OperatingPoint
from kdcore.bench_figures import load_bench as read_bench

_MI = 2**20
#: Memory request over the measured resident memory, and limit over request.
MEMORY_HEADROOM, MEMORY_LIMIT_FACTOR = 1.25, 1.5
#: Spare replicas on top of those the line rate needs: one pod may be down (drained node, rollout, a liveness
#: restart) while the line keeps its rate; the PodDisruptionBudget lets one go at a time.
SPARE_REPLICAS = 1


def load_bench(path: Path | str) -> BenchFigures:
    """Read kd-bench's JSON (:func:`kdcore.bench_figures.load_bench`).

    Raises:
        DeployError: Missing, not JSON, or without the figures kd-bench writes.
    """
    try:
        return read_bench(path)
    except BenchFormatError as e:
        raise DeployError(str(e)) from e


def best_point(points: list[OperatingPoint], protocol: str, latency_budget_ms: float | None) -> OperatingPoint:
    """The highest-throughput point over ``protocol`` whose p99 is within the budget (any, without one).

    Raises:
        DeployError: No point over that protocol, or none within the budget (the message gives the fastest p99).
    """
    over = [p for p in points if p.protocol == protocol and p.clean]
    if not over:
        raise DeployError(f"kd-bench measured no {protocol} operating point")
    within = [p for p in over if latency_budget_ms is None or p.p99_ms <= latency_budget_ms]
    if not within:
        fastest = min(over, key=lambda p: p.p99_ms)
        raise DeployError(f"no operating point of {fastest.detector} keeps p99 within {latency_budget_ms:g} ms; the "
                          f"fastest is {fastest.describe()}: raise the budget, use GPU nodes or a faster detector")
    return max(within, key=lambda p: p.images_per_second)


def replicas_needed(line_rate: float, images_per_replica: float) -> int:
    """Replicas that together serve ``line_rate`` images/s, each at ``images_per_replica`` (no spare)."""
    return max(1, math.ceil(line_rate / images_per_replica - 1e-9))


def default_queue_target_us(model_count: int) -> int:
    """The HPA's default target of ``avg_time_queue_us``.

    The adapter's rule averages the queue time per request over every model series of a pod, idle ones at 0, so a
    pod whose line calls one model reads that model's queue time divided by the model count. Dividing
    :data:`~deploy.config.HOT_MODEL_QUEUE_US` by the count makes the target mean about that much queueing on the
    busy model, whatever the repository holds.
    """
    return max(1, round(HOT_MODEL_QUEUE_US / max(1, model_count)))


def _mebibytes(n_bytes: float) -> str:
    """Bytes rounded up to a multiple of 256 MiB, as a quantity."""
    return f"{math.ceil(n_bytes / (256 * _MI)) * 256}Mi"


@dataclass(frozen=True)
class Resolved:
    """The concrete values of the options that default to ``None``, and how they were sized."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    min_replicas: int
    max_replicas: int
    queue_target_us: float
    point: OperatingPoint | None = None
    images_per_replica: float | None = None
    replicas_needed: int | None = None
    notes: list[str] = field(default_factory=list)


def resolve(config: DeployConfig, repository: RepositoryInfo) -> Resolved:
    """Fill in the resources, replica counts and queue target: options first, then --bench, then the defaults.

    Raises:
        DeployError: The benchmark figures do not cover the repository's detectors, no point fits the latency
            budget, or the replicas the line rate needs exceed --max-replicas.
    """
    cap, res, auto = config.capacity, config.resources, config.autoscaling
    notes: list[str] = []
    bench = load_bench(cap.bench) if cap.bench else None
    point = None
    if bench is not None:
        point = _sizing_point(bench, repository, cap.bench_model, cap.protocol, cap.latency_budget_ms)
        notes.append(f"one replica ({bench.cpus or '?'} cores, as kd-bench measured): {point.describe()}")
    images_per_replica = cap.images_per_replica or (point.images_per_second if point else None)
    if cap.images_per_replica and point:
        notes.append(f"--images-per-replica {cap.images_per_replica:g} replaces kd-bench's figure")
    needed = replicas_needed(cap.line_rate, images_per_replica) if cap.line_rate and images_per_replica else None
    if needed is not None:
        notes.append(f"line rate {cap.line_rate:g} images/s needs {needed} replica(s) at {images_per_replica:.0f} "
                     f"images/s each; +{SPARE_REPLICAS} spare so one pod may be down")

    cpus = str(bench.cpus) if bench and bench.cpus else None
    rss = bench.server_rss_bytes if bench and bench.server_rss_bytes else None
    cpu_request = res.cpu_request or cpus or DEFAULT_CPU_REQUEST
    cpu_limit = res.cpu_limit or (cpu_request if cpus or res.cpu_request else DEFAULT_CPU_LIMIT)
    memory_request = res.memory_request or (_mebibytes(rss * MEMORY_HEADROOM) if rss else DEFAULT_MEMORY_REQUEST)
    memory_limit = res.memory_limit or (_mebibytes(quantity_value(memory_request) * MEMORY_LIMIT_FACTOR)
                                        if rss or res.memory_request else DEFAULT_MEMORY_LIMIT)
    for what, request, limit in (("CPU", cpu_request, cpu_limit), ("memory", memory_request, memory_limit)):
        if quantity_value(limit) < quantity_value(request):
            raise DeployError(f"{what} limit {limit} is below the request {request}")

    min_replicas = auto.min_replicas or (needed + SPARE_REPLICAS if needed else 2)
    max_replicas = auto.max_replicas or max(4, 2 * min_replicas)
    if needed is not None and max_replicas < needed:
        raise DeployError(f"--max-replicas {max_replicas} cannot carry {cap.line_rate:g} images/s: it needs {needed}")
    if min_replicas > max_replicas:
        raise DeployError(f"minimum replicas {min_replicas} exceed --max-replicas {max_replicas}")
    queue_target = auto.queue_target_us or default_queue_target_us(len(repository.models))
    return Resolved(cpu_request=cpu_request, cpu_limit=cpu_limit, memory_request=memory_request,
                    memory_limit=memory_limit, min_replicas=min_replicas, max_replicas=max_replicas,
                    queue_target_us=queue_target, point=point, images_per_replica=images_per_replica,
                    replicas_needed=needed, notes=notes)


def _sizing_point(bench: BenchFigures, repository: RepositoryInfo, only: str | None, protocol: str,
                  budget: float | None) -> OperatingPoint:
    """The operating point that sizes the deployment: ``only``'s, else the slowest measured detector's best."""
    measured = [d for d in repository.detectors if d in bench.points]
    if only is not None:
        if only not in repository.detectors:
            raise DeployError(f"--bench-model {only} is not a detector of {repository.path} "
                              f"({', '.join(repository.detectors)})")
        measured = [only] if only in bench.points else []
    if not measured:
        raise DeployError(f"{bench.path} has no figures for {only or ', '.join(repository.detectors)} (it measured "
                          f"{', '.join(sorted(bench.points)) or 'nothing'}): run kd-bench on this repository")
    best = [best_point(bench.points[d], protocol, budget) for d in measured]
    return min(best, key=lambda p: p.images_per_second)


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "m": 1e-3}


def quantity_value(text: str) -> float:
    """A Kubernetes quantity as a number (``500m`` -> 0.5, ``4Gi`` -> 4294967296)."""
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]
