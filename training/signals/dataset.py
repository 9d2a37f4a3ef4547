"""The synthetic ECG dataset on disk: train / validation / test windows, each split from records of its own.

Layout (``<root>/``; the names live in :mod:`kdcore.series_io`, which the console reads them with)::

    meta.json                   sampling rate, window, leads, anomaly kinds (label index -> name), seed, counts
    train/signals.npy           (N, T, C) float32, mV
    train/labels.npy            (N, T) uint8: 1 on anomalous steps
    train/kinds.npy             (N, T) uint8: the kind's index in meta.json's "kinds" (0: normal)
    train/plots/00000.png ...   each window as its vision teacher reads it (kdcore.series_plot), with --plots
    validation/...  test/...    the same

Splits never share a record (a record's rhythm would otherwise leak from training into the test split), and
each split's records come from their own seed, so the test split is the same whatever the training split's size.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from kdcore.atomic import swap_in
from kdcore.contract import NORMAL
from kdcore.series_io import DATASET_META as META_FILE
from kdcore.series_io import SPLIT_ARRAYS as ARRAYS
from kdcore.series_io import SPLITS, read_split
from kdcore.series_plot import render_plot
from training.demo_data.dataset import write_png
from training.signals.ecg import KINDS, LEADS, SAMPLING_RATE, WINDOW, Windows, make_windows

PLOTS_DIR = "plots"


class SignalDataConfig(BaseModel):
    """How much synthetic ECG to write, and how (``kd-signal-data`` has one option per field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    records: dict[str, int] = Field(default_factory=lambda: {"train": 24, "validation": 4, "test": 6},
                                    description="simulated records per split (each with its own rhythm)")
    windows_per_record: int = Field(50, ge=1, description="consecutive 2 s windows cut from each record")
    anomaly_fraction: float = Field(0.5, ge=0, le=1, description="probability that a window gets one anomaly")
    kinds: tuple[str, ...] = Field(tuple(KINDS), description="anomaly kinds to inject")
    noise: float = Field(0.02, ge=0, description="neurokit2's noise level")
    seed: int = Field(0, description="everything is drawn from it")
    plots: bool = Field(True, description="also write each window's plot image (kdcore.series_plot)")


def write_signal_dataset(root: Path, config: SignalDataConfig | None = None) -> dict:
    """Simulate and write the three splits under ``root`` (replacing what is there, atomically); returns meta.

    Raises:
        ValueError: A split missing from ``config.records``, or an unknown anomaly kind.
    """
    config = config or SignalDataConfig()
    missing = [s for s in SPLITS if s not in config.records]
    if missing:
        raise ValueError(f"records per split needs {list(SPLITS)}, missing {missing}")
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.staging-", dir=root.parent))
    try:
        counts = {}
        for index, split in enumerate(SPLITS):
            windows = make_windows(config.records[split], config.windows_per_record, config.seed * 10 + index,
                                   anomaly_fraction=config.anomaly_fraction, kinds=config.kinds, noise=config.noise)
            (staging / split).mkdir()
            for name in ARRAYS:
                np.save(staging / split / f"{name}.npy", getattr(windows, name))
            if config.plots:
                (staging / split / PLOTS_DIR).mkdir()
                for i, signal in enumerate(windows.signals):
                    write_png(staging / split / PLOTS_DIR / f"{i:05d}.png", render_plot(signal))
            counts[split] = {"windows": int(len(windows.labels)),
                             "anomalous_windows": int(windows.labels.any(1).sum()),
                             "anomalous_steps": int(windows.labels.sum())}
        meta = {"sampling_rate": SAMPLING_RATE, "window": WINDOW, "leads": list(LEADS),
                "kinds": [NORMAL, *KINDS], "config": config.model_dump(mode="json"), "splits": counts}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        swap_in(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta


def load_split(root: Path, split: str) -> Windows:
    """One split's windows.

    Raises:
        FileNotFoundError: The dataset or the split is not there (write it with ``kd-signal-data``).
    """
    return Windows(**read_split(root, split))


def fingerprint(root: Path) -> str:
    """SHA-256 (hex) over the dataset's meta.json and every split's arrays: the stats JSON records which data a
    model was trained and calibrated on, and a student checks its teacher's logits are for the same windows."""
    import hashlib

    digest = hashlib.sha256((Path(root) / META_FILE).read_bytes())
    for split in SPLITS:
        for name in ARRAYS:
            digest.update((Path(root) / split / f"{name}.npy").read_bytes())
    return digest.hexdigest()
