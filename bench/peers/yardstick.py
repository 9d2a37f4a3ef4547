"""The project's side of the anomalib yardstick: same splits, same weights, the project's metrics.

For one category and one anomalib method, :func:`run_peer` computes the splits ``kd-train`` computes (the same
:func:`training.data.make_splits` with :class:`training.config.TrainConfig`'s fractions and the given seed),
writes a job that fits on the ``train`` split only and scores the ``test`` split, runs
:mod:`bench.peers.anomalib_runner` in the peer venv, and measures the raw scores and maps it returns with
:mod:`kdcore.metrics` against the test split's labels and masks (masks read by the project's rule). So a peer row
and a project row of ``kd-bench-quality`` differ in the detector only. The peer never sees the holdout or the
validation split: PatchCore and PaDiM need no threshold to be ranked by AUROC and AUPRO.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.peers import anomalib_runner
from bench.peers.anomalib_runner import Job, PeerOutput
from bench.peers.venv import DEFAULT_VENV, ensure_peer_venv
from kdcore.metrics import aupro, image_auroc, image_auroc_by_defect, pixel_auroc

log = logging.getLogger(__name__)

#: The anomalib methods the yardstick runs (the runner's :data:`~bench.peers.anomalib_runner.LAYERS`).
PEERS = tuple(anomalib_runner.LAYERS)
#: How a peer is named in tables and JSON: the library first, so it is never mistaken for a project method.
PEER_PREFIX = "anomalib-"


class PeerRunError(RuntimeError):
    """The runner failed in the peer venv; the message has the end of its output."""


@dataclass(frozen=True)
class PeerResult:
    """One anomalib method on one category, measured like the project's methods.

    Attributes:
        category: The category.
        method: ``"patchcore"`` or ``"padim"``.
        image_auroc: Test split, from anomalib's raw image scores.
        pixel_auroc: Test split, from anomalib's raw anomaly maps.
        aupro: Test split, FPR up to 0.3 (:func:`kdcore.metrics.aupro`).
        fit_seconds: Wall time of fitting, feature extraction included (the peer's "train s").
        images_per_second: In-process throughput of anomalib's torch model (not served), NaN if not measured.
        batch_size: The batch of that throughput.
        threads: torch threads used by the peer.
        versions: The peer's anomalib, torch and timm versions.
        image_auroc_by_defect: Test split, each defect kind against the good images.
    """

    category: str
    method: str
    image_auroc: float
    pixel_auroc: float
    aupro: float
    fit_seconds: float
    images_per_second: float
    batch_size: int
    threads: int
    versions: str
    image_auroc_by_defect: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The row name: ``anomalib-patchcore``, ``anomalib-padim``."""
        return PEER_PREFIX + self.method


def _split_fractions() -> tuple[float, float]:
    """``kd-train``'s holdout and validation fractions, read from its config so they cannot drift apart."""
    from training.config import TrainConfig

    fields = TrainConfig.model_fields
    return fields["holdout_fraction"].default, fields["validation_fraction"].default


def make_job(data_root: Path, category: str, method: str, *, image_size: int, seed: int, weights: Path | None = None,
             threads: int | None = None, seconds: float = 3.0, batch_size: int = 8) -> tuple[Job, list]:
    """The runner's job for ``method`` on ``category``, and the test samples its results belong to, in order.

    Args:
        data_root: Dataset root holding ``<category>/`` (MVTec AD layout).
        category: The category.
        method: ``"patchcore"`` or ``"padim"``.
        image_size: The square input side (as ``kd-train --image-size``).
        seed: The split seed (as ``kd-train --seed``); it also seeds the peer.
        weights: The EfficientNet-Lite0 checkpoint; default: the one the project's teacher loads.
        threads: The peer's torch threads; default: every core.
        seconds: Duration of the peer's throughput measurement (0: none).
        batch_size: Batch of the peer's forwards and of its throughput.

    Raises:
        FileNotFoundError: No Lite0 checkpoint found.
        training.data.DatasetError: See :func:`training.data.make_splits`.
    """
    from training.backbones import BackboneName
    from training.backbones.weights import default_weights_path, how_to_get_weights
    from training.data import make_splits

    holdout_fraction, validation_fraction = _split_fractions()
    splits = make_splits(Path(data_root), category, holdout_fraction=holdout_fraction,
                         validation_fraction=validation_fraction, seed=seed)
    if weights is None:
        weights = default_weights_path(BackboneName.EFFICIENTNET_LITE0)
        if weights is None:
            raise FileNotFoundError("no EfficientNet-Lite0 weights: "
                                    + how_to_get_weights(BackboneName.EFFICIENTNET_LITE0))
    job = Job(method=method, train_images=[str(Path(s.path).resolve()) for s in splits.train],
              test_images=[str(Path(s.path).resolve()) for s in splits.test], image_size=image_size,
              weights=str(Path(weights).resolve()), seed=seed, threads=threads or os.cpu_count() or 1,
              batch_size=batch_size, seconds=seconds)
    return job, list(splits.test)


def measure(output: PeerOutput, samples: list, image_size: int) -> tuple[float, float, float]:
    """Image AUROC, pixel AUROC and AUPRO of the peer's raw results on ``samples`` (labels, masks by the project's
    rule: :func:`training.data.load_mask` at ``image_size``)."""
    from training.data import load_mask

    labels = np.array([s.label for s in samples], dtype=np.int64)
    masks = np.stack([load_mask(s.mask_path, image_size) for s in samples])
    return (image_auroc(labels, output.scores), pixel_auroc(masks, output.maps), aupro(masks, output.maps))


def run_runner(python: Path, job_path: Path, out_path: Path, *, features: bool = False) -> None:
    """Runs :mod:`~bench.peers.anomalib_runner` (as a file, so of the project only the torch-free
    :mod:`kdcore.imageio` is imported) with the peer venv's ``python``.

    Raises:
        PeerRunError: A non-zero exit; the message has the end of its output.
    """
    command = [str(python), str(Path(anomalib_runner.__file__).resolve()), str(job_path), str(out_path)]
    if features:
        command.append("--features")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(TQDM_DISABLE="1", PYTHONNOUSERSITE="1", PYTHONWARNINGS="ignore::FutureWarning")
    proc = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise PeerRunError(f"anomalib runner failed (exit {proc.returncode}) on {job_path}:\n{tail}")


def run_peer(data_root: Path, category: str, method: str, *, workdir: Path, image_size: int = 256, seed: int = 0,
             venv: Path = DEFAULT_VENV, weights: Path | None = None, threads: int | None = None,
             seconds: float = 3.0) -> PeerResult:
    """Fits and scores anomalib's ``method`` on ``category`` in the peer venv (created if needed) and measures it.

    The job and the result file stay in ``workdir`` for inspection.

    Raises:
        bench.peers.venv.PeerVenvError: The peer venv cannot be created.
        PeerRunError: The runner failed.
        ValueError: The result file does not match the job.
    """
    python = ensure_peer_venv(venv)
    job, samples = make_job(data_root, category, method, image_size=image_size, seed=seed, weights=weights,
                            threads=threads, seconds=seconds)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    job_path, out_path = workdir / "job.json", workdir / "result.npz"
    job.save(job_path)
    log.info("%s: anomalib %s, fitting on %d images, scoring %d", category, method, len(job.train_images),
             len(job.test_images))
    run_runner(python, job_path, out_path)
    output = PeerOutput.load(out_path, n_images=len(samples), image_size=image_size)
    i_auroc, p_auroc, pro = measure(output, samples, image_size)
    return PeerResult(category, method, i_auroc, p_auroc, pro, output.fit_seconds, output.images_per_second,
                      output.batch_size, output.threads, output.versions,
                      image_auroc_by_defect([s.defect for s in samples], output.scores))
