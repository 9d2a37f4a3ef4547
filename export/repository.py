"""Writing detectors into a Triton model repository, atomically.

Everything is built and checked in a staging folder beside the repository (exports, parity, configs, the
scorer with its stats JSON and the client's validation samples); only then are the model folders swapped in by
renames. A failed export leaves the previous repository as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import kdcore
from export.calibrated import check_calibrated, export_calibrated
from export.network import (
    PARITY_ATOL,
    ParityReport,
    check_parity,
    export_onnx,
    export_torchscript,
)
from export.triton_config import (
    ServingConfig,
    decoder_config,
    encoded_ensemble_config,
    ensemble_config,
    network_config,
    profile_ensemble_config,
    renderer_config,
    scorer_config,
)
from kdcore.contract import (
    FULL_PROFILE,
    INTERVALS,
    LABEL,
    MAP,
    MAP8_PROFILE,
    PATCH_GRID_PARAMETER,
    PLOT_INPUT,
    RAW_MAP,
    RAW_PRED,
    RAW_SCORE,
    SCORE,
    SCORE_PROFILE,
    SCORER_STATS_FILE,
    ModelNames,
    calibrated_network_spec,
    signal_input_spec,
)
from kdcore.manifest import VALIDATION_DIR, Manifest, ParityEntry, Profiles, ValidationSamples
from kdcore.scorer import Scorer
from training.checkpoint import load_deployable
from training.runs import RunPaths

log = logging.getLogger(__name__)

SCORER_SOURCES = Path(__file__).with_name("scorer")
DECODER_SOURCES = Path(__file__).with_name("decoder")
RENDERER_SOURCES = Path(__file__).with_name("renderer")
CORE_SOURCES = Path(kdcore.__file__).parent
#: The core modules each Python backend imports, shipped as a ``kdcore`` package beside its ``model.py``: the
#: server calibrates and decodes with the very code training and the client use. A test proves they import only
#: the standard library, numpy, OpenCV and pydantic.
SHIPPED_CORE = {
    "scorer": ("contract", "stats", "intervals", "regions", "scorer"),
    "decoder": ("contract", "imageio"),
    "renderer": ("contract", "series_plot"),
}
#: The client's tolerance against the stored references (same as the export parity tolerance).
CLIENT_ATOL = PARITY_ATOL


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote for one run."""

    repository: Path
    names: ModelNames
    parity: list[ParityReport]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _copy_backend(kind: str, dest: Path) -> None:
    """A Python backend's adapter (``model.py``) and the core modules it imports, as the package ``kdcore``."""
    sources = {"scorer": SCORER_SOURCES, "decoder": DECODER_SOURCES, "renderer": RENDERER_SOURCES}[kind]
    package = dest / "kdcore"
    package.mkdir(parents=True, exist_ok=True)
    shutil.copy2(sources / "model.py", dest / "model.py")
    for module in ("__init__", *SHIPPED_CORE[kind]):
        shutil.copy2(CORE_SOURCES / f"{module}.py", package / f"{module}.py")


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


def _stage_run(
    run_dir: Path, names: ModelNames, staging: Path, serving: ServingConfig
) -> tuple[list[ParityReport], list[str]]:
    """Export one run's models into ``staging``; returns the parity reports and the model folders written.

    Raises before the swap on any problem.
    """
    paths = RunPaths(Path(run_dir))
    model, spec, stats = load_deployable(paths.root)
    with np.load(paths.samples, allow_pickle=False) as z:
        samples = {k: z[k] for k in z.files}
    onnx_path = staging / names.onnx / "1" / "model.onnx"
    ts_path = staging / names.torchscript / "1" / "model.pt"
    onnx_path.parent.mkdir(parents=True)
    ts_path.parent.mkdir(parents=True)
    # A plot-reading time-series network is served behind the renderer: clients send the signal, the networks
    # take its plot, drawn by the one renderer training used.
    plotted = spec.input.name == PLOT_INPUT
    network_inputs = samples["inputs"]
    if plotted:
        from kdcore.series_plot import PlotSpec, render_plots

        network_inputs = render_plots(samples["inputs"], PlotSpec(size=int(stats.model.plot_size)))
    export_onnx(model, spec, onnx_path)
    export_torchscript(model, spec, ts_path)
    eager, parity = check_parity(model, spec, network_inputs, onnx_path, ts_path)

    threads = serving.threads_per_instance(os.cpu_count() or 1)
    for torchscript, folder in ((False, names.onnx), (True, names.torchscript)):
        config = network_config(folder, spec, torchscript=torchscript, threads=threads, serving=serving)
        _write(staging / folder / "config.pbtxt", config)
    _write(staging / names.scorer / "config.pbtxt", scorer_config(names, spec))
    shutil.copy2(paths.stats, staging / names.scorer / SCORER_STATS_FILE)
    _copy_backend("scorer", staging / names.scorer / "1")
    signal = signal_input_spec(*samples["inputs"].shape[1:]) if plotted else None
    grid = stats.training.patch_grid  # a patch-trained detector: clients tile frames by its grid
    parameters = {PATCH_GRID_PARAMETER: grid.model_dump_json()} if grid is not None else None
    _write(staging / names.ensemble / "config.pbtxt", ensemble_config(names, spec, signal, parameters))
    if plotted:
        _write(staging / names.renderer / "config.pbtxt", renderer_config(names, spec, signal))
        _copy_backend("renderer", staging / names.renderer / "1")
    (staging / names.ensemble / "1").mkdir(parents=True)  # an ensemble still needs a version folder
    image = spec.is_image  # image models: output profiles, the calibrated network and encoded files
    if image:
        fast_path = staging / names.fast / "1" / "model.onnx"
        fast_path.parent.mkdir(parents=True)
        export_calibrated(onnx_path, stats.image_calibration, fast_path)
        fast_parity = check_calibrated(stats.image_calibration, onnx_path, fast_path, samples["inputs"])
        log.info("calibrated network %s: max |diff| to the scorer %s", names.fast, fast_parity)
        fast_spec = calibrated_network_spec(int(spec.input.dims[0]))
        _write(staging / names.fast / "config.pbtxt",
               network_config(names.fast, fast_spec, torchscript=False, threads=threads, serving=serving))
        for profile in (SCORE_PROFILE, MAP8_PROFILE):
            name = names.profile(profile)
            _write(staging / name / "config.pbtxt", profile_ensemble_config(names, spec, profile))
            (staging / name / "1").mkdir(parents=True)
        _write(staging / names.decoder / "config.pbtxt", decoder_config(names, spec))
        _copy_backend("decoder", staging / names.decoder / "1")
        for profile in (FULL_PROFILE, SCORE_PROFILE):
            name = names.profile(profile, encoded=True)
            _write(staging / name / "config.pbtxt", encoded_ensemble_config(names, spec, profile))
            (staging / name / "1").mkdir(parents=True)

    raw = dict(zip((o.name for o in spec.outputs), eager))
    scorer = Scorer(stats)
    scored = scorer(raw[RAW_PRED], raw.get(RAW_MAP))
    references = {RAW_SCORE: raw[RAW_PRED], SCORE: scored.score, LABEL: scored.label.astype("U")}
    if scored.anomaly_map is not None:
        references.update({"raw_map": raw[RAW_MAP], MAP: scored.anomaly_map})
    if spec.is_series:
        references[INTERVALS] = scorer.intervals(scored.anomaly_map).astype("U")
    if plotted:
        references["network_inputs"] = network_inputs
    manifest = Manifest(
        model=names.ensemble,
        networks=names.networks,
        encoded_model=names.encoded if image else None,
        profiles=Profiles(score=names.score_only, map8=names.map8, encoded_score=names.encoded_score, fast=names.fast)
        if image else Profiles(),
        input=signal or spec.input,
        network_input=spec.input if plotted else None,
        has_map=spec.has_map,
        method=stats.model.method,
        atol=CLIENT_ATOL,
        image_threshold=stats.image_threshold.value,
        test_image_auroc=stats.test_metrics.image_auroc,
        parity=[ParityEntry(**asdict(r)) for r in parity],
    )
    ValidationSamples.save(
        staging / names.ensemble / VALIDATION_DIR, manifest,
        inputs=samples["inputs"], labels=samples["labels"], names=samples["names"], **references,
    )
    return parity, names.folders(image=image, rendered=plotted)


def export_runs(
    runs: Sequence[tuple[Path, str]],
    repository: Path,
    *,
    threads: int | None = None,
    serving: ServingConfig | None = None,
) -> list[ExportResult]:
    """Export several trained runs into ``repository`` in one atomic step.

    Each run becomes four models under its ensemble name ``name``: ``<name>`` (what clients call),
    ``<name>_onnx``, ``<name>_torchscript`` and ``<name>_scorer``; image models get six more: the output
    profiles ``<name>_score`` (no map) and ``<name>_map8`` (UINT8 map), the calibrated network ``<name>_fast``
    (score and decision from one ONNX graph, :mod:`export.calibrated`), and for encoded input ``<name>_decoder``,
    ``<name>_encoded`` (the ensemble that takes image files) and ``<name>_encoded_score`` (files in, score out).
    Other models in the repository are kept.

    Args:
        runs: ``(run folder, ensemble name)`` pairs.
        repository: The Triton model repository (created if missing).
        threads: CPU threads per network instance (shorthand for ``serving.threads``).
        serving: Network instances, threads, batching delay, GPU accelerator; default :class:`ServingConfig`.

    Returns:
        One :class:`ExportResult` per run, in order.

    Raises:
        ExportParityError: An export differs from its eager model (nothing is written).
        StatsError: A run's stats JSON is malformed or belongs to another model (nothing is written).
        FileNotFoundError: A run folder is incomplete (nothing is written).
        ValueError: Two runs share a name.
    """
    all_names = [ModelNames(name) for _, name in runs]
    if len({n.name for n in all_names}) != len(all_names):
        raise ValueError(f"ensemble names must be unique, got {[n.name for n in all_names]}")
    serving = serving or ServingConfig()
    if threads is not None:
        serving = serving.model_copy(update={"threads": threads})
    repository = Path(repository).resolve()
    repository.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repository.name}.staging-", dir=repository.parent))
    results = []
    try:
        folders: list[str] = []
        for (run_dir, _), names in zip(runs, all_names):
            parity, written = _stage_run(Path(run_dir), names, staging, serving)
            results.append(ExportResult(repository, names, parity))
            folders += written
        _swap_in(staging, repository, folders)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s into %s", ", ".join(n.name for n in all_names), repository)
    return results


def export_run(
    run_dir: Path, repository: Path, name: str = "ad_inference", *, threads: int | None = None
) -> ExportResult:
    """Export one trained run (see :func:`export_runs`)."""
    return export_runs([(Path(run_dir), name)], repository, threads=threads)[0]
