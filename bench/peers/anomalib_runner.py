"""anomalib's PatchCore and PaDiM on the project's teacher: the script the yardstick runs inside the peer venv.

Usage (inside the peer venv, see :mod:`bench.peers.venv`)::

    python bench/peers/anomalib_runner.py JOB.json OUT.npz             fit on the train images, score the test images
    python bench/peers/anomalib_runner.py --features JOB.json OUT.npz  only the backbone's feature maps (a check)

It runs beside packages the project cannot share (anomalib pins numpy 2, the project numpy < 2), so of the
project it imports only :mod:`kdcore.imageio` (numpy and OpenCV: how an image file becomes a model input, written
once), and it is started as a file, not as ``bench.peers``. Its data handling (the job, the image rule, the
result file) needs only the standard library, numpy and OpenCV, so the project's tests import this module and
check that handling without anomalib; torch, timm and anomalib are imported where the models are
built.

The models are anomalib 2.7's own torch modules (:class:`PatchcoreModel`, :class:`PadimModel`): fitting is their
embedding collection in training mode followed by PatchCore's k-center-greedy coreset subsampling or PaDiM's
Gaussian fit, and scoring is their eval-mode forward, whose score and anomaly map (already upsampled to the input
and blurred by anomalib) are written as they come, before any normalisation. The backbone is timm's
``tf_efficientnet_lite0`` (TensorFlow "SAME" padding, BatchNorm eps 1e-3) carrying the EfficientNet-Lite0
ImageNet weights that the project's teacher uses, copied in tensor by tensor (same order and shapes), because
timm would otherwise fetch its own weights from a model hub.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# Started as a file in the peer venv, where the project is not installed: the repository root makes the
# torch-free kdcore importable (kdcore/__init__ imports nothing; kdcore.imageio needs numpy and OpenCV only).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kdcore import imageio  # noqa: E402

if TYPE_CHECKING:  # torch is imported where the models are built: the data handling must not need it
    import torch
    from torch import nn

#: The anomalib methods this runner fits, and the timm feature names each one taps on ``tf_efficientnet_lite0``.
#: PatchCore: strides 8 and 16, the Lite0 equivalents of Wide-ResNet-50's layer2 and layer3 (anomalib's default);
#: PaDiM: strides 4, 8 and 16, the equivalents of ResNet-18's layer1..layer3 (anomalib's default).
LAYERS: dict[str, tuple[str, ...]] = {
    "patchcore": ("blocks.2", "blocks.4"),
    "padim": ("blocks.1", "blocks.2", "blocks.4"),
}
#: The timm model whose numerics match the TensorFlow-trained Lite0 weights.
BACKBONE = "tf_efficientnet_lite0"
#: The Lite checkpoints were trained on [-1, 1] inputs: [0, 1] RGB normalised with mean = std = 0.5
#: (the project's ``training.backbones.efficientnet_lite.TF_LITE_MEAN``/``TF_LITE_STD``).
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
#: The stride of each timm feature name of ``tf_efficientnet_lite0`` used here (checked against timm's feature_info).
STRIDES = {"blocks.1": 4, "blocks.2": 8, "blocks.4": 16}


class JobError(ValueError):
    """A job file that cannot be run; the message names the field."""


@dataclass
class Job:
    """What to fit and score: written by :mod:`bench.peers.yardstick`, read here.

    Attributes:
        method: ``"patchcore"`` or ``"padim"`` (see :data:`LAYERS`).
        train_images: The images to fit on (the project's ``train`` split).
        test_images: The images to score (the project's ``test`` split), in the order the results come back.
        image_size: The square input side; images are resized to it as the project does.
        weights: The EfficientNet-Lite0 checkpoint (``efficientnet-lite0-57934424.pth``, EfficientNet-PyTorch keys).
        seed: Seeds torch and numpy: PaDiM's random channel choice and PatchCore's first coreset centre.
        threads: torch CPU threads for fitting, scoring and the speed measurement.
        batch_size: Batch of the forward passes and of the speed measurement.
        seconds: How long the speed measurement runs (0: not measured).
        coreset_ratio: PatchCore's coreset sampling ratio (anomalib's default 0.1).
        num_neighbors: PatchCore's neighbours for the image-score reweighting (anomalib's default 9).
        padim_features: PaDiM's randomly kept channels. anomalib has defaults for ResNet-18 (100) and
            Wide-ResNet-50 (550) only; 100 of Lite0's 176 channels keeps ResNet-18's count, the backbone whose
            three taps sit at the same strides.
    """

    method: str
    train_images: list[str]
    test_images: list[str]
    image_size: int
    weights: str
    seed: int = 0
    threads: int = 1
    batch_size: int = 8
    seconds: float = 3.0
    coreset_ratio: float = 0.1
    num_neighbors: int = 9
    padim_features: int = 100
    layers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.method not in LAYERS:
            raise JobError(f"method must be one of {sorted(LAYERS)}, got {self.method!r}")
        if not self.layers:
            self.layers = list(LAYERS[self.method])
        for name, value in (("image_size", self.image_size), ("threads", self.threads),
                            ("batch_size", self.batch_size)):
            if not isinstance(value, int) or value < 1:
                raise JobError(f"{name} must be a positive integer, got {value!r}")
        if not self.test_images:
            raise JobError("test_images is empty")
        if self.seconds < 0:
            raise JobError(f"seconds must be >= 0, got {self.seconds}")

    def save(self, path: Path) -> None:
        """Writes the job as JSON (what the yardstick hands over)."""
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Job:
        """Reads a job written by :meth:`save`.

        Raises:
            JobError: A missing or unknown field, or a bad value.
        """
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        try:
            return cls(**data)
        except TypeError as exc:
            raise JobError(f"{path}: {exc}") from exc


@dataclass
class PeerOutput:
    """What the runner writes: raw scores and maps of the test images, and the timings.

    Attributes:
        scores: ``(N,)`` anomalib's image scores, raw (before its normalisation).
        maps: ``(N, S, S)`` float32 anomaly maps at the input side, raw.
        fit_seconds: Wall time of fitting: the forward passes over the train images (feature extraction) plus
            the coreset selection (PatchCore) or the Gaussian fit (PaDiM); decoding the files is not included.
        images_per_second: In-process throughput of the eval forward (torch, CPU, ``threads`` threads, batch
            ``batch_size``); NaN when not measured.
        batch_size: The batch of that measurement.
        threads: The torch threads used.
        versions: ``"anomalib X, torch Y, timm Z"``.
    """

    scores: np.ndarray
    maps: np.ndarray
    fit_seconds: float
    images_per_second: float
    batch_size: int
    threads: int
    versions: str = ""

    def save(self, path: Path) -> None:
        """Writes the result file (``.npz``)."""
        np.savez(Path(path), scores=np.asarray(self.scores, np.float32), maps=np.asarray(self.maps, np.float32),
                 fit_seconds=np.float64(self.fit_seconds), images_per_second=np.float64(self.images_per_second),
                 batch_size=np.int64(self.batch_size), threads=np.int64(self.threads), versions=np.str_(self.versions))

    @classmethod
    def load(cls, path: Path, n_images: int | None = None, image_size: int | None = None) -> PeerOutput:
        """Reads a result file, checking its shapes against what was asked for.

        Raises:
            ValueError: Shapes that do not match ``n_images`` / ``image_size``, or non-finite scores or maps.
        """
        with np.load(Path(path)) as z:
            out = cls(z["scores"].astype(np.float32), z["maps"].astype(np.float32), float(z["fit_seconds"]),
                      float(z["images_per_second"]), int(z["batch_size"]), int(z["threads"]), str(z["versions"]))
        if out.maps.ndim != 3 or out.scores.shape != (out.maps.shape[0],):
            raise ValueError(f"{path}: scores {out.scores.shape} and maps {out.maps.shape} do not match")
        if n_images is not None and out.scores.shape[0] != n_images:
            raise ValueError(f"{path}: {out.scores.shape[0]} results for {n_images} test images")
        if image_size is not None and out.maps.shape[1:] != (image_size, image_size):
            raise ValueError(f"{path}: maps of {out.maps.shape[1:]}, expected {(image_size, image_size)}")
        if not (np.isfinite(out.scores).all() and np.isfinite(out.maps).all()):
            raise ValueError(f"{path}: non-finite scores or maps")
        return out


# ------------------------------------------------------------------------------------------------ images
def load_image(path: str | Path, size: int) -> np.ndarray:
    """An image file as RGB uint8 ``(size, size, 3)``, by the project's one rule: :mod:`kdcore.imageio`.

    Raises:
        OSError: The file cannot be read.
        ValueError: It cannot be decoded (:class:`kdcore.imageio.ImageDecodeError`).
    """
    return imageio.resize_to(imageio.read_image(path), size)


def to_input(images: np.ndarray) -> np.ndarray:
    """``(N, S, S, 3)`` uint8 RGB to the network's ``(N, 3, S, S)`` float32 input: [0, 1], then mean/std 0.5."""
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    mean = np.asarray(MEAN, np.float32)[None, :, None, None]
    std = np.asarray(STD, np.float32)[None, :, None, None]
    return np.ascontiguousarray((x - mean) / std)


def load_inputs(paths: list[str], size: int) -> np.ndarray:
    """The network input of every file in ``paths`` (see :func:`load_image`, :func:`to_input`)."""
    return to_input(np.stack([load_image(p, size) for p in paths]))


# ------------------------------------------------------------------------------------------------ models
def lite0_state_dict(weights: str | Path, target_keys: list[str],
                     target_shapes: list[tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The Lite0 checkpoint under timm's names: EfficientNet-PyTorch's tensors, in order, onto timm's keys.

    The two layouts list the same tensors in the same order (stem, blocks, head, classifier); every shape is
    checked, so a wrong pairing fails here instead of giving a silently wrong backbone. ``target_keys`` may be a
    prefix of the full model's (a ``features_only`` model lacks the head).

    Raises:
        ValueError: A count or shape mismatch.
    """
    import torch

    source = torch.load(str(weights), map_location="cpu", weights_only=True)
    values = list(source.values())
    if len(values) < len(target_keys):
        raise ValueError(f"{weights} has {len(values)} tensors; {BACKBONE} needs {len(target_keys)}")
    mapped = {}
    for i, (key, shape) in enumerate(zip(target_keys, target_shapes)):
        if tuple(values[i].shape) != tuple(shape):
            raise ValueError(f"{weights}: tensor {i} ({list(source)[i]}) has shape {tuple(values[i].shape)}, "
                             f"{BACKBONE}'s {key} needs {tuple(shape)}")
        mapped[key] = values[i]
    return mapped


def load_lite0_weights(feature_net: nn.Module, weights: str | Path) -> None:
    """Loads the Lite0 checkpoint into a timm ``tf_efficientnet_lite0`` (full or ``features_only``), strictly."""
    state = feature_net.state_dict()
    mapped = lite0_state_dict(weights, list(state), [tuple(v.shape) for v in state.values()])
    feature_net.load_state_dict(mapped, strict=True)


def build_model(job: Job) -> nn.Module:
    """anomalib's torch model for ``job.method`` on ``tf_efficientnet_lite0`` with the Lite0 weights, in eval mode."""
    import torch

    torch.manual_seed(job.seed)  # PaDiM draws its kept channels when built
    if job.method == "patchcore":
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        model = PatchcoreModel(layers=list(job.layers), backbone=BACKBONE, pre_trained=False,
                               num_neighbors=job.num_neighbors)
    else:
        from anomalib.models.image.padim.torch_model import PadimModel

        model = PadimModel(backbone=BACKBONE, layers=list(job.layers), pre_trained=False,
                           n_features=job.padim_features)
    load_lite0_weights(model.feature_extractor.feature_extractor, job.weights)
    return model.eval()


def _batches(x: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size]


def fit(model: nn.Module, job: Job, train: np.ndarray) -> float:
    """Fits ``model`` the way anomalib's Lightning modules do; returns the wall seconds it took.

    Training-mode forwards collect the embeddings (``training_step``); then ``fit()``: PatchCore's
    ``subsample_embedding(coreset_ratio)``, PaDiM's ``fit()`` (a Gaussian per position).
    """
    import torch

    torch.manual_seed(job.seed)
    np.random.seed(job.seed)
    start = time.perf_counter()
    model.train()
    model.feature_extractor.eval()  # anomalib keeps the backbone in eval mode (frozen BatchNorm statistics)
    with torch.no_grad():
        for batch in _batches(train, job.batch_size):
            model(torch.from_numpy(batch))
    if job.method == "patchcore":
        model.subsample_embedding(job.coreset_ratio)
    else:
        model.fit()
    model.eval()
    return time.perf_counter() - start


def score(model: nn.Module, job: Job, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode forward over the test images: anomalib's raw image scores ``(N,)`` and maps ``(N, S, S)``."""
    import torch

    scores, maps = [], []
    with torch.no_grad():
        for batch in _batches(test, job.batch_size):
            out = model(torch.from_numpy(batch))
            scores.append(out.pred_score.reshape(-1).float().numpy())
            maps.append(out.anomaly_map.reshape(len(batch), *batch.shape[-2:]).float().numpy())
    return np.concatenate(scores), np.concatenate(maps)


def throughput(model: nn.Module, job: Job, test: np.ndarray) -> float:
    """In-process images/s of the eval forward at batch ``job.batch_size``: one warm-up batch, then timed batches
    for ``job.seconds`` (at least one). NaN when ``job.seconds`` is 0."""
    import torch

    if job.seconds <= 0:
        return float("nan")
    batch = torch.from_numpy(np.resize(test, (job.batch_size, *test.shape[1:])))
    with torch.no_grad():
        model(batch)
        count, start = 0, time.perf_counter()
        while True:
            model(batch)
            count += job.batch_size
            elapsed = time.perf_counter() - start
            if elapsed >= job.seconds:
                return count / elapsed


def versions() -> str:
    """The peer's library versions, for the record."""
    import anomalib
    import timm
    import torch

    return f"anomalib {anomalib.__version__}, torch {torch.__version__}, timm {timm.__version__}"


def run(job: Job) -> PeerOutput:
    """Fits on the train images, scores the test images and measures the speed (the runner's main path)."""
    import torch

    torch.set_num_threads(job.threads)
    train = load_inputs(job.train_images, job.image_size)
    test = load_inputs(job.test_images, job.image_size)
    model = build_model(job)
    fit_seconds = fit(model, job, train)
    scores, maps = score(model, job, test)
    speed = throughput(model, job, test)
    return PeerOutput(scores, maps, fit_seconds, speed, job.batch_size, job.threads, versions())


def features(job: Job) -> dict[str, np.ndarray]:
    """The backbone's feature maps of the test images at strides 4, 8 and 16 (keys ``stride4`` ...), as anomalib's
    feature extractor gives them: the check that the Lite0 weights loaded right."""
    import torch
    from anomalib.models.components import TimmFeatureExtractor

    torch.set_num_threads(job.threads)
    extractor = TimmFeatureExtractor(BACKBONE, layers=list(STRIDES), pre_trained=False).eval()
    load_lite0_weights(extractor.feature_extractor, job.weights)
    with torch.no_grad():
        out = extractor(torch.from_numpy(load_inputs(job.test_images, job.image_size)))
    return {f"stride{STRIDES[name]}": out[name].numpy() for name in STRIDES}


def build_parser() -> argparse.ArgumentParser:
    """The runner's command line."""
    parser = argparse.ArgumentParser(
        prog="anomalib_runner",
        description="Fit anomalib's PatchCore or PaDiM (on tf_efficientnet_lite0 with the EfficientNet-Lite0 "
        "weights) on a job's train images, score its test images, and write raw scores, raw anomaly maps, the "
        "fit time and the in-process throughput to an .npz. Runs inside the peer venv.",
    )
    parser.add_argument("job", type=Path, help="job JSON written by bench.peers.yardstick")
    parser.add_argument("out", type=Path, help="result .npz to write")
    parser.add_argument("--features", action="store_true",
                        help="write only the backbone's feature maps of the test images (stride4/8/16), no fitting")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one job; returns the exit status (2: a bad job)."""
    args = build_parser().parse_args(argv)
    try:
        job = Job.load(args.job)
    except (OSError, ValueError) as exc:
        print(f"anomalib_runner: {exc}", file=sys.stderr)
        return 2
    if args.features:
        np.savez(args.out, **features(job))
    else:
        run(job).save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
