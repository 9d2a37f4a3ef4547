"""Training KD-AE on one digit, writing its run folder, and the per-digit AUROC sweep.

Data discipline as for the image models: both networks train on ``train`` normal vectors only (the student
also on perturbed copies of them, :func:`~training.kdae.data.perturb_normals`; no anomalous digit is ever
seen in training); ``holdout`` and the validation normals give the good-score statistics and the calibration
scale; ``validation`` gives the threshold; ``test`` is scored once for the reported metrics. There is no
model selection: the weights after the last epoch are kept.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import save_file
from torch import nn

from kdcore.metrics import f1_at_threshold, image_auroc
from kdcore.stats import Metrics, ModelInfo, ScoreStatistics, Stats, Threshold, TrainingFacts, save_stats
from training.calibrate import IMAGE_GOOD_QUANTILE, choose_threshold, fit_calibration
from training.kdae.data import (
    DATASET_NAME,
    NUM_FEATURES,
    DigitSplits,
    digits_fingerprint,
    load_digit_data,
    make_digit_splits,
    perturb_normals,
)
from training.kdae.model import DenseAutoencoder, KDAEStudentScorer, StudentMLP, teacher_path
from training.runs import RunPaths

log = logging.getLogger(__name__)

#: ``model.method`` and ``model.backbone`` in the stats JSON.
METHOD = "kdae_vector"
BACKBONE = "mlp"
#: Perturbed copies of the training normals the student sees per epoch (fresh every epoch).
PERTURBED_COPIES = 2


class KDAEConfig(BaseModel):
    """Everything that decides a KD-AE run."""

    model_config = ConfigDict(extra="forbid")

    digit: int = Field(0, ge=0, le=9, description="the normal digit; the nine others are the anomalies")
    seed: int = Field(0, description="seed of the splits, the initialisations, the batches and the perturbations")
    epochs_teacher: int = Field(200, ge=1, description="epochs of the autoencoder teacher")
    epochs_student: int = Field(100, ge=1, description="epochs of the MLP student (cosine-annealed learning rate)")
    lr: float = Field(0.01, gt=0, description="Adam learning rate of both networks")
    batch_size: int = Field(32, ge=1, description="batch size of both networks")
    output: Path = Field(Path("runs/kdae_digits"), description="run folder (weights, stats JSON, samples)")


@dataclass
class FittedKDAE:
    """Trained networks with their data, before anything is written."""

    config: KDAEConfig
    splits: DigitSplits
    teacher: DenseAutoencoder
    scorer: KDAEStudentScorer
    history: list[dict[str, float]]
    steps: int
    seconds: float

    def student_scores(self, x: np.ndarray) -> np.ndarray:
        """Deployed raw scores ``(n,)`` of vectors ``(n, 64)``."""
        with torch.no_grad():
            return self.scorer(torch.from_numpy(np.asarray(x, dtype=np.float32)))[:, 0].numpy()

    def teacher_scores(self, x: np.ndarray) -> np.ndarray:
        """The teacher's reconstruction MSE ``(n,)`` of vectors ``(n, 64)``."""
        with torch.no_grad():
            return self.teacher.reconstruction_mse(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()


@dataclass
class KDAEResult:
    """A finished, written run."""

    paths: RunPaths
    stats: Stats
    fitted: FittedKDAE

    @property
    def student(self) -> KDAEStudentScorer:
        """The deployed scorer."""
        return self.fitted.scorer

    @property
    def teacher(self) -> DenseAutoencoder:
        """The teacher autoencoder."""
        return self.fitted.teacher

    def summary(self) -> str:
        """Two lines for the terminal: where the run folder is, and the test metrics."""
        m = self.stats.test_metrics
        return (f"digit {self.fitted.config.digit}: run folder {self.paths.root}\n"
                f"test: {m.num_good} normal, {m.num_anomalous} anomalous, image AUROC {m.image_auroc:.4f}, "
                f"F1 {m.image_f1:.4f} at threshold {self.stats.image_threshold.value:.5g}")


def _batches(n: int, batch_size: int) -> list[torch.Tensor]:
    return list(torch.randperm(n).split(batch_size))


def train_teacher(x: np.ndarray, config: KDAEConfig) -> tuple[DenseAutoencoder, list[float], int]:
    """Fit the autoencoder with MSE; returns it (eval mode), per-epoch mean losses and the step count."""
    teacher = DenseAutoencoder()
    opt = torch.optim.Adam(teacher.parameters(), lr=config.lr)
    data = torch.from_numpy(x)
    losses, steps = [], 0
    for _ in range(config.epochs_teacher):
        epoch = []
        for idx in _batches(len(data), config.batch_size):
            loss = F.mse_loss(teacher(data[idx]), data[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            epoch.append(loss.item())
            steps += 1
        losses.append(float(np.mean(epoch)))
    return teacher.eval(), losses, steps


def student_loss(student: nn.Module, teacher: DenseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """L1 between the student's output and ``log(1 + teacher reconstruction MSE)`` on a batch ``(N, 64)``."""
    with torch.no_grad():
        target = torch.log1p(teacher.reconstruction_mse(x)).unsqueeze(1)
    return F.l1_loss(student(x), target)


def train_student(
    x: np.ndarray, teacher: DenseAutoencoder, config: KDAEConfig, rng: np.random.Generator
) -> tuple[StudentMLP, list[float], int]:
    """Fit the student on the training normals plus :data:`PERTURBED_COPIES` fresh perturbed copies per epoch."""
    student = StudentMLP()
    opt = torch.optim.Adam(student.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs_student)
    losses, steps = [], 0
    for _ in range(config.epochs_student):
        perturbed = [perturb_normals(x, rng) for _ in range(PERTURBED_COPIES)]
        data = torch.from_numpy(np.concatenate([x, *perturbed]))
        epoch = []
        for idx in _batches(len(data), config.batch_size):
            loss = student_loss(student, teacher, data[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            epoch.append(loss.item())
            steps += 1
        schedule.step()
        losses.append(float(np.mean(epoch)))
    return student.eval(), losses, steps


def fit_kdae(config: KDAEConfig) -> FittedKDAE:
    """Train teacher and student for ``config`` (deterministic for a seed on a given machine); writes nothing."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, config.digit])
    splits = make_digit_splits(config.digit, config.seed)
    started = time.perf_counter()
    teacher, teacher_losses, teacher_steps = train_teacher(splits.train, config)
    student, student_losses, student_steps = train_student(splits.train, teacher, config, rng)
    seconds = time.perf_counter() - started
    history = [{"network": "teacher", "epoch": i + 1, "loss": v} for i, v in enumerate(teacher_losses)]
    history += [{"network": "student", "epoch": i + 1, "loss": v} for i, v in enumerate(student_losses)]
    return FittedKDAE(config, splits, teacher, KDAEStudentScorer(student).eval(), history,
                      teacher_steps + student_steps, seconds)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _metrics(split: str, labels: np.ndarray, scores: np.ndarray, threshold: Threshold) -> Metrics:
    both = 0 < labels.sum() < labels.size
    return Metrics(
        split=split,
        num_good=int((labels == 0).sum()),
        num_anomalous=int((labels == 1).sum()),
        image_auroc=_finite_or_none(image_auroc(labels, scores)) if both else None,
        image_f1=_finite_or_none(f1_at_threshold(labels, scores, threshold.value)) if labels.any() else None,
    )


def build_stats(fitted: FittedKDAE) -> Stats:
    """The stats JSON of a fitted model, from the student's (deployed) scores."""
    s, config = fitted.splits, fitted.config
    val_scores = fitted.student_scores(s.val_x)
    good = np.concatenate([fitted.student_scores(s.holdout), val_scores[s.val_y == 0]])
    image_good = ScoreStatistics.of(good)
    threshold = choose_threshold(good, s.val_y, val_scores, good_quantile=IMAGE_GOOD_QUANTILE)
    n_params = sum(p.numel() for p in fitted.scorer.parameters())
    student_history = [h for h in fitted.history if h["network"] == "student"]
    return Stats(
        model=ModelInfo(
            method=METHOD,
            backbone=BACKBONE,
            input_kind="vector",
            input_size=NUM_FEATURES,
            parameters=n_params,
            trainable_parameters=n_params,
        ),
        normalization=None,
        image_scores=image_good,
        pixel_scores=None,
        image_threshold=threshold,
        pixel_threshold=None,
        image_calibration=fit_calibration(threshold.value, image_good),
        pixel_calibration=None,
        validation_metrics=_metrics("validation", s.val_y, val_scores, threshold),
        test_metrics=_metrics("test", s.test_y, fitted.student_scores(s.test_x), threshold),
        training=TrainingFacts(
            # Epochs are the deployed student's; steps and seconds cover teacher and student together.
            epochs=config.epochs_student,
            best_epoch=config.epochs_student,
            steps=fitted.steps,
            seconds=round(fitted.seconds, 2),
            seed=config.seed,
            batch_size=config.batch_size,
            learning_rate=config.lr,
            final_loss=student_history[-1]["loss"],
            dataset=f"{DATASET_NAME}/digit={config.digit}",
            dataset_fingerprint=digits_fingerprint(config.digit),
            num_train=int(len(s.train)),
            torch_version=torch.__version__,
        ),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def save_validation_vectors(splits: DigitSplits, path: Path, per_class: int = 3) -> Path:
    """Store ``per_class`` normal and ``per_class`` anomalous validation vectors (anomalies of distinct digits).

    Keys: ``vectors`` float32 ``(n, 64)``, ``labels`` int64 (1 = anomalous), ``names`` (``"digit<d>/<index>"``,
    the index into ``load_digits()``).
    """
    _, target = load_digit_data()
    normal = [i for i, y in enumerate(splits.val_y) if y == 0][:per_class]
    anomalous: list[int] = []
    seen: set[int] = set()
    for i, y in enumerate(splits.val_y):
        d = int(target[splits.val_index[i]])
        if y == 1 and d not in seen and len(anomalous) < per_class:
            anomalous.append(i)
            seen.add(d)
    chosen = normal + anomalous
    np.savez_compressed(
        path,
        inputs=splits.val_x[chosen].astype(np.float32),
        labels=splits.val_y[chosen].astype(np.int64),
        names=np.array([f"digit{int(target[splits.val_index[i]])}/{int(splits.val_index[i])}" for i in chosen]),
    )
    return path


def train_kdae(config: KDAEConfig) -> KDAEResult:
    """Train one digit and write its run folder.

    Files (all paths from :class:`~training.runs.RunPaths`): ``model.safetensors`` (the student scorer),
    ``teacher.safetensors``, ``train_config.json``, ``stats.json``, ``history.json`` and
    ``validation_samples.npz``.
    """
    fitted = fit_kdae(config)
    stats = build_stats(fitted)
    paths = RunPaths(config.output)
    paths.root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in fitted.scorer.state_dict().items()}, str(paths.weights))
    save_file({k: v.detach().contiguous() for k, v in fitted.teacher.state_dict().items()},
              str(teacher_path(paths.root)))
    paths.config.write_text(config.model_dump_json(indent=2) + "\n", encoding="utf-8")
    paths.history.write_text(json.dumps(fitted.history, indent=1) + "\n", encoding="utf-8")
    save_stats(stats, paths.stats)
    save_validation_vectors(fitted.splits, paths.samples)
    log.info("digit %d: test image AUROC %.4f (student)", config.digit, stats.test_metrics.image_auroc or float("nan"))
    return KDAEResult(paths, stats, fitted)


class DigitAUROC(NamedTuple):
    """Test image AUROC of one digit's run."""

    student: float
    teacher: float


def auroc_per_digit(
    seed: int = 0,
    *,
    digits: tuple[int, ...] = tuple(range(10)),
    **overrides: float | int,
) -> dict[int, DigitAUROC]:
    """Train each digit as the normal class (in memory, nothing written) and score its test split.

    Args:
        seed: Seed of every run.
        digits: The normal digits to try.
        **overrides: Other :class:`KDAEConfig` fields (``epochs_teacher``, ``epochs_student``, ``lr``,
            ``batch_size``); defaults are the config's.

    Returns:
        ``{digit: DigitAUROC(student=..., teacher=...)}``: test image AUROC of the deployed student's scores
        and of the teacher's reconstruction MSE.
    """
    result = {}
    for digit in digits:
        fitted = fit_kdae(KDAEConfig(digit=digit, seed=seed, **overrides))
        s = fitted.splits
        result[digit] = DigitAUROC(
            student=image_auroc(s.test_y, fitted.student_scores(s.test_x)),
            teacher=image_auroc(s.test_y, fitted.teacher_scores(s.test_x)),
        )
    return result
