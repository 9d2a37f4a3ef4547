"""Training the recurrent student on the ECG windows, with the epoch kept by validation and metrics on test.

The epoch whose weights are kept is the one with the best per-step average precision (AUC-PR) on the validation
split; the test split is scored once, at the end, with those weights. Reported per split: per-step AUROC and
AUC-PR (scikit-learn's ``roc_auc_score`` / ``average_precision_score``), the window-level AUROC (a window with any
anomalous step against its highest step score), and MSP/MSR (:mod:`kdcore.series_metrics`, the source's measure).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import save_file

from kdcore.series_metrics import squeezed_precision_recall
from training.signals.dataset import load_split
from training.signals.ecg import Windows
from training.signals.student import RecurrentStudent, distillation_loss

log = logging.getLogger(__name__)

WEIGHTS_FILE, REPORT_FILE, CONFIG_FILE = "model.safetensors", "report.json", "train_config.json"
#: Gradient norm clip of the recurrent student's steps.
CLIP_NORM = 1.0


class SignalTrainConfig(BaseModel):
    """How to train the recurrent student (``kd-train-signal`` has one option per field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_root: Path = Field(Path("data/ecg"), description="dataset written by kd-signal-data")
    output: Path = Field(Path("runs/ecg_student"), description="run folder to write")
    epochs: int = Field(40, ge=1, description="passes over the training windows")
    batch_size: int = Field(32, ge=1, description="windows per step")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    lam: float = Field(0.0, ge=0, le=1, description="weight of the teacher's soft labels (0: labels only; the "
                       "vision teacher it distils from is not built yet, so only 0 is accepted)")
    hidden: int = Field(128, ge=1, description="LSTM width per direction")
    layers: int = Field(2, ge=1, description="stacked LSTM layers")
    dropout: float = Field(0.3, ge=0, lt=1, description="dropout between LSTM layers")
    seed: int = Field(0, description="weights and batch order")


    @model_validator(mode="after")
    def _teacher_needed(self) -> SignalTrainConfig:
        if self.lam > 0:
            raise ValueError("lam > 0 distils from the vision teacher, which this version does not train yet")
        return self


@dataclass(frozen=True)
class SplitMetrics:
    """Per-step and window-level quality on one split."""

    step_auroc: float | None
    step_auc_pr: float | None
    window_auroc: float | None
    msp: float | None
    msr: float | None


def evaluate(logits: np.ndarray, windows: Windows) -> SplitMetrics:
    """The metrics of per-step logits ``(N, T)`` against a split's labels."""
    from sklearn.metrics import average_precision_score, roc_auc_score

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
        window_auroc=float(roc_auc_score(window_labels, logits.max(1))) if window_both else None,
        msp=squeezed.msp, msr=squeezed.msr,
    )


@torch.no_grad()
def predict(model: RecurrentStudent, signals: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Per-step logits ``(N, T)`` of a model in eval mode."""
    model.eval()
    return np.concatenate([model(torch.from_numpy(signals[i:i + batch_size])).numpy()
                           for i in range(0, len(signals), batch_size)])


def train_student(config: SignalTrainConfig, *, progress: bool = True) -> dict:
    """Train, keep the best validation epoch, score the test split, write the run folder; returns the report."""
    torch.manual_seed(config.seed)
    train, validation, test = (load_split(config.data_root, s) for s in ("train", "validation", "test"))
    model = RecurrentStudent(train.signals.shape[2], config.hidden, config.layers, config.dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    rng = np.random.default_rng(config.seed)
    x, y = torch.from_numpy(train.signals), torch.from_numpy(train.labels)
    history, best, best_state = [], -1.0, None
    started = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.epochs, desc="train student", unit="epoch")
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = rng.permutation(len(x))
        losses = []
        for i in range(0, len(order), config.batch_size):
            batch = torch.from_numpy(order[i:i + config.batch_size])
            loss = distillation_loss(model(x[batch]), y[batch], lam=config.lam)
            optimizer.zero_grad()
            loss.backward()
            # Recurrent gradients spike (a run without clipping lost half its validation AUC-PR in one epoch).
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
            optimizer.step()
            losses.append(loss.item())
        metrics = evaluate(predict(model, validation.signals), validation)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), **asdict(metrics)})
        criterion = metrics.step_auc_pr if metrics.step_auc_pr is not None else -float(np.mean(losses))
        if criterion > best:
            best, best_state = criterion, {k: v.detach().clone() for k, v in model.state_dict().items()}
            history[-1]["kept"] = True
        if bar is not None:
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", val_auc_pr=f"{criterion:.3f}")
            bar.update()
    if bar is not None:
        bar.close()
    model.load_state_dict(best_state)
    seconds = time.perf_counter() - started
    report = {
        "validation": asdict(evaluate(predict(model, validation.signals), validation)),
        "test": asdict(evaluate(predict(model, test.signals), test)),
        "best_epoch": max(h["epoch"] for h in history if h.get("kept")),
        "seconds": seconds, "parameters": sum(p.numel() for p in model.parameters()), "history": history,
    }
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(config.model_dump_json(indent=2) + "\n")
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    log.info("student: test %s (best epoch %d, %.0f s)", report["test"], report["best_epoch"], seconds)
    return report


def build_parser() -> "argparse.ArgumentParser":
    """One option per :class:`SignalTrainConfig` field."""
    import argparse

    from kdcore.options import add_config_options

    parser = argparse.ArgumentParser(
        prog="kd-train-signal",
        description="Train the recurrent student of the time-series family (a 2-layer bidirectional LSTM that scores "
        "every step of a two-lead ECG window) on a dataset from kd-signal-data; keeps the epoch with the best "
        "per-step AUC-PR on validation and writes the weights and a report with per-step AUROC and AUC-PR, "
        "window AUROC and MSP/MSR on validation and test.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_options(parser, SignalTrainConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``kd-train-signal``; prints the test metrics."""
    import sys

    from pydantic import ValidationError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = SignalTrainConfig.model_validate(vars(build_parser().parse_args(argv)))
    except ValidationError as e:
        print(f"invalid options:\n{e}", file=sys.stderr)
        return 2
    try:
        report = train_student(config)
    except FileNotFoundError as e:
        print(f"kd-train-signal: {e}", file=sys.stderr)
        return 1
    test = report["test"]
    print(f"test: step AUROC {test['step_auroc']:.3f}, step AUC-PR {test['step_auc_pr']:.3f}, window AUROC "
          f"{test['window_auroc']:.3f}, MSP {test['msp']:.3f}, MSR {test['msr']:.3f} (best epoch "
          f"{report['best_epoch']}, {report['seconds']:.0f} s); wrote {config.output}")
    return 0
