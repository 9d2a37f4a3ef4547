"""Pictures of a training run: loss curve, score histograms against the threshold, example heatmaps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kdcore.contract import ANOMALOUS, DECISION  # noqa: E402
from kdcore.stats import Stats  # noqa: E402
from training.data import Sample, load_image  # noqa: E402
from training.evaluate import Predictions  # noqa: E402


def plot_history(history: list[dict[str, float]], path: Path) -> Path:
    """Training loss per epoch, with the validation criterion where it was measured."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["epoch"] for h in history], [h["loss"] for h in history], label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (sum over scales of 1 - cos)")
    evals = [h for h in history if "val_selection" in h]
    if evals:
        ax2 = ax.twinx()
        ax2.plot([h["epoch"] for h in evals], [h["val_selection"] for h in evals], "o-", color="tab:orange",
                 label="validation criterion")
        ax2.set_ylabel("validation criterion")
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_score_histogram(stats: Stats, preds: dict[str, Predictions], path: Path) -> Path:
    """Calibrated image scores of each split, good vs anomalous, with the 0.5 decision line."""
    fig, axes = plt.subplots(1, len(preds), figsize=(4.5 * len(preds), 3.5), squeeze=False)
    bins = np.linspace(0, 1, 41)
    for ax, (name, pred) in zip(axes[0], preds.items()):
        calibrated = stats.image_calibration.apply(pred.scores)
        for label, colour, text in ((0, "tab:green", "good"), (1, "tab:red", ANOMALOUS)):
            sel = calibrated[pred.labels == label]
            if sel.size:
                ax.hist(sel, bins=bins, alpha=0.6, color=colour, label=f"{text} ({sel.size})")
        ax.axvline(DECISION, color="k", linestyle="--", label="threshold")
        ax.set_title(name)
        ax.set_xlabel("calibrated score")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_heatmaps(stats: Stats, samples: list[Sample], pred: Predictions, path: Path, count: int = 8) -> Path:
    """Images with their calibrated anomaly maps and ground-truth outlines: the most anomalous first."""
    order = np.argsort(-pred.scores)[:count]
    fig, axes = plt.subplots(2, len(order), figsize=(2.2 * len(order), 4.6), squeeze=False)
    size = pred.maps.shape[-1]
    for col, i in enumerate(order):
        image = load_image(samples[i].path, size)
        score = float(stats.image_calibration.apply(pred.scores[i : i + 1])[0])
        axes[0, col].imshow(image)
        axes[0, col].set_title(f"{samples[i].defect}\n{score:.2f}", fontsize=8)
        axes[1, col].imshow(image)
        axes[1, col].imshow(stats.pixel_calibration.apply(pred.maps[i]), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        if pred.masks[i].any():
            axes[1, col].contour(pred.masks[i], levels=[0.5], colors="white", linewidths=0.8)
        for ax in axes[:, col]:
            ax.axis("off")
    fig.suptitle("top: image, defect type, calibrated score; bottom: calibrated map (0.5 = pixel threshold), mask outline")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
