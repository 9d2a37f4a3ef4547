"""Writing a detector into a Triton model repository, atomically.

Everything is built and checked in a staging folder beside the repository (exports, parity, configs, the
scorer with its stats JSON and the client's validation samples); only then are the model folders swapped in by
renames. A failed export leaves the previous repository as it was.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import training.stats
from export.network import PARITY_ATOL, ParityReport, check_parity, export_onnx, export_torchscript
from export.scorer.scorer import Scorer
from export.triton_config import ModelNames, ensemble_config, network_config, scorer_config
from training.checkpoint import load_checkpoint
from training.runs import RunPaths
from training.stats import load_stats

log = logging.getLogger(__name__)

SCORER_SOURCES = Path(__file__).with_name("scorer")
#: Folder inside the ensemble's model folder that holds the client's validation samples.
VALIDATION_DIR = "validation"
SAMPLES_FILE = "samples.npz"
MANIFEST_FILE = "manifest.json"
#: The client's tolerance against the stored references (same as the export parity tolerance).
CLIENT_ATOL = PARITY_ATOL


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    repository: Path
    names: ModelNames
    parity: list[ParityReport]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _copy_sources(dest: Path) -> None:
    """The scorer adapter, its logic, and the one definition of the stats schema and calibration."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(SCORER_SOURCES / "model.py", dest / "model.py")
    shutil.copy2(SCORER_SOURCES / "scorer.py", dest / "scorer.py")
    shutil.copy2(inspect.getsourcefile(training.stats), dest / "stats.py")


def _swap_in(staging: Path, repository: Path, folders: list[str]) -> None:
    """Rename each staged model folder into the repository, restoring the old ones if any rename fails."""
    repository.mkdir(parents=True, exist_ok=True)
    backup = Path(tempfile.mkdtemp(prefix=f".{repository.name}.old-", dir=repository.parent))
    moved: list[str] = []
    try:
        for name in folders:
            if (repository / name).exists():
                os.replace(repository / name, backup / name)
            moved.append(name)
            os.replace(staging / name, repository / name)
    except BaseException:
        for name in moved:
            if (repository / name).exists() and not (staging / name).exists():
                os.replace(repository / name, staging / name)
            if (backup / name).exists():
                os.replace(backup / name, repository / name)
        raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)


def export_run(
    run_dir: Path, repository: Path, name: str = "ad_inference", *, threads: int | None = None
) -> ExportResult:
    """Export one trained run into ``repository`` as four models under the ensemble ``name``.

    Args:
        run_dir: A finished training run (weights, config, stats JSON, validation samples).
        repository: The Triton model repository (created if missing; other models in it are kept).
        name: Ensemble name clients call; the other models are ``<name>_onnx``, ``<name>_torchscript`` and
            ``<name>_scorer``.
        threads: CPU threads per network instance; default: all cores.

    Returns:
        The :class:`ExportResult`.

    Raises:
        ExportParityError: An export differs from the eager model (nothing is written).
        StatsError: The run's stats JSON is malformed or belongs to another model.
        FileNotFoundError: The run folder is incomplete.
    """
    paths = RunPaths(Path(run_dir))
    model, config = load_checkpoint(paths.root)
    stats = load_stats(paths.stats, input_size=config.image_size, backbone=config.backbone.value)
    samples = np.load(paths.samples, allow_pickle=False)
    images = samples["images"]
    names = ModelNames(name)
    size = config.image_size
    threads = threads or os.cpu_count() or 1
    repository = Path(repository).resolve()
    repository.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repository.name}.staging-", dir=repository.parent))
    try:
        onnx_path = staging / names.onnx / "1" / "model.onnx"
        ts_path = staging / names.torchscript / "1" / "model.pt"
        onnx_path.parent.mkdir(parents=True)
        ts_path.parent.mkdir(parents=True)
        export_onnx(model, onnx_path)
        export_torchscript(model, ts_path)
        (raw_score, raw_map), parity = check_parity(model, images, onnx_path, ts_path)

        _write(staging / names.onnx / "config.pbtxt", network_config(names, size, torchscript=False, threads=threads))
        _write(staging / names.torchscript / "config.pbtxt", network_config(names, size, torchscript=True, threads=threads))
        _write(staging / names.scorer / "config.pbtxt", scorer_config(names, size))
        shutil.copy2(paths.stats, staging / names.scorer / "stats.json")
        _copy_sources(staging / names.scorer / "1")
        _write(staging / names.ensemble / "config.pbtxt", ensemble_config(names, size))
        (staging / names.ensemble / "1").mkdir(parents=True)  # an ensemble still needs a version folder

        scored = Scorer(stats)(raw_score, raw_map)
        validation = staging / names.ensemble / VALIDATION_DIR
        validation.mkdir()
        np.savez_compressed(
            validation / SAMPLES_FILE,
            images=images,
            labels=samples["labels"],
            names=samples["names"],
            raw_score=raw_score,
            raw_map=raw_map,
            score=scored.score,
            anomaly_map=scored.anomaly_map,
            label=scored.label.astype("U"),
        )
        manifest = {
            "model": names.ensemble,
            "networks": [names.onnx, names.torchscript],
            "input_size": size,
            "atol": CLIENT_ATOL,
            "image_threshold": stats.image_threshold.value,
            "test_image_auroc": stats.test_metrics.image_auroc,
            "parity": [r.__dict__ for r in parity],
        }
        _write(validation / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
        _swap_in(staging, repository, [names.onnx, names.torchscript, names.scorer, names.ensemble])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s into %s", name, repository)
    return ExportResult(repository, names, parity)
