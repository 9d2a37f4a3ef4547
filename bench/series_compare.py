"""``kd-compare-signal``: train the time-series family on the synthetic ECG set, serve it, compare quality and speed.

One command, every figure from this machine: the vision teacher with the source's two loss weights (alpha 0.5 and
1), and the recurrent student trained from the labels (lam 0), half from the teacher (lam 0.5) and from the teacher
alone (lam 1), distilling the teacher that is best on the validation split's per-step AUC-PR. For each: parameters,
GFLOPs per window, the test split's per-step AUROC, AUC-PR and VUS-PR, window AUROC and the source's MSP/MSR (from
the stats JSON; thresholds and the kept epoch from validation), then served over gRPC (the whole ensemble: the
teacher's includes its server-side renderer): windows/s with 4 requests of 8 windows in flight, and one window at a
time (p50/p99 latency). Teacher and student are timed in alternating rounds and the speed-up is the median of the
per-round ratios (this machine's speed drifts). The table is printed, saved as JSON and written into README.md
between the ``compare-signal`` markers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Served windows per request in the batched runs (the scoring command's default batch).
BATCH = 8
#: Requests in flight in the batched runs.
CONCURRENCY = 4
TEACHERS = {"ecg_teacher_a05": 0.5, "ecg_teacher_a1": 1.0}
STUDENTS = {"ecg_student_lam0": 0.0, "ecg_student_lam05": 0.5, "ecg_student_lam1": 1.0}


@dataclass
class Row:
    """One detector's figures."""

    model: str
    method: str
    setting: str
    parameters: int
    trainable_parameters: int
    gflops: float
    step_auroc: float | None
    step_auc_pr: float | None
    vus_pr: float | None
    window_auroc: float | None
    msp: float | None
    msr: float | None
    validation_step_auc_pr: float | None
    served_batched: float | None = None
    """Windows/s, requests of :data:`BATCH` windows, :data:`CONCURRENCY` in flight (median of the rounds)."""
    served_single: float | None = None
    """Windows/s, one window per request, one in flight."""
    p50_ms: float | None = None
    """Latency of one window, one in flight."""
    p99_ms: float | None = None


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown_table(rows: list[Row]) -> str:
    """The comparison as a markdown table."""
    head = ("| model | setting | params (trained) | GFLOPs / window | step AUROC | step AUC-PR | VUS-PR | window AUROC "
            "| MSP | MSR | served windows/s (8 x 4) | served windows/s (1 x 1) | p50 / p99 ms (1 x 1) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r.model} | {r.setting} | {r.parameters / 1e6:.2f} M ({r.trainable_parameters / 1e6:.2f} M) | "
        f"{r.gflops:.3f} | {_fmt(r.step_auroc)} | {_fmt(r.step_auc_pr)} | {_fmt(r.vus_pr)} | {_fmt(r.window_auroc)} | "
        f"{_fmt(r.msp)} | {_fmt(r.msr)} | {_fmt(r.served_batched, 0)} | {_fmt(r.served_single, 0)} | "
        f"{_fmt(r.p50_ms, 1)} / {_fmt(r.p99_ms, 1)} |\n"
        for r in rows
    )
    return head + body


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(
        prog="kd-compare-signal",
        description="Train the time-series family (vision teacher with alpha 0.5 and 1, recurrent student with lam 0, "
        "0.5 and 1) on the synthetic ECG set, export it into one repository, serve it, and print one table of "
        "quality (test split), size, GFLOPs and served speed, with the student's served speed-up over the teacher.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-root", type=Path, default=Path("data/ecg"), help="ECG set (written if missing)")
    parser.add_argument("--runs", type=Path, default=Path("runs/ecg"), help="folder for the runs")
    parser.add_argument("--repository", type=Path, default=Path("runs/ecg/model_repository"),
                        help="repository to export into")
    parser.add_argument("--teacher-epochs", type=int, default=30, help="epochs of each teacher's head")
    parser.add_argument("--student-epochs", type=int, default=40, help="epochs of each student")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each served measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating teacher/student rounds of the speed runs")
    parser.add_argument("--skip-training", action="store_true", help="reuse the runs already in --runs")
    parser.add_argument("--readme", type=Path, default=Path("README.md"),
                        help="README to write the table into ('' to skip)")
    return parser


def _row(name: str, run: Path, setting: str) -> Row:
    import torch

    from bench.compare import gflops
    from training.checkpoint import load_deployable
    from training.runs import RunPaths

    model, _spec, stats = load_deployable(run)
    example = torch.from_numpy(np.load(RunPaths(run).samples)["inputs"][:1])
    if stats.model.plot_size is not None:
        from kdcore.series_plot import PlotSpec, render_plots

        example = torch.from_numpy(render_plots(example.numpy(), PlotSpec(size=stats.model.plot_size)))
    test, validation = stats.test_metrics, stats.validation_metrics
    return Row(
        model=name, method=stats.model.method, setting=setting, parameters=stats.model.parameters,
        trainable_parameters=stats.model.trainable_parameters, gflops=gflops(model, example),
        step_auroc=test.pixel_auroc, step_auc_pr=test.pixel_auc_pr, vus_pr=test.vus_pr, window_auroc=test.image_auroc,
        msp=test.msp, msr=test.msr, validation_step_auc_pr=validation.pixel_auc_pr,
    )


def measure(rows: list[Row], repository: Path, runs: dict[str, Path], args: argparse.Namespace) -> list[dict]:
    """Served figures of every row, in alternating rounds; returns each round's windows/s per model."""
    from bench.measure import Timing, served_run
    from kdcore.manifest import MANIFEST_FILE, Manifest, validation_folder
    from serving.embedded import TritonServer, free_port
    from training.runs import RunPaths

    workdir = args.runs / "triton"
    rounds: list[dict] = []
    batched: dict[str, list[Timing]] = {r.model: [] for r in rows}
    single: dict[str, list[Timing]] = {r.model: [] for r in rows}
    with TritonServer(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                      workdir=workdir, log_path=workdir / "server.log") as server:
        for _ in range(args.rounds):
            this_round = {}
            for row in rows:  # every model once per round, so drift hits them alike
                manifest = Manifest.load(validation_folder(repository, row.model) / MANIFEST_FILE)
                windows = np.load(RunPaths(runs[row.model]).samples)["inputs"]
                batched[row.model].append(served_run(
                    server.grpc_url, "grpc", manifest.model, manifest.input, windows, concurrency=CONCURRENCY,
                    seconds=args.seconds, batch=BATCH))
                single[row.model].append(served_run(
                    server.grpc_url, "grpc", manifest.model, manifest.input, windows, concurrency=1,
                    seconds=args.seconds, batch=1))
                this_round[row.model] = batched[row.model][-1].images_per_second
            rounds.append(this_round)
    for row in rows:
        b, s = Timing.median(batched[row.model]), Timing.median(single[row.model])
        row.served_batched, row.served_single, row.p50_ms, row.p99_ms = (
            b.images_per_second, s.images_per_second, s.p50_ms, s.p99_ms)
    return rounds


def speedup(rounds: list[dict], student: str, teacher: str) -> float:
    """Median over the rounds of the student's served windows/s over the teacher's in the same round."""
    return float(np.median([r[student] / r[teacher] for r in rounds]))


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from bench.readme import publish
    from export.repository import export_runs
    from training.signals.dataset import write_signal_dataset
    from training.signals.train import SignalTrainConfig, TeacherTrainConfig, train_student, train_teacher

    if not (args.data_root / "meta.json").is_file():
        write_signal_dataset(args.data_root)
    runs = {name: args.runs / name for name in (*TEACHERS, *STUDENTS)}
    if not args.skip_training:
        for name, alpha in TEACHERS.items():
            train_teacher(TeacherTrainConfig(data_root=args.data_root, output=runs[name], alpha=alpha,
                                             epochs=args.teacher_epochs))
    teachers = [_row(name, runs[name], f"alpha {alpha:g}") for name, alpha in TEACHERS.items()]
    # The students distil the teacher that is best on validation (never on test).
    best = max(teachers, key=lambda r: r.validation_step_auc_pr or -1.0)
    if not args.skip_training:
        for name, lam in STUDENTS.items():
            train_student(SignalTrainConfig(data_root=args.data_root, output=runs[name], lam=lam,
                                            teacher=runs[best.model], epochs=args.student_epochs))
    students = [_row(name, runs[name], f"lam {lam:g}" + (f" from {best.model}" if lam else ""))
                for name, lam in STUDENTS.items()]
    rows = [*teachers, *students]
    export_runs([(runs[r.model], r.model) for r in rows], args.repository)
    rounds = measure(rows, args.repository, runs, args)

    table = markdown_table(rows)
    student = next(r for r in students if r.model == "ecg_student_lam0")
    ratio = speedup(rounds, student.model, best.model)
    sentence = (f"The student's served speed-up over the teacher it distils ({best.model}): {ratio:.2f}x windows/s "
                f"({BATCH} windows x {CONCURRENCY} in flight, median of {args.rounds} alternating rounds); GFLOPs per "
                f"window {student.gflops:.3f} against {best.gflops:.3f}; latency of one window "
                f"{_fmt(student.p50_ms, 1)} ms against {_fmt(best.p50_ms, 1)} ms (p50).")
    print(table)
    print(sentence)
    args.runs.mkdir(parents=True, exist_ok=True)
    (args.runs / "compare_signal.json").write_text(json.dumps(
        {"rows": [asdict(r) for r in rows], "rounds": rounds, "speedup": ratio, "kd_teacher": best.model},
        indent=2) + "\n")
    return publish(args.readme, "compare-signal", table + "\n" + sentence + "\n", "kd-compare-signal",
                   "kd-compare-signal")


if __name__ == "__main__":
    sys.exit(main())
