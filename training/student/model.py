"""A compact student that regresses a trained RD4AD teacher's anomaly map directly from the image.

Knowledge distillation of the *score* (the KD-AE idea: a small network predicts the big model's anomaly
score) applied to maps: the target is ``log(1 + teacher map)`` pooled (max by default, or mean) to the student's
stride-8 grid, the loss is L1, and the training images are the good ones plus synthetically perturbed good ones
(:mod:`training.perturb`) so that the targets are not all near zero, asked of the teacher once, into a
pool the student then trains on (:meth:`ScoreRegressor.prepare`). At inference the student alone
runs: ``map = exp(prediction) - 1`` upsampled to the input size, ``score = max(map)``; the teacher is not in the
exported graph.

Two feature extractors (``kd-train --student-features``):

- ``hint`` (default): the teacher's own pretrained encoder, frozen, read on the image at half resolution through
  its stride-4 and stride-8 taps, then a small trained mixer. Why: a network trained from scratch on a hundred
  good images and synthetic perturbations learns what *those* perturbations look like, not what normal looks
  like; generic pretrained features carry the second (the quality benchmark's ``page``, README: image AUROC 0.550
  from scratch, 0.851 with the hint features, same targets and training). About 7% of an EfficientNet-Lite0 RD4AD's
  FLOPs at 256 px (the encoder's first blocks at a quarter of the pixels dominate). Optionally one more input
  channel, each cell's distance to the nearest of N good tap vectors (``--student-memory N``; 9.5% of the FLOPs
  at 256), which rises for changes unlike the perturbations it learned from.
- ``scratch``: a 22k-parameter CNN trained from scratch (about 4% of the teacher's FLOPs).

Reference: Bergmann et al., "Uninformed Students" (CVPR 2020) and Batzner et al., "EfficientAD" (WACV 2024)
show compact students matching their teachers (EfficientAD-S: 98.8 image AUROC on MVTec AD); score
regression of a bigger model is the KD-AE recipe this project's research code started from; reading a pretrained
network's early layers as "hints" is FitNets' (Romero et al., ICLR 2015).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.anomaly_map import GaussianBlur2d
from training.backbones.encoder import FeatureEncoder
from training.detector import DistillationDetector
from training.inference import DeployableDetector
from training.layers import conv_bn_relu
from training.perturb import FAMILIES, perturb

#: The student predicts on the stride-8 grid of the input.
STRIDE = 8
#: The reductions of the teacher's map to the student's cells (``target_pool``).
TARGET_POOLS = {"mean": F.avg_pool2d, "max": F.max_pool2d}
#: Perturbed copies of each training image in the student's pool (besides the image itself), by default.
POOL_COPIES = 16
#: Pool samples per optimiser step.
POOL_BATCH = 32


def _separable(ch: int, dilation: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(ch, ch, 3, padding=dilation, dilation=dilation, groups=ch, bias=False),
        nn.Conv2d(ch, ch, 1, bias=False),
        nn.BatchNorm2d(ch),
        nn.ReLU(inplace=True),
    )


class ScratchFeatures(nn.Sequential):
    """A small CNN trained from scratch, to the stride-8 grid: strided convolutions, then dilated separable ones.

    A plain :class:`~torch.nn.Sequential`, so the checkpoints of students trained before the hint features load.

    Args:
        width: Channels of the stride-8 stage (:attr:`out_channels`).
    """

    def __init__(self, width: int) -> None:
        super().__init__(
            conv_bn_relu(3, width // 4, 2), conv_bn_relu(width // 4, width // 2, 2), conv_bn_relu(width // 2, width, 2),
            _separable(width, 1), _separable(width, 2), _separable(width, 4),
        )
        self.out_channels = width

    #: No nearest-neighbour channel (:attr:`HintFeatures.memory`): the scratch features have no taps to keep.
    memory = 0

    def frozen(self, x: Tensor, images: Tensor | None = None) -> Tensor:
        """The part of the features no training changes: nothing here, the images themselves (``images`` unused:
        the scratch features have no memory)."""
        return x

    def trained(self, z: Tensor) -> Tensor:
        """Features ``(N, width, S/8, S/8)`` from :meth:`frozen`'s output."""
        return super().forward(z)


class HintFeatures(nn.Module):
    """A frozen pretrained encoder read at reduced resolution, mixed by a small trained network on the stride-8 grid.

    The encoder's taps through stride 8 of the downsampled image are resampled to the student's grid (bilinear),
    concatenated, projected to ``width`` channels and passed through separable convolutions of growing dilation
    (1, 2, 4, 8), so a cell sees about a quarter of a 256 px image: enough context to tell a blank patch in a
    page of text from a margin.

    With a ``memory``, one more input channel: each cell's log distance to the nearest of ``memory`` tap vectors
    of the good training images (:meth:`fit_memory`), PatchCore's nearest-neighbour score in miniature. Why: the
    mixer learns the teacher's reaction only to the kinds of change it was shown (the perturbations); a distance
    to what good images look like rises for any change, seen or not (README: the ``page`` student's pixel AUROC
    on erased text, a change no perturbation makes).

    Args:
        encoder: A pretrained encoder (the teacher's backbone); frozen here.
        image_size: Square input side.
        width: Channels of the mixer (:attr:`out_channels`).
        downsample: Integer factor the image is average-pooled by before the encoder (2: a quarter of the pixels,
            which is what keeps the student within a tenth of the teacher's FLOPs).
        memory: Tap vectors kept for the nearest-neighbour channel (0: none; 256 cost about 2% of an
            EfficientNet-Lite0 RD4AD's FLOPs at 256 px).
    """

    #: The deepest tap read, in the downsampled image's pixels.
    TAP_STRIDE = 8

    def __init__(
        self, encoder: FeatureEncoder, image_size: int, width: int, downsample: int = 2, memory: int = 0
    ) -> None:
        super().__init__()
        if downsample < 1 or image_size % (downsample * self.TAP_STRIDE):
            raise ValueError(f"image_size {image_size} and downsample {downsample} do not tile the tap grid")
        if memory < 0:
            raise ValueError(f"memory must be >= 0, got {memory}")
        self.encoder = encoder.freeze()
        self.downsample, self.grid, self.out_channels = downsample, image_size // STRIDE, width
        taps = encoder.strides.index(self.TAP_STRIDE) + 1
        # Which taps are off the student's grid, decided here: the sizes are fixed by image_size, and a branch on
        # a traced tensor's shape would be frozen into the export with a warning.
        self._resample = tuple(downsample * stride != STRIDE for stride in encoder.strides[:taps])
        channels = sum(encoder.out_channels[:taps])
        self.memory = memory
        if memory:
            self.register_buffer("bank", torch.zeros(memory, channels))
        # Which training image each bank vector came from (fit_memory); training only, so not a buffer.
        self.__dict__["bank_images"] = None
        self.mix = nn.Sequential(
            nn.Conv2d(channels + (1 if memory else 0), width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            *(_separable(width, d) for d in (1, 2, 4, 8)),
        )

    @torch.no_grad()
    def taps(self, x: Tensor) -> Tensor:
        """The frozen encoder's taps of normalised images ``(N, 3, S, S)``, on the student's grid and concatenated."""
        small = F.avg_pool2d(x, self.downsample) if self.downsample > 1 else x
        taps = self.encoder.taps_through(small, self.TAP_STRIDE)
        size = (self.grid, self.grid)
        taps = [F.interpolate(t, size=size, mode="bilinear", align_corners=False) if resample else t
                for t, resample in zip(taps, self._resample, strict=True)]
        return torch.cat(taps, dim=1)

    @torch.no_grad()
    def frozen(self, x: Tensor, images: Tensor | None = None) -> Tensor:
        """:meth:`taps` and, with a memory, the :meth:`nearest` channel: what no training changes, so the student's
        pool holds these rather than the images.

        Args:
            x: Normalised images ``(N, 3, S, S)``.
            images: While building the pool, the training-image index of each of ``x`` (:meth:`nearest`).
        """
        taps = self.taps(x)
        out = torch.cat([taps, self.nearest(taps, images)], dim=1) if self.memory else taps
        # Channels-last: the mixer's convolutions train about 2x faster on it with oneDNN on the CPU (measured on
        # a pool; a plain concatenation with the memory channel would otherwise drop the encoder's layout).
        return out.contiguous(memory_format=torch.channels_last)

    def fit_memory(self, taps: Tensor, generator: torch.Generator) -> None:
        """Keep :attr:`memory` random tap vectors of the good training images ``(M, C, H, W)`` (from :meth:`taps`).

        Random rather than k-means centres or PatchCore's greedy coreset: in scratch runs on ``page`` and
        ``stars`` (256 vectors, 20 to 40 epochs) neither scored outside the spread of a random choice on
        validation, and each chosen vector keeps the image it came from, which :meth:`nearest` needs while
        training (a centre has no single image).
        """
        m, c, h, w = taps.shape
        vectors = taps.permute(0, 2, 3, 1).reshape(-1, c)
        # With replacement only when the images hold fewer vectors than the memory (tests' tiny inputs).
        pick = (torch.randperm(len(vectors), generator=generator)[: self.memory] if len(vectors) >= self.memory
                else torch.randint(len(vectors), (self.memory,), generator=generator))
        self.bank.copy_(vectors[pick])
        self.__dict__["bank_images"] = torch.arange(m).repeat_interleave(h * w)[pick]

    def nearest(self, taps: Tensor, images: Tensor | None = None) -> Tensor:
        """Each cell's log distance ``(N, 1, H, W)`` to its nearest bank vector.

        Args:
            taps: :meth:`taps` output ``(N, C, H, W)``.
            images: The training-image index of each sample while the pool is built: bank vectors of the sample's
                own image are skipped, or a training image's cells would find themselves (distance 0), which no
                test image does, and the student would learn from distances it never meets.
        """
        n, c, h, w = taps.shape
        v = taps.flatten(2).transpose(1, 2)  # (N, HW, C)
        # |v - b|^2 expanded: matrix products export to ONNX and count in the FLOPs, unlike cdist.
        d2 = (v * v).sum(-1, keepdim=True) - 2 * v @ self.bank.T + (self.bank * self.bank).sum(-1)
        if images is not None and self.bank_images is not None and len(self.bank_images.unique()) > 1:
            own = images[:, None] == self.bank_images[None, :]  # (N, K)
            d2 = d2.masked_fill(own[:, None, :], float("inf"))
        return 0.5 * torch.log(d2.amin(-1).clamp_min(0) + 1e-6).reshape(n, 1, h, w)

    def trained(self, z: Tensor) -> Tensor:
        """Features ``(N, width, S/8, S/8)`` from :meth:`frozen`'s output: the mixer, the part that learns."""
        return self.mix(z)

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images ``(N, 3, S, S)`` to features ``(N, width, S/8, S/8)``."""
        return self.trained(self.frozen(x))


class ScoreRegressor(DistillationDetector):
    """The student network and its training objective.

    Args:
        image_size: Square input side (the teacher's).
        mean: Input normalisation mean (the teacher's, so both see the same tensors).
        std: Input normalisation std.
        width: Channels of the stride-8 stage.
        seed: Seed of the training-time perturbations.
        smoothing: Gaussian sigma, in stride-8 cells, applied to the predicted log map (the teacher's maps are
            smooth; this removes cell-level noise for almost no cost).
        encoder: A pretrained encoder for :class:`HintFeatures` (its normalisation must be ``mean`` and ``std``);
            ``None``: :class:`ScratchFeatures`.
        target_pool: How a stride-8 cell's target reduces the teacher's map: ``"max"`` (a defect of a few pixels
            keeps its peak, and the teacher's image score is the map's maximum) or ``"mean"``.
        perturbations: The family of synthetic changes of the training images
            (:data:`training.perturb.FAMILIES`).
        memory: Hint features only: good tap vectors kept for the nearest-neighbour channel
            (:class:`HintFeatures`; 0: none).
        pool_copies: Perturbed copies of each training image in the pool (:meth:`prepare`).

    Raises:
        ValueError: An image size off the stride-8 grid, an encoder expecting another normalisation, an
            unknown ``target_pool`` or ``perturbations``, a negative ``memory`` or ``pool_copies``, or a memory
            without an encoder.
    """

    def __init__(
        self,
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        width: int = 48,
        seed: int = 0,
        smoothing: float = 1.0,
        encoder: FeatureEncoder | None = None,
        target_pool: str = "max",
        perturbations: str = "broad",
        memory: int = 0,
        pool_copies: int = POOL_COPIES,
    ) -> None:
        super().__init__()
        if image_size % STRIDE:
            raise ValueError(f"image_size must be a multiple of {STRIDE}, got {image_size}")
        if target_pool not in TARGET_POOLS:
            raise ValueError(f"target_pool must be one of {sorted(TARGET_POOLS)}, got {target_pool!r}")
        if perturbations not in FAMILIES:
            raise ValueError(f"perturbations must be one of {FAMILIES}, got {perturbations!r}")
        if pool_copies < 0:
            raise ValueError(f"pool_copies must be >= 0, got {pool_copies}")
        if memory and encoder is None:
            raise ValueError("a memory needs the hint features (an encoder): the scratch features have no taps")
        self.target_pool, self.perturbations, self.pool_copies = target_pool, perturbations, pool_copies
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        if encoder is not None and (tuple(encoder.mean) != self.mean or tuple(encoder.std) != self.std):
            raise ValueError(f"the {encoder.name} encoder expects another input normalisation than the teacher's")
        self.features: nn.Module = (
            ScratchFeatures(width) if encoder is None else HintFeatures(encoder, image_size, width, memory=memory)
        )
        self.head = nn.Conv2d(width, 1, 1)
        grid = image_size // STRIDE
        self.smooth = GaussianBlur2d(smoothing, (grid, grid)) if smoothing > 0 else nn.Identity()
        # The teacher is only needed for the training targets: kept out of the module tree, so it is neither
        # trained, nor saved, nor exported.
        self.__dict__["teacher"] = None
        self.__dict__["generator"] = torch.Generator().manual_seed(seed)
        self.__dict__["pool"] = None  # (frozen features, targets), built by prepare(); never saved

    def attach_teacher(self, teacher: DeployableDetector) -> None:
        """Set the trained RD4AD (with its preprocessing) whose maps are the targets.

        Raises:
            ValueError: If the teacher's input size or normalisation differs from the student's.
        """
        inner = teacher.detector
        if inner.image_size != self.image_size or tuple(inner.mean) != self.mean or tuple(inner.std) != self.std:
            raise ValueError("the teacher's input size and normalisation must equal the student's")
        self.__dict__["teacher"] = teacher.eval()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's parameters, less a frozen hint encoder's."""
        return [p for p in self.parameters() if p.requires_grad]

    def log_map(self, x: Tensor) -> Tensor:
        """The prediction ``log(1 + map)`` on the stride-8 grid, ``(N, 1, S/8, S/8)``."""
        return self._log_map_of(self.features.frozen(x))

    def _log_map_of(self, frozen: Tensor) -> Tensor:
        """:meth:`log_map` from the features' frozen part (an image's, or a pool sample's)."""
        return self.smooth(self.head(self.features.trained(frozen)))

    @torch.no_grad()
    def targets(self, x: Tensor) -> Tensor:
        """``log(1 + teacher map)`` pooled (``target_pool``) to the student's grid, the map as the teacher scores it.

        Why the scored map (after the teacher's positional normalisation, where it has one) and not the raw one:
        the student should learn where the teacher *alarms*, not where its raw discrepancy is merely high (image
        borders, always-hard positions). Negative z-scores (more normal than usual) clamp to 0. A teacher's tap
        memory holds these training images themselves, so the unchanged parts of a perturbed copy find themselves
        in it and only the changes read as far; that is kept on purpose: with each image left out of the bank, as a
        new image would be scored, the targets on good regions carry the teacher's noise and the student scored
        worse (meadow 0.860 / 0.776 against 0.911 / 0.869; commit 25f9f92, README).
        """
        if self.teacher is None:
            raise RuntimeError("attach_teacher() first: the student learns from a trained RD4AD")
        amap = self.teacher.scored_maps(x)
        return TARGET_POOLS[self.target_pool](torch.log1p(amap.clamp_min(0)), STRIDE)

    @torch.no_grad()
    def prepare(self, batches: Iterable[Tensor]) -> None:
        """Build the training pool: every training image and ``pool_copies`` perturbed copies of it, each as
        its frozen features and the teacher's targets.

        Why a pool rather than perturbing and asking the teacher at every step: the teacher's forward pass is
        most of a step's cost (the student's trained part is a few percent of its FLOPs), so a step on the
        pool is about 20x cheaper and the student gets thousands of steps instead of a couple of hundred in
        less time. It was underfitting at 200 steps (``stars``, broad perturbations: image AUROC 0.807 after 200
        steps in 300 s, 0.927 after 1720 pool steps in 170 s; README). Stored as float16 to halve the memory
        (about 190 MB for 85 images at 256 px).

        Raises:
            RuntimeError: Without a teacher (from :meth:`targets`), or without any batch.
        """
        images = list(batches)
        if not images:
            raise RuntimeError("the student's pool needs at least one training batch")
        if self.features.memory:
            self.features.fit_memory(torch.cat([self.features.taps(x) for x in images]), self.generator)
        frozen, targets, first = [], [], 0
        for x in images:
            ids = torch.arange(first, first + len(x))
            first += len(x)
            for copy in range(self.pool_copies + 1):
                xk = x if copy == 0 else perturb(x, self.generator, self.perturbations)
                frozen.append(self.features.frozen(xk, ids).half())
                targets.append(self.targets(xk))
        self.__dict__["pool"] = (torch.cat(frozen), torch.cat(targets))

    def _prepared_pool(self) -> tuple[Tensor, Tensor]:
        if self.pool is None:
            raise RuntimeError("prepare(training batches) first: the student trains on its pool")
        return self.pool

    def steps_per_epoch(self, loader_steps: int) -> int:
        """One pass over the pool in batches of :data:`POOL_BATCH`."""
        return -(-len(self._prepared_pool()[0]) // POOL_BATCH)

    def epoch_batches(self, batches: Iterator[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        """The pool, shuffled, as ``(frozen features, targets)`` batches; the training images are not read again."""
        frozen, targets = self._prepared_pool()
        for idx in torch.randperm(len(frozen), generator=self.generator).split(POOL_BATCH):
            yield frozen[idx].float(), targets[idx]

    def training_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """L1 between the student's and the teacher's log maps on a pool batch (:meth:`epoch_batches`)."""
        frozen, targets = batch
        return F.l1_loss(self._log_map_of(frozen), targets)

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Raw scores ``(N, 1)`` and maps ``(N, 1, S, S)`` in the teacher's units."""
        # exp - 1 rather than expm1, which has no ONNX opset-17 export; no clamp at 0, so that "very normal"
        # regions keep distinct (slightly negative) values instead of tying.
        low = torch.exp(self.log_map(x)) - 1.0
        amap = F.interpolate(low, size=(self.image_size, self.image_size), mode="bilinear", align_corners=True)
        return torch.amax(low, dim=(2, 3)), amap
