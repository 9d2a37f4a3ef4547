"""``kd-bench``: how close serving comes to the model's own cost, for every detector in a model repository.

In one run, on the same exported models and the same machine:

* in-process ONNX Runtime (the ``<model>_onnx`` graph) at batch 1, 2, 4 and 8: the limit serving can approach;
* the served score-only path over gRPC and HTTP at concurrency 1, 2, 4 and 8, single-image requests through
  dynamic batching (what a production line asks for: the calibrated network ``<model>_fast``, one ONNX model that
  computes score and decision with no ensemble or Python step; the ``<model>_score`` ensemble in repositories
  exported before it), every reply checked; then the client's own way, ``--batch`` images per request at
  concurrency 4 (``client.py score``'s defaults); for comparison, in the same rounds, the score-only ensemble
  (network, then the Python scorer) single at concurrency 4 and batched; plus one run at concurrency 4 with the
  full map;
* the server's resident memory (server + backend stubs);
* the same batched runs through system shared memory (image models): what the socket's copies cost the client,
  whose CPU per image is split into user space and kernel;
* for image models, where one request's time goes at concurrency 1 (Triton's statistics: queue, input, compute,
  output per composing model), for the full ensemble, the score-only ensemble and the calibrated network;
* with ``--perf-analyzer PATH`` (the binary from the ``tritonclient==2.51.0`` wheel, see README), the same
  concurrency sweep measured by Triton's perf_analyzer as a cross-check.

Each served figure is also given as a ratio of the in-process one at the same effective batch (concurrency c
against ONNX Runtime at batch c; batched requests against ONNX Runtime at their batch). The two are measured interleaved, in rounds, and each ratio is the median of the
per-round ratios (with its range), so that the machine's drift does not masquerade as serving overhead. Targets:
throughput at concurrency 4 >= 0.9x, p99 at concurrency 1 <= 1.2x. The CPU every process of the served path spends
per image (client, server, each backend stub) is recorded too: what serving adds, measured in a steadier unit.
Writes JSON, a PNG plot (throughput and p99 against concurrency) and, with ``--readme``, a table into README.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.measure import (
    ORT_WARMUP_RUNS,
    Timing,
    ort_run,
    ort_session,
    served_run,
)
from bench.readme import markers, publish
from client.scoring import ScoreConfig
from kdcore.contract import MAP, SCORE, UINT8, TensorSpec
from kdcore.manifest import ValidationSamples, load_manifests, validation_folder
from kdcore.probes import own_cpu_seconds, own_cpu_times, process_tree_rss, tree_cpu_seconds

README_BEGIN, README_END = markers("bench")
THROUGHPUT_TARGET, P99_TARGET = 0.9, 1.2


def detectors(repository: Path, only: list[str] | None) -> list[dict]:
    """The detectors of ``repository`` (models with the exporter's manifest), with their validation inputs."""
    models = []
    for manifest in load_manifests(repository, only):
        inputs = ValidationSamples.load(validation_folder(repository, manifest.model)).inputs
        names = manifest.names
        score_model = manifest.score_model
        models.append({"name": manifest.model, "score_model": score_model,
                       "score_ensemble": manifest.profiles.score,
                       # The stub that runs the network on the score-only path (its CPU is the model's own).
                       "network_role": f"{score_model if score_model == names.fast else names.onnx}_",
                       "ensemble_network_role": f"{names.onnx}_",
                       "method": manifest.method, "input": manifest.input, "has_map": manifest.has_map,
                       "onnx": repository / names.onnx / "1" / "model.onnx", "inputs": inputs})
    if not models:
        raise FileNotFoundError(f"no exported detector in {repository} (run kd-export or make compare)")
    return models


PERF_ANALYZER_WHEEL = "tritonclient==2.51.0"


def fetch_perf_analyzer(dest: Path) -> Path:
    """perf_analyzer from the ``tritonclient==2.51.0`` wheel (the PyPI ``perf-analyzer`` needs a newer glibc).

    Only the binary is taken out of the wheel (installing that tritonclient would pin protobuf < 5); the two
    libraries it links, libb64 and libcudart, come from the nvidia-pytriton wheel under their plain names.
    """
    binary = dest / "perf_analyzer"
    if binary.is_file():
        return binary
    import glob
    import zipfile

    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", PERF_ANALYZER_WHEEL, "-d", str(dest)],
                   check=True)
    wheel = next(dest.glob("tritonclient-2.51.0-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        member = next(n for n in z.namelist() if n.endswith("/bin/perf_analyzer"))
        binary.write_bytes(z.read(member))
    binary.chmod(0o755)
    import site

    libs = Path(next(p for p in site.getsitepackages() if (Path(p) / "nvidia_pytriton.libs").is_dir())) / "nvidia_pytriton.libs"
    for pattern, name in (("libb64-*.so.0d", "libb64.so.0d"), ("libcudart-*.so.12*", "libcudart.so.12")):
        target = dest / name
        if not target.exists():
            target.symlink_to(Path(glob.glob(str(libs / pattern))[0]))
    return binary


def perf_analyzer_sweep(binary: Path, url: str, model: str, input_spec: TensorSpec, concurrency: list[int]) -> list[dict]:
    """perf_analyzer over gRPC at each concurrency (random data, the score-only model); its own figures."""
    rows = []
    env = {**os.environ, "LD_LIBRARY_PATH": f"{binary.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    shape = ",".join(str(d) for d in input_spec.dims)
    with tempfile.TemporaryDirectory() as tmp:
        for c in concurrency:
            out = Path(tmp) / f"pa{c}.csv"
            # Loose stability settings: 2 shared cores never give perf_analyzer's default 10% stability.
            cmd = [str(binary), "-m", model, "-u", url, "-i", "grpc", "--shape", f"{input_spec.name}:{shape}",
                   "--concurrency-range", f"{c}:{c}", "-p", "2000", "--max-trials", "6",
                   "--stability-percentage", "50", "-f", str(out), "--percentile", "99"]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
            if done.returncode != 0 or not out.is_file():
                rows.append({"concurrency": c, "error": (done.stderr or done.stdout).strip()[-300:]})
                continue
            with open(out, newline="") as f:
                row = next(csv.DictReader(f))
            rows.append({"concurrency": c, "images_per_second": float(row["Inferences/Second"]),
                         "p99_ms": float(row["p99 latency"]) / 1000.0})
    return rows


def _stats(url: str) -> dict[str, dict[str, int]]:
    """Triton's cumulative per-model statistics: successes and nanoseconds queued / in input / infer / output."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        raw = client.get_inference_statistics(as_json=True)["model_stats"]
    finally:
        client.close()
    keys = {"queue": "queue", "compute_input": "input", "compute_infer": "infer", "compute_output": "output"}
    out = {}
    for m in raw:
        s = m.get("inference_stats", {})
        out[m["name"]] = {"count": int(s.get("success", {}).get("count", 0)),
                          **{v: int(s.get(k, {}).get("ns", 0)) for k, v in keys.items()}}
    return out


def breakdown(server, model: dict, seconds: float) -> dict:
    """Where the time of one request goes at concurrency 1 (gRPC), per composing model, for the full ensemble
    (score requested, but the map is computed: what every request cost before the score-only profile), the
    score-only ensemble (network, then the Python scorer) and the calibrated network (one model): milliseconds per
    request queued, copying inputs, computing, copying outputs."""
    result = {}
    paths = [("full ensemble", model["name"]), ("score-only ensemble", model["score_ensemble"])]
    if model["score_model"] not in (model["score_ensemble"], model["name"]):  # exported with a calibrated network
        paths.append(("calibrated network", model["score_model"]))
    for label, name in [(label, name) for label, name in paths if name]:
        before = _stats(server.grpc_url)
        served_run(server.grpc_url, "grpc", name, model["input"], model["inputs"], concurrency=1, seconds=seconds)
        after = _stats(server.grpc_url)
        parts = {}
        for m, a in after.items():
            n = a["count"] - before.get(m, {}).get("count", 0)
            if n > 0 and m.startswith(model["name"]):
                parts[m] = {k: (a[k] - before[m][k]) / n / 1e6 for k in ("queue", "input", "infer", "output")}
        result[label] = parts
    return result


def paired_rounds(model: dict, server, args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """In-process and served runs interleaved: each round measures ONNX Runtime at batch c and, right after it, the
    server at concurrency c over each protocol, for every c; ``args.rounds`` rounds.

    Why interleaved: on a shared virtual machine the same in-process run drifts by up to 2x over minutes (measured:
    ORT batch 1 at 71 then 38 img/s ten seconds apart, nothing else running). Measuring all of one side and then
    all of the other would turn that drift into a fake ratio; a ratio taken within a round compares like with like.

    Each round ends with the client's own way of working: ``args.batch`` images per request at concurrency
    ``BATCHED_CONCURRENCY`` (``client.py score``'s defaults), right after ONNX Runtime at that batch.

    Returns ``ort[c]`` and ``served[protocol][c]``, one :class:`Timing` per round, and the CPU each run used per
    image: ``cpu["ort"][c]`` (this process) and ``cpu["served"][protocol][c]`` (client and every server process);
    the batched runs are the keys ``"b<batch>"`` of each.
    """
    session = ort_session(model["onnx"], args.threads)
    score = model["score_model"]
    # (key, concurrency, images per request, shared memory, served model), in the order each round runs them.
    runs = [(c, c, 1, "none", score) for c in args.concurrency]
    runs.append((batched_key(args.batch), BATCHED_CONCURRENCY, args.batch, "none", score))
    if model["input"].datatype == UINT8:  # pixels can skip the socket: what the copies cost the client
        runs.append((batched_key(args.batch, shared_memory=True), BATCHED_CONCURRENCY, args.batch, "system", score))
    if model["score_ensemble"] and model["score_ensemble"] != score:
        # The path the calibrated network replaces (network, then the Python scorer), in the same rounds.
        runs += [(ENSEMBLE_KEYS[0], 4, 1, "none", model["score_ensemble"]),
                 (ENSEMBLE_KEYS[1], BATCHED_CONCURRENCY, args.batch, "none", model["score_ensemble"])]
    keys = [run[0] for run in runs]
    ort: dict = {k: [] for k in keys}
    served: dict[str, dict] = {p: {k: [] for k in keys} for p in args.protocols}
    cpu: dict = {"ort": {k: [] for k in keys}, "served": {p: {k: [] for k in keys} for p in args.protocols}}
    for _ in range(args.rounds):
        for key, concurrency, batch, shared_memory, served_model in runs:
            ort_batch = batch if batch > 1 else concurrency  # the effective batch the server can form
            before = own_cpu_seconds()
            t = ort_run(session, model["inputs"], ort_batch, args.seconds)
            ort[key].append(t)
            cpu["ort"][key].append((own_cpu_seconds() - before) * 1000.0 / ((t.requests + ORT_WARMUP_RUNS) * ort_batch))
            for protocol in args.protocols:
                t, split = _served_with_cpu(server, protocol, served_model, model, concurrency, args.seconds, batch,
                                            shared_memory)
                served[protocol][key].append(t)
                cpu["served"][protocol][key].append(split)
    return ort, served, cpu


#: Requests in flight and images per request of the batched runs: ``client.py score``'s defaults.
BATCHED_CONCURRENCY = int(ScoreConfig.model_fields["concurrency"].default)
CLIENT_BATCH = int(ScoreConfig.model_fields["batch_size"].default)


def batched_key(batch: int, *, shared_memory: bool = False) -> str:
    """The results' key of the batched runs (``"b8"``, through system shared memory ``"b8_shm"``), beside the
    concurrency keys of single-image runs."""
    return f"b{batch}" + ("_shm" if shared_memory else "")


def _served_with_cpu(server, protocol: str, served_model: str, model: dict, concurrency: int, seconds: float,
                     batch: int = 1, shared_memory: str = "none") -> tuple[Timing, dict]:
    """One score-only served run, and the CPU milliseconds per image each process spent on it: the server's
    processes by role, ``client`` (this process) and, apart, ``client_kernel``, the client's share spent in
    system calls (the socket's copies); the roles sum to the total without it."""
    before, client_before = tree_cpu_seconds(server.process.pid), own_cpu_times()
    t = served_run(server.url(protocol), protocol, served_model, model["input"], model["inputs"],
                   concurrency=concurrency, seconds=seconds, batch=batch, shared_memory=shared_memory)
    after, client_after = tree_cpu_seconds(server.process.pid), own_cpu_times()
    # The warm-up requests ran inside the window too; a timed request holds ``batch`` images.
    images = (t.requests + t.failures + concurrency) * batch
    split = {role: (after[role] - before.get(role, 0.0)) * 1000.0 / images for role in after}
    split["client"] = (sum(client_after) - sum(client_before)) * 1000.0 / images
    split[CLIENT_KERNEL] = (client_after[1] - client_before[1]) * 1000.0 / images
    return t, split


#: The client's kernel share in a CPU split: a part of ``client``, not a process of its own.
CLIENT_KERNEL = "client_kernel"
#: Keys of the score-only ensemble's runs (single images at concurrency 4, the client's batch), beside the
#: calibrated network's.
ENSEMBLE_KEYS = ("c4_ensemble", "batched_ensemble")


def cpu_split(cpu: dict, model: dict, concurrency: int | str = 4) -> dict:
    """CPU milliseconds per image at ``concurrency`` (or the batched runs' key, median over rounds): in-process ONNX
    Runtime, and each process of the served path (client, tritonserver, one entry per busy backend stub).

    ``serving`` is everything the served path spends besides the network's own stub (client, server core, scorer)
    and ``overhead`` that as a share of the in-process network: what serving adds to the model's own cost. CPU time
    is far steadier than throughput on a shared machine, so this is the figure to watch when a change is tried.
    ``network_vs_in_process`` compares the network's stub with the same graph in-process (ONNX Runtime's idle
    spinning between batches shows there)."""
    network = model["ensemble_network_role" if concurrency in ENSEMBLE_KEYS else "network_role"]
    out: dict = {"ort_in_process": float(np.median(cpu["ort"][concurrency]))}
    for protocol, by_c in cpu["served"].items():
        rounds = by_c[concurrency]
        roles = sorted({role for split in rounds for role in split})
        median = {role: float(np.median([split.get(role, 0.0) for split in rounds])) for role in roles}
        median = {role: ms for role, ms in median.items() if ms >= 0.01}  # idle stubs of other models
        processes = {role: ms for role, ms in median.items() if role != CLIENT_KERNEL}
        own = sum(ms for role, ms in processes.items() if role.startswith(network))
        rest = sum(ms for role, ms in processes.items() if not role.startswith(network))
        base = out["ort_in_process"]
        out[protocol] = {"ms_per_image": median, "network": own, "serving": rest,
                         "overhead": rest / base if base > 0 else None,
                         "network_vs_in_process": own / base if base > 0 else None}
    return out


def paired_ratio(served: list[Timing], ort: list[Timing], field: str) -> dict:
    """Served over in-process, round by round: the median ratio and its range across rounds."""
    per_round = [getattr(s, field) / getattr(o, field) for s, o in zip(served, ort)]
    return {"median": float(np.median(per_round)), "min": min(per_round), "max": max(per_round),
            "per_round": per_round}


def bench_model(model: dict, server, args: argparse.Namespace) -> dict:
    """Every figure of one detector."""
    ort_rounds, served_rounds, cpu = paired_rounds(model, server, args)
    ort = {c: Timing.median(runs) for c, runs in ort_rounds.items()}
    served = {p: {c: Timing.median(runs) for c, runs in by_c.items()} for p, by_c in served_rounds.items()}
    extra = {}
    if model["has_map"] and "grpc" in args.protocols:
        # What the full-resolution float32 map costs when a client asks for it too.
        extra["grpc_c4_with_map"] = served_run(server.grpc_url, "grpc", model["name"], model["input"],
                                               model["inputs"], concurrency=4, seconds=args.seconds,
                                               outputs=(SCORE, MAP)).to_dict()
    bkey, skey = batched_key(args.batch), batched_key(args.batch, shared_memory=True)
    result = {
        "model": model["name"], "method": model["method"], "score_model": model["score_model"],
        "batch": args.batch, "batched_concurrency": BATCHED_CONCURRENCY,
        "ort": {str(b): t.to_dict() for b, t in ort.items()},
        "served": {p: {str(c): t.to_dict() for c, t in runs.items()} for p, runs in served.items()},
        "cpu_ms_per_image_c4": cpu_split(cpu, model),
        "cpu_ms_per_image_batched": cpu_split(cpu, model, bkey),
        **({"cpu_ms_per_image_batched_shm": cpu_split(cpu, model, skey)} if skey in ort_rounds else {}),
        **({f"cpu_ms_per_image_{key}": cpu_split(cpu, model, key) for key in ENSEMBLE_KEYS if key in ort_rounds}),
        "rounds": {"ort": {str(c): [t.to_dict() for t in runs] for c, runs in ort_rounds.items()},
                   "served": {p: {str(c): [t.to_dict() for t in runs] for c, runs in by_c.items()}
                              for p, by_c in served_rounds.items()}},
        "ratios": {
            p: {
                "throughput_c4_vs_ort_b4": paired_ratio(by_c[4], ort_rounds[4], "images_per_second"),
                "p99_c1_vs_ort_b1": paired_ratio(by_c[1], ort_rounds[1], "p99_ms"),
                "throughput_batched_vs_ort": paired_ratio(by_c[bkey], ort_rounds[bkey], "images_per_second"),
                **({"throughput_batched_shm_vs_ort": paired_ratio(by_c[skey], ort_rounds[skey], "images_per_second")}
                   if skey in by_c else {}),
                # The calibrated network against the score-only ensemble, run after run within each round.
                **({"calibrated_vs_ensemble": {
                    "c4": paired_ratio(by_c[4], by_c[ENSEMBLE_KEYS[0]], "images_per_second"),
                    "batched": paired_ratio(by_c[bkey], by_c[ENSEMBLE_KEYS[1]], "images_per_second")}}
                   if ENSEMBLE_KEYS[0] in by_c else {}),
                "throughput_vs_ort_same_batch": {
                    str(c): paired_ratio(runs, ort_rounds[c], "images_per_second")["median"]
                    for c, runs in by_c.items()},
            }
            for p, by_c in served_rounds.items()
        },
        **extra,
    }
    if model["has_map"]:
        result["breakdown_c1_ms"] = breakdown(server, model, args.seconds)
    if args.perf_analyzer:
        result["perf_analyzer"] = perf_analyzer_sweep(args.perf_analyzer, server.grpc_url, model["score_model"],
                                                      model["input"], args.concurrency)
    return result


def _overhead_text(cpu: dict, protocol: str) -> str:
    """'+2.4 ms on 41.9 ms = +6%': CPU per image the served path spends besides the network, against the network's
    own in-process CPU per image (the percentage is left out where the model costs next to nothing)."""
    split, base = cpu[protocol], cpu["ort_in_process"]
    text = f"+{split['serving']:.2f} ms on {base:.2f} ms"
    return text + (f" = +{100 * split['overhead']:.0f}%" if split["overhead"] is not None and split["overhead"] < 10
                   else "")


def _client_text(result: dict, protocol: str) -> str:
    """'0.25 (0.07) / 0.13 (0.01) ms': the client's CPU per image at the client's batch over the socket and through
    shared memory, its kernel part in brackets (image models; vector inputs cannot use shared memory)."""
    parts = []
    for key in ("cpu_ms_per_image_batched", "cpu_ms_per_image_batched_shm"):
        if key in result:
            ms = result[key][protocol]["ms_per_image"]
            parts.append(f"{ms.get('client', 0.0):.2f} ({ms.get(CLIENT_KERNEL, 0.0):.2f})")
    return " / ".join(parts) + " ms"


def _versus_text(result: dict, protocol: str) -> str:
    """'1.10x [1.02-1.18], 1.05x [...]': the calibrated network's throughput over the score-only ensemble's, round by
    round, single images at concurrency 4 and batched ('-' for a model without the pair)."""
    pair = result["ratios"][protocol].get("calibrated_vs_ensemble")
    if not pair:
        return "-"
    return ", ".join(f"{r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]" for r in (pair["c4"], pair["batched"]))


def markdown_table(results: list[dict]) -> str:
    """One row per detector and protocol: throughput at c=1/4/8, ratios against the targets, p99 at c=1, and the
    client's batched requests against in-process ONNX Runtime at that batch."""
    batch = results[0]["batch"] if results else CLIENT_BATCH
    lines = [
        ("| model | protocol | ORT b1 / b4 / b8 img/s | served c1 / c4 / c8 img/s | c4 / ORT b4 [range] (>= 0.9) "
         "| p99 c1 served / ORT b1 ms: ratio [range] (<= 1.2x) | serving CPU per image at c4 "
         f"| served b{batch} x c{BATCHED_CONCURRENCY} / ORT b{batch} img/s: ratio [range] "
         f"| serving CPU per image, b{batch} | client CPU per image, b{batch}: socket / shared memory (kernel) "
         f"| calibrated network / score-only ensemble img/s: c4, b{batch} |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ort, bkey = r["ort"], batched_key(r["batch"])
        for protocol, runs in r["served"].items():
            t4, p1 = r["ratios"][protocol]["throughput_c4_vs_ort_b4"], r["ratios"][protocol]["p99_c1_vs_ort_b1"]
            tb = r["ratios"][protocol]["throughput_batched_vs_ort"]
            ok_t = "yes" if t4["median"] >= THROUGHPUT_TARGET else "no"
            ok_p = "yes" if p1["median"] <= P99_TARGET else "no"
            lines.append(
                f"| {r['model']} | {protocol} | {ort['1']['images_per_second']:.0f} / {ort['4']['images_per_second']:.0f}"
                f" / {ort['8']['images_per_second']:.0f} | {runs['1']['images_per_second']:.0f} / "
                f"{runs['4']['images_per_second']:.0f} / {runs['8']['images_per_second']:.0f} | "
                f"{t4['median']:.2f} [{t4['min']:.2f}-{t4['max']:.2f}] ({ok_t}) | {runs['1']['p99_ms']:.1f} / "
                f"{ort['1']['p99_ms']:.1f}: {p1['median']:.2f}x [{p1['min']:.2f}-{p1['max']:.2f}] ({ok_p}) | "
                f"{_overhead_text(r['cpu_ms_per_image_c4'], protocol)} | {runs[bkey]['images_per_second']:.0f} / "
                f"{ort[bkey]['images_per_second']:.0f}: {tb['median']:.2f} [{tb['min']:.2f}-{tb['max']:.2f}] | "
                f"{_overhead_text(r['cpu_ms_per_image_batched'], protocol)} | {_client_text(r, protocol)} | "
                f"{_versus_text(r, protocol)} |"
            )
    return "\n".join(lines)


def plot(results: list[dict], concurrency: list[int], path: Path) -> None:
    """Throughput and p99 against concurrency, one row of panels per detector; ORT in-process dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(10, 3 * len(results)), squeeze=False)
    for row, r in zip(axes, results):
        ort_t = [r["ort"][str(c)]["images_per_second"] for c in concurrency]
        ort_p = [r["ort"][str(c)]["p99_ms"] for c in concurrency]
        row[0].plot(concurrency, ort_t, "k--", label="ONNX Runtime in-process (batch = c)")
        row[1].plot(concurrency, ort_p, "k--", label="ONNX Runtime in-process (batch = c)")
        for protocol, runs in r["served"].items():
            row[0].plot(concurrency, [runs[str(c)]["images_per_second"] for c in concurrency], "o-", label=protocol)
            row[1].plot(concurrency, [runs[str(c)]["p99_ms"] for c in concurrency], "o-", label=protocol)
        row[0].set_title(f"{r['model']}: images/s")
        row[1].set_title(f"{r['model']}: p99 latency (ms)")
        for ax in row:
            ax.set_xlabel("concurrency (requests in flight)")
            ax.set_xticks(concurrency)
            ax.grid(alpha=0.3)
        served_max = max(t["images_per_second"] for runs in r["served"].values() for t in runs.values())
        if max(ort_t) > 20 * served_max:  # a microsecond model: a linear axis would flatten the served curves
            row[0].set_yscale("log")
        else:
            row[0].set_ylim(bottom=0)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip("`: "),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repository", type=Path, default=Path("runs/compare/model_repository"),
                   help="exported repository (make compare writes one with every detector)")
    p.add_argument("--models", nargs="*", default=None, help="ensemble names to measure (default: all)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each timed run")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of in-process and served runs, interleaved; ratios are per round, then the median")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8], help="requests in flight")
    p.add_argument("--protocols", nargs="+", choices=["grpc", "http"], default=["grpc", "http"])
    p.add_argument("--batch", type=int, default=CLIENT_BATCH,
                   help=f"images per request of the batched runs ({BATCHED_CONCURRENCY} in flight; client.py score's "
                   "defaults), against in-process ONNX Runtime at that batch")
    p.add_argument("--threads", type=int, default=None, help="ORT intra-op threads in-process (default: all cores)")
    p.add_argument("--perf-analyzer", default=None,
                   help="perf_analyzer binary for a cross-check, or 'auto' to fetch it into .cache/perf_analyzer/")
    p.add_argument("--output", type=Path, default=Path("runs/bench/serving.json"), help="JSON results")
    p.add_argument("--plot", type=Path, default=Path("runs/bench/serving.png"), help="PNG plot")
    p.add_argument("--readme", type=Path, default=None, help="README.md to write the table into")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the table."""
    from serving.embedded import TritonServer, free_port

    args = build_parser().parse_args(argv)
    if args.perf_analyzer == "auto":
        args.perf_analyzer = fetch_perf_analyzer(Path(".cache/perf_analyzer"))
    elif args.perf_analyzer:
        args.perf_analyzer = Path(args.perf_analyzer)
    if not {1, 4, 8} <= set(args.concurrency):
        print("kd-bench: --concurrency must include 1, 4 and 8 (the targets and the table use them)", file=sys.stderr)
        return 2
    models = detectors(args.repository, args.models)
    results = []
    with TritonServer(args.repository, http_port=free_port(), grpc_port=free_port(),
                      metrics_port=free_port()) as server:
        for model in models:
            print(f"measuring {model['name']} ...", file=sys.stderr)
            results.append(bench_model(model, server, args))
        memory = process_tree_rss(server.process.pid)
    table = markdown_table(results)
    print(table)
    print(f"server + backend stubs resident memory: {memory / 2**20:.0f} MiB" if memory else "")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "arch": platform.machine()},
                                       "server_rss_bytes": memory, "seconds": args.seconds,
                                       "rounds": args.rounds,
                                       "results": results}, indent=2) + "\n")
    plot(results, args.concurrency, args.plot)
    print(f"wrote {args.output} and {args.plot}")
    written = publish(args.readme, "bench", table, "make bench", "kd-bench")
    failures = sum(t["failures"] for r in results for runs in r["served"].values() for t in runs.values())
    if failures:
        print(f"kd-bench: {failures} served requests failed", file=sys.stderr)
        return 1
    return written


if __name__ == "__main__":
    sys.exit(main())
