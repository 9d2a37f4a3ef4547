"""The training loop of every image method (rd4ad, student, multiteacher, mkd): training on good images, model
selection on validation, then statistics, thresholds and metrics. (``kdae_vector`` has its own trainer,
:func:`training.kdae.train_kdae`, which ``kd-train`` calls for it.)

Data discipline: the student trains on ``train`` only; ``holdout`` (good images from train/, never trained on)
gives the good-score statistics and the calibration scale; ``validation`` picks the kept epoch, the map's
composition, RD4AD's training (``denoising="auto"``) and the thresholds; ``test`` is touched once, at the end, for the reported metrics.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from kdcore.metrics import image_auroc, pixel_auroc
from kdcore.stats import ModelInfo, Normalization, ScoreStatistics, Stats, TrainingFacts, save_stats
from training.calibrate import IMAGE_GOOD_QUANTILE, PIXEL_GOOD_QUANTILE, choose_threshold, fit_calibration
from training.anomaly_map import MAP_SCALES
from training.checkpoint import build_detector, save_checkpoint, with_teacher_backbone
from training.config import TrainConfig
from training.distributed import DistributedRank, check_batch_size, loss_function
from training.data import DatasetSplits, ImageDataset, Sample, dataset_fingerprint, load_image, make_splits
from training.evaluate import Predictions, predict, predict_frames, split_metrics
from training.inference import DeployableDetector
from training.memory import MEMORY_WEIGHTS
from training.methods import ADAM_BETAS, Method, backbone_label
from training.plots import plot_heatmaps, plot_history, plot_score_histogram
from training.runs import RunPaths

log = logging.getLogger(__name__)

#: What ``denoising="auto"`` chooses between, in this order (a tie keeps the first: the paper's training).
DENOISING_AUTO = ("off", "broad")


@dataclass
class TrainResult:
    """What a finished run produced."""

    paths: RunPaths
    stats: Stats
    model: DeployableDetector


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a generator for the data loader's shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _selection_score(val: Predictions) -> float:
    """Validation criterion for keeping an epoch: image AUROC, pixel AUROC as tie-breaker."""
    if val.labels.min() == val.labels.max():
        return float("nan")
    return image_auroc(val.labels, val.scores) + 1e-3 * np.nan_to_num(pixel_auroc(val.masks, val.maps))


@dataclass
class _Trained:
    """One trained candidate as rank 0 keeps it: the weights of its best epoch on validation loaded, in eval mode."""

    config: TrainConfig
    model: DeployableDetector
    train_images: ImageDataset
    history: list[dict[str, float]]
    best_epoch: int
    best_score: float
    steps: int
    seconds: float


@dataclass
class _Fitted:
    """One trained candidate, before calibration: the weights kept on validation and how they were reached."""

    config: TrainConfig
    model: DeployableDetector
    history: list[dict[str, float]]
    best_epoch: int
    steps: int
    seconds: float
    composition: MapComposition
    validation: Predictions
    """The validation split scored by the finished candidate (its map composition applied)."""
    criterion: float
    """The validation criterion of ``validation`` (``-inf`` where validation has no anomalies)."""


def _train_candidate(
    config: TrainConfig, train_images: ImageDataset, validation: ImageDataset, progress: bool,
    group: DistributedRank | None,
) -> _Trained | None:
    """Train one detector from a fresh seed, validating every ``eval_every`` epochs to keep the best.

    Under torchrun (``group``) every process trains (:func:`training.distributed.loss_function`) and only rank 0
    validates and keeps weights; the others return ``None``.
    """
    generator = seed_everything(config.seed)
    model = build_detector(config)
    detector = model.detector
    optimizer = torch.optim.Adam(
        detector.trainable_parameters(), lr=config.learning_rate, betas=ADAM_BETAS.get(config.method, (0.9, 0.999))
    )
    # Every process iterates the same global batches (one process's order); a data-parallel loss takes its rows.
    loader = DataLoader(
        train_images,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(train_images.samples) > config.batch_size,
        generator=generator,
    )
    main = group is None or group.is_main
    # Timed from here: what a method prepares from the training images (statistics, the student's pool of
    # teacher targets) is part of its training time.
    started = time.perf_counter()
    with torch.no_grad():  # statistics some methods measure on the training images first (z-scores, tap scales)
        detector.prepare(model.normalize(batch["image"]) for batch in loader)
    steps_per_epoch = detector.steps_per_epoch(len(loader))
    steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch or steps_per_epoch)
    history: list[dict[str, float]] = []
    best_score, best_epoch, best_state = -np.inf, 0, None
    step = 0
    bar = tqdm(total=config.training_epochs * steps_per_epoch, desc="train", unit="step", disable=not progress)
    with loss_function(detector, group) as loss_of:
        for epoch in range(1, config.training_epochs + 1):
            model.train()
            losses = []
            for i, batch in enumerate(detector.epoch_batches(model.normalize(b["image"]) for b in loader)):
                if i >= steps_per_epoch:
                    break
                loss, value = loss_of(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(value)
                step += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.4f}")
            record = {"epoch": epoch, "loss": float(np.mean(losses))}
            if main and (epoch % config.eval_every == 0 or epoch == config.training_epochs):
                val = predict(model, validation)
                score = _selection_score(val)
                if not np.isfinite(score):  # no anomalies to validate against: fall back to the training loss
                    score = -record["loss"]
                record["val_selection"] = float(score)
                if score >= best_score:
                    best_score, best_epoch = score, epoch
                    best_state = copy.deepcopy(model.state_dict())
            history.append(record)
    bar.close()
    seconds = time.perf_counter() - started
    if not main:
        return None
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    log.info("kept epoch %d of %d (validation criterion %.4f)", best_epoch, config.training_epochs, best_score)
    return _Trained(config, model, train_images, history, best_epoch, best_score, step, seconds)


def _finish_candidate(trained: _Trained, validation: ImageDataset, progress: bool) -> _Fitted:
    """Choose a trained candidate's map composition and tap memory on validation, and score validation with them."""
    config, model = trained.config, trained.model
    composition = fit_map_composition(model, trained.train_images, validation, config, progress=progress)
    memory_started = time.perf_counter()  # the memory's bank and weight are fitted like PatchCore's: training time
    composition = fit_tap_memory(model, trained.train_images, validation, config, composition)
    seconds = trained.seconds + time.perf_counter() - memory_started
    val = predict(model, validation, desc="validation" if progress else None)
    criterion = _selection_score(val)
    criterion = criterion if np.isfinite(criterion) else -np.inf
    return _Fitted(config, model, trained.history, trained.best_epoch, trained.steps, seconds, composition, val,
                   criterion)


def denoising_candidates(config: TrainConfig) -> list[TrainConfig]:
    """The configurations ``train`` fits: both trainings of RD4AD for ``denoising="auto"``, else ``config`` alone."""
    if config.denoising != "auto":
        return [config]
    if config.method is not Method.RD4AD:
        return [config.model_copy(update={"denoising": "off"})]
    return [config.model_copy(update={"denoising": d}) for d in DENOISING_AUTO]


def train(config: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train, select, calibrate and evaluate one image detector (any method but ``kdae_vector``); write its run folder.

    With ``denoising="auto"`` (RD4AD) both trainings of :data:`DENOISING_AUTO` run from the same seed and the one
    with the higher validation criterion is kept (the first on a tie: the paper's); the training time counts
    both, and the run folder holds the kept one, its configuration and stats naming the choice.

    Args:
        config: The run's configuration.
        progress: Show progress bars.

    Returns:
        The run's paths, stats and the trained (best-on-validation) model.
    """
    result = _train(config, progress, None)
    assert result is not None  # one process is its own rank 0
    return result


def train_data_parallel(config: TrainConfig, group: DistributedRank, *, progress: bool = True) -> TrainResult | None:
    """:func:`train` as one of ``torchrun``'s processes, in the process group already joined.

    Every process trains its rows of each global batch of ``config.batch_size`` (:mod:`training.distributed`);
    rank 0 alone validates, keeps the best epoch, calibrates, measures and writes the run folder, with the same
    numbers one process would write; progress bars show on rank 0 only.

    Args:
        config: The run's configuration, the same on every process.
        group: This process's place.
        progress: Show progress bars (rank 0).

    Returns:
        Rank 0: what :func:`train` returns; the other processes: ``None``, having written nothing.

    Raises:
        ValueError: ``config.batch_size`` is not a multiple of the process count.
    """
    check_batch_size(config.batch_size, group)
    return _train(config, progress and group.is_main, group)


def _train(config: TrainConfig, progress: bool, group: DistributedRank | None) -> TrainResult | None:
    """:func:`train`'s work, on one process (``group`` ``None``) or as one of several; ``None`` on ranks above 0."""
    config = with_teacher_backbone(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    paths = RunPaths(config.output)
    splits: DatasetSplits = make_splits(
        config.data_root,
        config.category,
        holdout_fraction=config.holdout_fraction,
        validation_fraction=config.validation_fraction,
        seed=config.seed,
    )
    log.info("splits: train %d, holdout %d, validation %d, test %d",
             len(splits.train), len(splits.holdout), len(splits.validation), len(splits.test))
    grid = config.patch_grid  # patch training: windows train and select; whole images calibrate and are measured
    validation = ImageDataset(splits.validation, config.image_size, grid=grid)  # decoded once, scored every eval
    # Every candidate trains before any is finished: under torchrun the other processes take part in training
    # only, so they are not kept waiting while rank 0 fits maps and memories.
    # One training set for every candidate: the same images, decoded once.
    train_images = ImageDataset(splits.train, config.image_size, grid=grid)
    trained = [_train_candidate(candidate, train_images, validation, progress, group)
               for candidate in denoising_candidates(config)]
    if group is not None and not group.is_main:
        return None
    fits: list[_Fitted] = []
    for candidate in trained:
        assert candidate is not None
        fits.append(_finish_candidate(candidate, validation, progress))
        if config.denoising == "auto":
            log.info("denoising %s: validation criterion %.4f", candidate.config.denoising, fits[-1].criterion)
    best = max(fits, key=lambda f: f.criterion)  # max keeps the first of equals
    seconds = sum(f.seconds for f in fits)  # the choice is part of training: its time counts every candidate
    del fits  # the other candidate's weights are not needed any more
    config, model = best.config, best.model
    if grid is None:
        holdout = predict(model, ImageDataset(splits.holdout, config.image_size), desc="holdout" if progress else None)
        val = best.validation
        test = predict(model, ImageDataset(splits.test, config.image_size), desc="test" if progress else None)
    else:
        holdout, val, test = (
            predict_frames(model, ImageDataset(samples, config.image_size, grid=grid),
                           desc=name if progress else None)
            for name, samples in (("holdout", splits.holdout), ("validation", splits.validation), ("test", splits.test)))
    stats = _calibrate_and_evaluate(
        model, config, splits, (holdout, val, test), best.history, best.best_epoch, best.steps, seconds,
        best.composition,
    )
    save_checkpoint(model, config, paths)
    save_stats(stats, paths.stats)
    save_validation_samples(splits.validation, config.image_size, paths.samples)
    paths.history.write_text(json.dumps(best.history, indent=2) + "\n", encoding="utf-8")
    paths.plots.mkdir(exist_ok=True)
    plot_history(best.history, paths.plots / "loss.png")
    plot_score_histogram(stats, {"holdout (good)": holdout, "validation": val, "test": test}, paths.plots / "scores.png")
    plot_heatmaps(stats, splits.test, test, paths.plots / "test_heatmaps.png")
    return TrainResult(paths, stats, model)


@dataclass(frozen=True)
class MapComposition:
    """How the scored map is made from the network's distances, chosen after training."""

    scales: str = "all"
    """Which teacher scales the map sums (:data:`training.anomaly_map.MAP_SCALES`)."""
    positional: bool = False
    """Whether the map is a per-pixel z-score against the training images' maps."""
    memory_weight: float = 0.0
    """Weight of the tap memory's nearest-neighbour distances in the map (0: no memory)."""
    memory_vectors: int = 0
    """Vectors in the tap memory's bank (0: no memory)."""


def fit_map_composition(
    model: DeployableDetector,
    train_images: ImageDataset,
    validation: ImageDataset,
    config: TrainConfig,
    *,
    progress: bool = False,
) -> MapComposition:
    """Choose the map's scales and positional normalisation, and leave ``model`` set up with the choice.

    Every candidate (each scale set the detector offers, raw or normalised) is scored on the validation split
    with the criterion that kept the epoch; the first best wins, so a tie keeps all scales and the raw map.
    Fixed settings (``config.map_scales`` or ``config.positional_normalization`` not ``"auto"``) are not searched.

    Args:
        model: The trained detector; its normaliser is reset first.
        train_images: The images it trained on (their maps are what "typical" means per pixel).
        validation: The validation split, which decides the ``"auto"`` settings.
        config: The run's configuration (``map_scales``, ``positional_normalization``).
        progress: Show progress bars.

    Returns:
        The composition in effect.
    """
    model.positional.reset()
    model.memory.reset()  # the composition is chosen for the network's own map; a memory joins it afterwards
    scale_options = MAP_SCALES if config.map_scales == "auto" else (config.map_scales,)
    if not model.detector.use_map_scales(scale_options[0]):
        scale_options = ("all",)  # the method sums no teacher scales: nothing to choose
    mode = config.positional_normalization
    positional_options = {"off": (False,), "on": (True,), "auto": (False, True)}[mode]
    searched = len(scale_options) * len(positional_options) > 1
    best: tuple[float, MapComposition, dict[str, torch.Tensor] | None] | None = None
    for scales in scale_options:
        model.detector.use_map_scales(scales)
        model.positional.reset()
        raw_val = predict(model, validation) if searched else None
        for positional in positional_options:
            fitted = None
            if positional:
                raw = predict(model, train_images, desc=f"positional statistics ({scales})" if progress else None)
                model.positional.fit(torch.from_numpy(raw.maps))
                fitted = copy.deepcopy(model.positional.state_dict())
            if raw_val is None:
                return MapComposition(scales, positional)
            score = _selection_score(_normalised(model, raw_val) if positional else raw_val)
            log.info("map of %s scales, %s: validation criterion %.4f", scales,
                     "normalised" if positional else "raw", score)
            if np.isfinite(score) and (best is None or score > best[0]):
                best = (score, MapComposition(scales, positional), fitted)
            model.positional.reset()
    if best is None:  # no anomalies in validation to choose with: the first candidate, as without a search
        model.detector.use_map_scales(scale_options[0])
        if mode == "on":
            model.positional.fit(torch.from_numpy(predict(model, train_images).maps))
        return MapComposition(scale_options[0], mode == "on")
    _, choice, fitted = best
    model.detector.use_map_scales(choice.scales)
    if fitted is not None:
        model.positional.load_state_dict(fitted)
    log.info("map: %s scales, %s", choice.scales, "positionally normalised" if choice.positional else "raw")
    return choice


@torch.no_grad()
def maps_and_taps(model: DeployableDetector, dataset: ImageDataset) -> tuple[Predictions, Tensor] | None:
    """The scored maps without a memory (positional normalisation applied) and the memory's taps, in one pass.

    Args:
        model: The detector (its memory, if any, is not applied).
        dataset: The images to score.

    Returns:
        The predictions and the taps ``(N, C, h, w)``; ``None`` when the detector has no taps.
    """
    maps, taps, labels, masks = [], [], [], []
    for batch in DataLoader(dataset, batch_size=16, shuffle=False):
        _, raw, tap = model.detector.predict_and_taps(model.normalize(batch["image"]))
        if tap is None:
            return None
        maps.append(model.positional(raw))
        taps.append(tap)
        labels.append(batch["label"].numpy())
        masks.append(batch["mask"].numpy())
    flat = torch.cat(maps)[:, 0].numpy()
    return Predictions.of_maps(flat, np.concatenate(labels), np.concatenate(masks)), torch.cat(taps)


def fit_tap_memory(
    model: DeployableDetector,
    train_images: ImageDataset,
    validation: ImageDataset,
    config: TrainConfig,
    composition: MapComposition,
) -> MapComposition:
    """Fit the tap memory on the training images and choose its weight on validation (:mod:`training.memory`).

    Runs after :func:`fit_map_composition`, so the memory joins the map that composition chose. Every weight of
    :data:`~training.memory.MEMORY_WEIGHTS` is scored with the criterion that kept the epoch; the first best wins,
    so a tie, or a validation split without anomalies, keeps no memory. A detector without taps, or
    ``config.tap_memory == "off"``, keeps none either.

    Returns:
        ``composition`` with the memory's weight and size; ``model`` is left set up with the choice.
    """
    model.memory.reset()
    if config.tap_memory == "off" or len(train_images) < 2:  # a left-out distance needs another image
        return composition
    train_parts = maps_and_taps(model, train_images)
    if train_parts is None:
        return composition
    val, val_taps = maps_and_taps(model, validation)
    train_maps = torch.from_numpy(train_parts[0].maps)[:, None]
    model.memory.fit(train_parts[1], train_maps, seed=config.seed)
    with torch.no_grad():
        val_maps = torch.from_numpy(val.maps)[:, None]
        val_distances = model.memory.distance_map(val_taps)
        best: tuple[float, float] | None = None
        for weight in MEMORY_WEIGHTS:
            maps = model.memory.combine(val_maps, val_distances, weight)[:, 0].numpy()
            score = _selection_score(Predictions.of_maps(maps, val.labels, val.masks))
            log.info("tap memory weight %g: validation criterion %.4f", weight, score)
            if np.isfinite(score) and (best is None or score > best[0]):
                best = (score, weight)
    weight = 0.0 if best is None else best[1]
    model.memory.set_weight(weight)
    log.info("tap memory: weight %g, %d vectors", weight, model.memory.bank.shape[0])
    return dataclasses.replace(composition, memory_weight=weight, memory_vectors=int(model.memory.bank.shape[0]))


def _normalised(model: DeployableDetector, raw: Predictions) -> Predictions:
    """What predict() returns with the fitted positional normaliser, computed from the raw maps without a pass."""
    with torch.no_grad():
        maps = model.positional(torch.from_numpy(raw.maps)[:, None])[:, 0].numpy()
    return Predictions.of_maps(maps, raw.labels, raw.masks)


def save_validation_samples(samples: list[Sample], image_size: int, path: Path, per_class: int = 3) -> Path:
    """Store a few validation images for the exported repository: good ones and one per defect type first.

    Args:
        samples: The validation split.
        image_size: Side the images are resized to (the model's input).
        path: The ``.npz`` to write.
        per_class: How many good and how many anomalous images.

    Returns:
        ``path``.
    """
    good = [s for s in samples if s.label == 0][:per_class]
    by_defect: dict[str, list[Sample]] = {}
    for s in samples:
        if s.label == 1:
            by_defect.setdefault(s.defect, []).append(s)
    anomalous: list[Sample] = []
    while len(anomalous) < per_class and any(by_defect.values()):
        for queue in by_defect.values():
            if queue and len(anomalous) < per_class:
                anomalous.append(queue.pop(0))
    chosen = good + anomalous
    np.savez_compressed(
        path,
        inputs=np.stack([load_image(s.path, image_size) for s in chosen]),
        labels=np.array([s.label for s in chosen], dtype=np.int64),
        names=np.array([f"{s.defect}/{s.path.name}" for s in chosen]),
    )
    return path


def _calibrate_and_evaluate(
    model: DeployableDetector,
    config: TrainConfig,
    splits: DatasetSplits,
    predictions: tuple[Predictions, Predictions, Predictions],
    history: list[dict[str, float]],
    best_epoch: int,
    steps: int,
    seconds: float,
    composition: MapComposition,
) -> Stats:
    """The stats JSON: good statistics from held-out good images, thresholds from validation, metrics from test."""
    holdout, val, test = predictions
    # Every good image the student never saw (holdout and validation good): a larger sample, still no test data.
    val_good = val.labels == 0
    good_scores = np.concatenate([holdout.scores, val.scores[val_good]])
    good_maps = np.concatenate([holdout.maps, val.maps[val_good]])
    image_good = ScoreStatistics.of(good_scores)
    pixel_good = ScoreStatistics.of(good_maps)
    image_threshold = choose_threshold(good_scores, val.labels, val.scores, good_quantile=IMAGE_GOOD_QUANTILE)
    pixel_threshold = choose_threshold(good_maps, val.masks, val.maps, good_quantile=PIXEL_GOOD_QUANTILE)
    pixel_calibration = fit_calibration(pixel_threshold.value, pixel_good)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.detector.trainable_parameters())
    return Stats(
        model=ModelInfo(
            method=config.method.value,
            backbone=backbone_label(config),
            input_size=config.image_size,
            parameters=n_params,
            trainable_parameters=n_train,
        ),
        normalization=Normalization(mean=model.detector.mean, std=model.detector.std),
        image_scores=image_good,
        pixel_scores=pixel_good,
        image_threshold=image_threshold,
        pixel_threshold=pixel_threshold,
        image_calibration=fit_calibration(image_threshold.value, image_good),
        pixel_calibration=pixel_calibration,
        validation_metrics=split_metrics(val, "validation", image_threshold.value, pixel_threshold.value,
                                         pixel_calibration),
        test_metrics=split_metrics(test, "test", image_threshold.value, pixel_threshold.value, pixel_calibration),
        training=TrainingFacts(
            epochs=config.training_epochs,
            best_epoch=best_epoch,
            steps=steps,
            seconds=round(seconds, 2),
            seed=config.seed,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            final_loss=history[-1]["loss"],
            dataset=f"{config.data_root}/{config.category}",
            dataset_fingerprint=dataset_fingerprint(
                splits.train + splits.holdout + splits.validation + splits.test
            ),
            num_train=len(splits.train),
            positional_normalization=composition.positional,
            map_scales=composition.scales,
            tap_memory_weight=composition.memory_weight,
            tap_memory_vectors=composition.memory_vectors,
            denoising=config.denoising if config.method is Method.RD4AD else "off",
            patch_grid=config.patch_grid,
            torch_version=torch.__version__,
        ),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
