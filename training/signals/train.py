"""Training the time-series detectors: the vision teacher on the plots, the recurrent student on the signal.

Both keep the epoch with the best per-step average precision (AUC-PR) on the validation split; the test split is
scored once, at the end, with those weights. The run folder has the layout of :class:`training.runs.RunPaths`
(weights, training config, stats JSON, history, validation samples) plus ``report.json``; the stats JSON is the
project's schema (:mod:`kdcore.stats`, ``input_kind: signal``): the window score (the highest step) takes the
image fields, the per-step scores the pixel fields, thresholds F1-optimal on validation, calibrations from the
validation's normal windows and steps. The teacher also writes its logits on the training windows
(``teacher_logits.npz``), which a student distils from (``--teacher RUN --lam 0.5``).

Reported per split: per-step AUROC and AUC-PR (scikit-learn), VUS-PR (:mod:`kdcore.series_vus`), the window-level
AUROC (a window with any anomalous step against its highest step score) and MSP/MSR (:mod:`kdcore.series_metrics`,
the source's measure).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from safetensors.torch import save_file
from torch import Tensor, nn

from kdcore.series_metrics import squeezed_precision_recall
from kdcore.stats import Metrics, ModelInfo, ScoreStatistics, Stats, TrainingFacts, save_stats
from training.calibrate import IMAGE_GOOD_QUANTILE, PIXEL_GOOD_QUANTILE, choose_threshold, fit_calibration
from training.runs import RunPaths
from training.signals.dataset import fingerprint, load_split
from training.signals.deploy import STUDENT_METHOD, TEACHER_METHOD, VLM_TEACHER_METHOD
from training.signals.ecg import Windows
from training.signals.student import RecurrentStudent, distillation_loss

log = logging.getLogger(__name__)

WEIGHTS_FILE, REPORT_FILE, CONFIG_FILE = "model.safetensors", "report.json", "train_config.json"
#: The teacher's logits on the training windows, for the students that distil from it.
TEACHER_LOGITS_FILE = "teacher_logits.npz"
#: Gradient norm clip of the recurrent steps (a student run without it lost half its validation AUC-PR in one epoch).
CLIP_NORM = 1.0
#: Plots per batch through a teacher's frozen part while its features are cached.
FEATURE_BATCH = 16
#: Validation windows of each class stored in the run for the served checks.
SAMPLES_PER_CLASS = 4


class SignalTrainConfig(BaseModel):
    """How to train the recurrent student (``kd-train-signal`` has one option per field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_root: Path = Field(Path("data/ecg"), description="dataset written by kd-signal-data")
    output: Path = Field(Path("runs/ecg_student"), description="run folder to write")
    epochs: int = Field(40, ge=1, description="passes over the training windows")
    batch_size: int = Field(32, ge=1, description="windows per step")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    lam: float = Field(0.0, ge=0, le=1, description="weight of the teacher's softened probabilities (0: labels only, "
                       "1: teacher only; needs --teacher)")
    teacher: Path | None = Field(None, description="vision teacher run (kd-train-signal-teacher) to distil from")
    hidden: int = Field(128, ge=1, description="LSTM width per direction")
    layers: int = Field(2, ge=1, description="stacked LSTM layers")
    dropout: float = Field(0.3, ge=0, lt=1, description="dropout between LSTM layers")
    seed: int = Field(0, description="weights and batch order")

    @model_validator(mode="after")
    def _teacher_needed(self) -> SignalTrainConfig:
        if self.lam > 0 and self.teacher is None:
            raise ValueError("lam > 0 distils from the vision teacher: give its run folder with --teacher")
        return self


class TeacherTrainConfig(BaseModel):
    """How to train the vision teacher (``kd-train-signal-teacher`` has one option per field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_root: Path = Field(Path("data/ecg"), description="dataset written by kd-signal-data")
    output: Path = Field(Path("runs/ecg_teacher"), description="run folder to write")
    backbone: str = Field("efficientnet_lite0", description="frozen pretrained image encoder that reads the plot")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the cosine term in the source's loss (0.5 and 1 "
                         "in the source)")
    epochs: int = Field(30, ge=1, description="passes over the training windows (only the head trains)")
    batch_size: int = Field(32, ge=1, description="windows per step")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    plot_size: int = Field(256, ge=32, description="side of the plot image, pixels (the renderer's PlotSpec.size)")
    vlm: Path | None = Field(None, description="a local SmolVLM (Idefics3) folder: read the plot with it, frozen, as "
                             "the source did, instead of --backbone (nothing is downloaded; see training/signals/vlm.py)")
    seed: int = Field(0, description="head weights and batch order")

    @field_validator("vlm")
    @classmethod
    def _absolute(cls, folder: Path | None) -> Path | None:
        # The run records where the frozen model lives; the exporter reads it from there, from any directory.
        return None if folder is None else folder.resolve()


@dataclass(frozen=True)
class SplitMetrics:
    """Per-step and window-level quality on one split."""

    step_auroc: float | None
    step_auc_pr: float | None
    vus_pr: float | None
    window_auroc: float | None
    msp: float | None
    msr: float | None


def evaluate(logits: np.ndarray, windows: Windows) -> SplitMetrics:
    """The metrics of per-step logits ``(N, T)`` against a split's labels."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from kdcore.series_vus import vus_pr_windows

    labels = windows.labels.astype(np.int64)
    flat, scores = labels.ravel(), logits.ravel()
    has_both = 0 < flat.sum() < flat.size
    window_labels = labels.any(1).astype(np.int64)
    window_both = 0 < window_labels.sum() < len(window_labels)
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    squeezed = squeezed_precision_recall(probabilities, labels)
    return SplitMetrics(
        step_auroc=float(roc_auc_score(flat, scores)) if has_both else None,
        step_auc_pr=float(average_precision_score(flat, scores)) if has_both else None,
        vus_pr=vus_pr_windows(labels, logits) if has_both else None,
        window_auroc=float(roc_auc_score(window_labels, logits.max(1))) if window_both else None,
        msp=squeezed.msp, msr=squeezed.msr,
    )


@torch.no_grad()
def predict(forward: Callable[[Tensor], Tensor], inputs: Tensor, batch_size: int = 256) -> np.ndarray:
    """Per-step logits ``(N, T)`` of ``forward`` (its module in eval mode) over ``inputs`` in batches."""
    return np.concatenate([forward(inputs[i:i + batch_size]).numpy() for i in range(0, len(inputs), batch_size)])


@dataclass
class Fit:
    """What :func:`fit` leaves: the per-epoch history and the kept epoch."""

    history: list[dict]
    best_epoch: int
    steps: int
    seconds: float


def fit(module: nn.Module, forward: Callable[[Tensor], Tensor], loss_of: Callable[[Tensor, Tensor], Tensor],
        train_inputs: Tensor, validation_inputs: Tensor, validation: Windows, *, epochs: int, batch_size: int,
        lr: float, seed: int, desc: str, progress: bool) -> Fit:
    """Adam on ``module``'s trainable parameters; keeps (loads back) the epoch with the best validation AUC-PR.

    Args:
        module: Holds the trainable parameters (its frozen ones are skipped) and switches train/eval mode.
        forward: Inputs -> per-step logits.
        loss_of: ``(logits, indices of the batch's training windows) -> loss``.
        train_inputs, validation_inputs: What ``forward`` reads, one row per window.
        validation: The validation windows (labels) to choose the epoch on.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    history, best, best_state, steps = [], -float("inf"), None, 0
    started = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=epochs, desc=desc, unit="epoch")
    for epoch in range(1, epochs + 1):
        module.train()
        order = rng.permutation(len(train_inputs))
        losses = []
        for i in range(0, len(order), batch_size):
            batch = torch.from_numpy(order[i:i + batch_size])
            loss = loss_of(forward(train_inputs[batch]), batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
            optimizer.step()
            losses.append(loss.item())
            steps += 1
        module.eval()
        metrics = evaluate(predict(forward, validation_inputs), validation)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), **asdict(metrics)})
        criterion = metrics.step_auc_pr if metrics.step_auc_pr is not None else -float(np.mean(losses))
        if criterion > best:
            best, best_state = criterion, {k: v.detach().clone() for k, v in module.state_dict().items()}
            history[-1]["kept"] = True
        if bar is not None:
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", val_auc_pr=f"{criterion:.3f}")
            bar.update()
    if bar is not None:
        bar.close()
    module.load_state_dict(best_state)
    module.eval()
    best_epoch = max(h["epoch"] for h in history if h.get("kept"))
    return Fit(history, best_epoch, steps, time.perf_counter() - started)


def _threshold_and_calibration(good: np.ndarray, labels: np.ndarray, scores: np.ndarray, quantile: float):
    threshold = choose_threshold(good, labels, scores, good_quantile=quantile)
    statistics = ScoreStatistics.of(good)
    return statistics, threshold, fit_calibration(threshold.value, statistics)


def _metrics(split: str, logits: np.ndarray, windows: Windows, m: SplitMetrics, window_threshold: float,
             step_threshold: float) -> Metrics:
    """The stats JSON's metrics of a split: ``m`` (:func:`evaluate`'s) and F1 at the thresholds."""
    from kdcore.metrics import f1_at_threshold

    window_labels = windows.labels.any(1).astype(np.int64)
    both = 0 < window_labels.sum() < len(window_labels)
    steps_both = 0 < windows.labels.sum() < windows.labels.size
    return Metrics(
        split=split, num_good=int((window_labels == 0).sum()), num_anomalous=int(window_labels.sum()),
        image_auroc=m.window_auroc, pixel_auroc=m.step_auroc, pixel_auc_pr=m.step_auc_pr, vus_pr=m.vus_pr,
        msp=m.msp, msr=m.msr,
        image_f1=f1_at_threshold(window_labels, logits.max(1), window_threshold) if both else None,
        pixel_f1=f1_at_threshold(windows.labels.ravel(), logits.ravel(), step_threshold) if steps_both else None,
    )


def series_stats(info: ModelInfo, validation_logits: np.ndarray, validation: Windows, test_logits: np.ndarray,
                 test: Windows, facts: TrainingFacts, evaluated: dict[str, SplitMetrics]) -> Stats:
    """The stats JSON of a time-series run: thresholds and calibrations from the validation split only.

    The window score is the highest step's logit; the good populations are the validation windows without an
    anomalous step (window score) and the validation steps labelled normal (per-step score). ``evaluated``: each
    split's :func:`evaluate`, computed once by the caller.
    """
    window_labels = validation.labels.any(1)
    window_scores = validation_logits.max(1)
    good_windows = window_scores[~window_labels]
    if good_windows.size == 0:
        raise ValueError("the validation split has no window without an anomalous step: nothing to calibrate on")
    image = _threshold_and_calibration(good_windows, window_labels, window_scores, IMAGE_GOOD_QUANTILE)
    step_labels = validation.labels.astype(bool)
    step = _threshold_and_calibration(validation_logits[~step_labels], step_labels, validation_logits,
                                      PIXEL_GOOD_QUANTILE)
    return Stats(
        model=info, normalization=None,
        image_scores=image[0], pixel_scores=step[0], image_threshold=image[1], pixel_threshold=step[1],
        image_calibration=image[2], pixel_calibration=step[2],
        validation_metrics=_metrics("validation", validation_logits, validation, evaluated["validation"],
                                    image[1].value, step[1].value),
        test_metrics=_metrics("test", test_logits, test, evaluated["test"], image[1].value, step[1].value),
        training=facts, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def save_series_samples(validation: Windows, path: Path, per_class: int = SAMPLES_PER_CLASS) -> Path:
    """The first ``per_class`` normal and anomalous validation windows, for the exporter's served checks."""
    anomalous = validation.labels.any(1)
    rows = [*np.flatnonzero(~anomalous)[:per_class], *np.flatnonzero(anomalous)[:per_class]]
    np.savez_compressed(path, inputs=validation.signals[rows].astype(np.float32),
                        labels=anomalous[rows].astype(np.int64),
                        names=np.array([f"validation/{i:05d}" for i in rows]))
    return path


def _write_run(out: Path, state: dict, config: BaseModel, info: ModelInfo, fitted: Fit, logits: dict[str, np.ndarray],
               splits: dict[str, Windows], *, config_fields: dict, data_root: Path, data_fingerprint: str) -> dict:
    paths = RunPaths(Path(out))
    paths.root.mkdir(parents=True, exist_ok=True)
    facts = TrainingFacts(
        epochs=config_fields["epochs"], best_epoch=fitted.best_epoch, steps=fitted.steps, seconds=fitted.seconds,
        seed=config_fields["seed"], batch_size=config_fields["batch_size"], learning_rate=config_fields["lr"],
        final_loss=fitted.history[-1]["loss"], dataset=str(data_root), dataset_fingerprint=data_fingerprint,
        num_train=len(splits["train"].labels), torch_version=torch.__version__,
    )
    evaluated = {s: evaluate(logits[s], splits[s]) for s in ("validation", "test")}
    stats = series_stats(info, logits["validation"], splits["validation"], logits["test"], splits["test"], facts,
                         evaluated)
    save_file({k: v.contiguous() for k, v in state.items()}, str(paths.weights))
    paths.config.write_text(config.model_dump_json(indent=2) + "\n")
    save_stats(stats, paths.stats)
    paths.history.write_text(json.dumps(fitted.history, indent=2) + "\n")
    save_series_samples(splits["validation"], paths.samples)
    report = {
        "validation": asdict(evaluated["validation"]), "test": asdict(evaluated["test"]),
        "best_epoch": fitted.best_epoch, "seconds": fitted.seconds, "parameters": info.parameters,
        "trainable_parameters": info.trainable_parameters, "history": fitted.history,
    }
    (paths.root / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _splits(root: Path) -> dict[str, Windows]:
    return {s: load_split(root, s) for s in ("train", "validation", "test")}


def _teacher_logits(config: SignalTrainConfig, train: Windows, data_fingerprint: str) -> Tensor | None:
    if config.lam == 0:
        return None
    path = Path(config.teacher) / TEACHER_LOGITS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: train the teacher with kd-train-signal-teacher first")
    with np.load(path) as z:
        logits, source = z["train"], str(z["fingerprint"])
    if source != data_fingerprint or logits.shape != train.labels.shape:
        raise ValueError(f"the teacher in {config.teacher} was trained on other data than {config.data_root}")
    return torch.from_numpy(logits.astype(np.float32))


def train_student(config: SignalTrainConfig, *, progress: bool = True) -> dict:
    """Train the student, keep the best validation epoch, score the test split, write the run; returns the report."""
    torch.manual_seed(config.seed)
    splits = _splits(config.data_root)
    train = splits["train"]
    data_fingerprint = fingerprint(config.data_root)
    teacher = _teacher_logits(config, train, data_fingerprint)
    model = RecurrentStudent(train.signals.shape[2], config.hidden, config.layers, config.dropout)
    y = torch.from_numpy(train.labels)
    inputs = {s: torch.from_numpy(w.signals) for s, w in splits.items()}

    def loss_of(logits: Tensor, batch: Tensor) -> Tensor:
        soft = None if teacher is None else teacher[batch]
        return distillation_loss(logits, y[batch], soft, lam=config.lam)

    fitted = fit(model, model, loss_of, inputs["train"], inputs["validation"], splits["validation"],
                 epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                 desc=f"student lam {config.lam:g}", progress=progress)
    logits = {s: predict(model, inputs[s]) for s in ("validation", "test")}
    n = sum(p.numel() for p in model.parameters())
    info = ModelInfo(method=STUDENT_METHOD, backbone=f"bilstm{config.layers}x{config.hidden}", input_kind="signal",
                     input_size=train.signals.shape[1], channels=train.signals.shape[2], parameters=n,
                     trainable_parameters=n)
    report = _write_run(config.output, model.state_dict(), config, info, fitted, logits, splits,
                        config_fields=config.model_dump(), data_root=config.data_root,
                        data_fingerprint=data_fingerprint)
    log.info("student: test %s (best epoch %d, %.0f s)", report["test"], report["best_epoch"], fitted.seconds)
    return report


def train_teacher(config: TeacherTrainConfig, *, progress: bool = True) -> dict:
    """Train the vision teacher's head on the frozen encoder's columns of the rendered plots; writes the run and
    the teacher's logits on the training windows; returns the report."""
    from kdcore.series_plot import PlotSpec, render_plots
    from training.backbones import build_encoder
    from training.signals.teacher import PlotTeacher, teacher_loss

    torch.manual_seed(config.seed)
    splits = _splits(config.data_root)
    train = splits["train"]
    steps, leads = train.signals.shape[1:]
    if config.vlm is not None:
        from training.signals.vlm import load_vlm_teacher

        teacher, method, backbone = load_vlm_teacher(config.vlm, steps).eval(), VLM_TEACHER_METHOD, config.vlm.name
    else:
        teacher = PlotTeacher(build_encoder(config.backbone), leads, steps).eval()
        method, backbone = TEACHER_METHOD, config.backbone
    spec = PlotSpec(size=config.plot_size)
    columns = {}
    with torch.no_grad():  # the encoder is frozen: what the head reads is computed once per window
        for split, windows in splits.items():
            plots = torch.from_numpy(render_plots(windows.signals, spec))
            columns[split] = torch.cat([teacher.frozen_features(plots[i:i + FEATURE_BATCH])
                                        for i in range(0, len(plots), FEATURE_BATCH)])
    y = torch.from_numpy(train.labels)

    def loss_of(logits: Tensor, batch: Tensor) -> Tensor:
        return teacher_loss(logits, y[batch], alpha=config.alpha)

    fitted = fit(teacher.head, teacher.head, loss_of, columns["train"], columns["validation"], splits["validation"],
                 epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                 desc=f"teacher alpha {config.alpha:g}", progress=progress)
    logits = {s: predict(teacher.head, columns[s]) for s in splits}
    info = ModelInfo(method=method, backbone=backbone, input_kind="signal", input_size=steps,
                     channels=leads, plot_size=config.plot_size,
                     parameters=sum(p.numel() for p in teacher.parameters()),
                     trainable_parameters=sum(p.numel() for p in teacher.head.parameters()))
    # The PlotTeacher's whole state (the encoder's weights ship with it); a VLM's head only (it is GBs of frozen
    # weights the user keeps in their folder).
    state = teacher.head.state_dict() if method == VLM_TEACHER_METHOD else teacher.state_dict()
    data_fingerprint = fingerprint(config.data_root)
    report = _write_run(config.output, state, config, info, fitted, logits, splits,
                        config_fields=config.model_dump(), data_root=config.data_root,
                        data_fingerprint=data_fingerprint)
    np.savez_compressed(Path(config.output) / TEACHER_LOGITS_FILE, train=logits["train"].astype(np.float32),
                        fingerprint=np.array(data_fingerprint))
    log.info("teacher: test %s (best epoch %d, %.0f s)", report["test"], report["best_epoch"], fitted.seconds)
    return report


def _parser(prog: str, description: str, config: type[BaseModel]) -> argparse.ArgumentParser:
    from kdcore.options import add_config_options

    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_options(parser, config)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """``kd-train-signal``: one option per :class:`SignalTrainConfig` field."""
    return _parser(
        "kd-train-signal",
        "Train the recurrent student of the time-series family (a 2-layer bidirectional LSTM that scores every step "
        "of a two-lead ECG window) on a dataset from kd-signal-data, from the labels (--lam 0) or distilling the "
        "vision teacher (--teacher RUN --lam 0.5 or 1); keeps the epoch with the best per-step AUC-PR on validation "
        "and writes the weights, the stats JSON and a report (per-step AUROC, AUC-PR, VUS-PR, window AUROC, MSP/MSR).",
        SignalTrainConfig,
    )


def build_teacher_parser() -> argparse.ArgumentParser:
    """``kd-train-signal-teacher``: one option per :class:`TeacherTrainConfig` field."""
    return _parser(
        "kd-train-signal-teacher",
        "Train the vision teacher of the time-series family: a frozen pretrained image encoder reads each window's "
        "plot (kdcore.series_plot) and a trained head (LSTM over the plot's columns) gives per-step logits, with the "
        "source's loss alpha * (1 - cos) + (1 - alpha) * BCE on Gaussian-smoothed labels. Writes the run (weights, "
        "stats JSON, report) and its logits on the training windows for the students.",
        TeacherTrainConfig,
    )


def _run(parser: argparse.ArgumentParser, config_type: type[BaseModel], train: Callable, argv: list[str] | None) -> int:
    import sys

    from pydantic import ValidationError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_type.model_validate(vars(parser.parse_args(argv)))
    except ValidationError as e:
        print(f"invalid options:\n{e}", file=sys.stderr)
        return 2
    try:
        report = train(config)
    except (FileNotFoundError, ValueError) as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return 1
    test = report["test"]
    print(f"test: step AUROC {test['step_auroc']:.3f}, step AUC-PR {test['step_auc_pr']:.3f}, VUS-PR "
          f"{test['vus_pr']:.3f}, window AUROC {test['window_auroc']:.3f}, MSP {test['msp']:.3f}, MSR "
          f"{test['msr']:.3f} (best epoch {report['best_epoch']}, {report['seconds']:.0f} s); wrote {config.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``kd-train-signal``; prints the test metrics."""
    return _run(build_parser(), SignalTrainConfig, train_student, argv)


def teacher_main(argv: list[str] | None = None) -> int:
    """Run ``kd-train-signal-teacher``; prints the test metrics."""
    return _run(build_teacher_parser(), TeacherTrainConfig, train_teacher, argv)
