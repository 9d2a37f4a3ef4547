"""Loading datasets in the MVTec AD folder layout (see :mod:`kdcore.layout`) for training.

Folder scanning lives in :mod:`kdcore.layout` and image decoding in :mod:`kdcore.imageio`, both
torch-free so the scoring client reads datasets and images by the same rules; this module adds the splits and
the torch dataset.

Splits (:func:`make_splits`), all deterministic from a seed and never overlapping:

* ``train``: the part of ``train/good`` the model is fitted on.
* ``holdout``: a fraction of ``train/good`` that is *not* trained on; used for
  statistics of scores on unseen normal images (score normalisation).
* ``validation``: used for thresholds and model selection.
* ``test``: used only for the reported metrics.

``validation`` and ``test`` are a stratified split of ``test/`` (per defect type,
``good`` included) unless the category has its own ``validation/`` folder, in which
case that folder is the validation set and ``test/`` stays whole.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from kdcore import imageio
from kdcore.imageio import IMAGE_EXTENSIONS
from kdcore.layout import DatasetError, Sample, scan_category, scan_validation
from kdcore.stats import PatchGrid
from kdcore.tiling import Box, tile_boxes, tiling_of
from training.split_sizes import validation_count

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "Sample",
    "DatasetSplits",
    "scan_category",
    "scan_validation",
    "make_splits",
    "load_image",
    "load_mask",
    "ImageDataset",
    "dataset_fingerprint",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSplits:
    """Disjoint splits of one category; see the module docstring for their roles."""

    train: list[Sample]
    holdout: list[Sample]
    validation: list[Sample]
    test: list[Sample]


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def _sorted(samples: list[Sample]) -> list[Sample]:
    return sorted(samples, key=lambda s: str(s.path))


def make_splits(
    root: Path,
    category: str,
    *,
    holdout_fraction: float = 0.15,
    validation_fraction: float = 0.4,
    seed: int = 0,
) -> DatasetSplits:
    """Split a category into train / holdout / validation / test, deterministically.

    Args:
        root: Dataset root containing ``<category>/``.
        category: Category folder name.
        holdout_fraction: Fraction of ``train/good`` held out from training (rounded;
            at least one image when the fraction is positive, and at least one image
            is always left for training).
        validation_fraction: Fraction of each ``test/`` sub-folder (``good`` and every
            defect type, i.e. stratified) that goes to validation; the rest is test,
            rounded per sub-folder by :func:`training.split_sizes.validation_count`:
            every sub-folder with at least two images contributes at least one image to
            each side; a sub-folder with a single image goes to test.  Ignored when the
            category has a ``validation/`` folder (see :func:`scan_validation`): then
            that folder is the validation set and ``test/`` is the test set, whole.
        seed: Seed of the shuffles; the same seed and files give the same splits.

    Returns:
        The splits, each sorted by path.  They never share an image.

    Raises:
        DatasetError: See :func:`scan_category`.
        ValueError: A fraction outside ``[0, 1)``.
    """
    _check_fraction("holdout_fraction", holdout_fraction)
    _check_fraction("validation_fraction", validation_fraction)
    train_all, test_all = scan_category(root, category)
    rng = np.random.default_rng(seed)

    n_holdout = int(round(len(train_all) * holdout_fraction))
    if holdout_fraction > 0 and len(train_all) >= 2:
        n_holdout = max(n_holdout, 1)
    n_holdout = min(n_holdout, len(train_all) - 1)
    order = rng.permutation(len(train_all))
    holdout = _sorted([train_all[i] for i in order[:n_holdout]])
    train = _sorted([train_all[i] for i in order[n_holdout:]])

    validation_folder = scan_validation(root, category)
    if validation_folder is not None:
        logger.info("using %s/validation/ as the validation set; test/ is the test set", category)
        return DatasetSplits(train, holdout, _sorted(validation_folder), _sorted(test_all))

    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in test_all:
        groups[sample.defect].append(sample)
    validation: list[Sample] = []
    test: list[Sample] = []
    for defect in sorted(groups):
        members = groups[defect]
        n_val = validation_count(len(members), validation_fraction)
        order = rng.permutation(len(members))
        validation.extend(members[i] for i in order[:n_val])
        test.extend(members[i] for i in order[n_val:])
    return DatasetSplits(train, holdout, _sorted(validation), _sorted(test))


# --------------------------------------------------------------------------- loading
def _read(path: Path) -> np.ndarray:
    path = Path(path)
    try:
        return imageio.read_image(path)
    except OSError as exc:
        raise DatasetError(f"cannot read image file {path}: {exc}") from exc
    except imageio.ImageDecodeError as exc:
        raise DatasetError(f"cannot decode image file {path}: {exc}") from exc


def load_image(path: Path, size: int) -> np.ndarray:
    """Read an image as RGB uint8 of shape ``(size, size, 3)`` by the rule of :mod:`kdcore.imageio`.

    Grayscale images are replicated to three channels, an alpha channel is dropped,
    16-bit images are scaled to 8 bits.  The image is resized (aspect ratio not kept)
    with ``cv2.INTER_AREA``, the same resampling the serving pipeline uses.

    Raises:
        DatasetError: The file is missing, unreadable, truncated or not a decodable image.
    """
    return imageio.resize_to(_read(path), size)


def load_mask(path: Path | None, size: int) -> np.ndarray:
    """Read a ground-truth mask as uint8 ``{0, 1}`` of shape ``(size, size)`` (see :func:`kdcore.imageio.binary_mask`).

    Pixels above half the mask's maximum are anomalous, so both 0/255 and 0/1 masks
    work.  Resizing uses nearest neighbour.  ``None`` gives an all-zero mask.

    Raises:
        DatasetError: The file is missing or not a decodable image.
    """
    return imageio.binary_mask(None if path is None else _read(path), size)


class ImageDataset(Dataset):
    """Torch dataset over :class:`Sample` objects with an in-memory cache.

    Items are dicts ``{"image": uint8 tensor (H, W, 3) RGB, "label": int64 scalar tensor,
    "mask": uint8 tensor (H, W) with values {0, 1}, "index": int}``.  Normalisation and
    the HWC->CHW transpose are left to the model side.

    Decoded, resized images and masks are cached on first access (the datasets are
    small and decoding dominates on few cores).  Call :meth:`preload` before creating
    a ``DataLoader`` with workers, so the forked workers share the filled cache.

    Args:
        samples: The samples to serve, in order.
        image_size: Side of the square images.
        augment: If True, random horizontal/vertical flips (image and mask together,
            torch RNG).  Off by default: RD4AD trains on plain resized images, and
            flips are only label-preserving for textures and symmetric objects.
        grid: Patch training: every image is cut into this grid of overlapping windows (:mod:`kdcore.tiling`,
            the client's windows), each resized to ``image_size``; the items are the windows, labelled anomalous
            where their part of the mask is. ``windows`` and ``frame_sizes`` say where each came from.
    """

    def __init__(self, samples: Sequence[Sample], image_size: int, *, augment: bool = False,
                 grid: PatchGrid | None = None) -> None:
        self.samples = list(samples)
        self.image_size = int(image_size)
        self.augment = augment
        self.grid = grid
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        #: Patch training: the (sample index, window) of every item, and each sample's full-resolution size.
        self.windows: list[tuple[int, Box]] = []
        self.frame_sizes: list[tuple[int, int]] = []
        self._window_labels: list[int] = []
        if grid is not None:
            self._cut_windows(grid)

    def _cut_windows(self, grid: PatchGrid) -> None:
        """Every sample's windows, decoded and cut once (the frames are large; only the windows are kept)."""
        tiling = tiling_of(grid)
        for index, sample in enumerate(self.samples):
            image = _read(sample.path)
            raw_mask = None if sample.mask_path is None else _read(sample.mask_path)
            mask = np.zeros(image.shape[:2], np.uint8) if raw_mask is None else imageio.binary_mask(raw_mask, None)
            if mask.shape != image.shape[:2]:
                mask = cv2.resize(mask, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
            self.frame_sizes.append(image.shape[:2])
            for box in tile_boxes(*image.shape[:2], tiling):
                window_mask = imageio.binary_mask(mask[box.y0:box.y1, box.x0:box.x1], self.image_size)
                self._cache[len(self.windows)] = (
                    imageio.resize_to(image[box.y0:box.y1, box.x0:box.x1], self.image_size), window_mask)
                # A window is anomalous where its part of the mask is (an anomalous image without a mask: all of it).
                label = int(window_mask.any()) if sample.mask_path is not None else sample.label
                self._window_labels.append(label)
                self.windows.append((index, box))

    def __len__(self) -> int:
        return len(self.windows) if self.grid is not None else len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        """Item labels (0 good, 1 anomalous) as an int64 array: the images', or the windows' with a patch grid."""
        if self.grid is not None:
            return np.array(self._window_labels, dtype=np.int64)
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        cached = self._cache.get(index)
        if cached is None:
            sample = self.samples[index]
            cached = (load_image(sample.path, self.image_size), load_mask(sample.mask_path, self.image_size))
            self._cache[index] = cached
        return cached

    def preload(self) -> "ImageDataset":
        """Decode every image now (in this process); returns ``self``."""
        for index in range(len(self)):
            self._load(index)
        return self

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image, mask = self._load(index)
        if self.augment:
            if torch.rand(()) < 0.5:
                image, mask = image[:, ::-1], mask[:, ::-1]
            if torch.rand(()) < 0.5:
                image, mask = image[::-1], mask[::-1]
        label = self._window_labels[index] if self.grid is not None else self.samples[index].label
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image).copy()),
            "label": torch.tensor(label, dtype=torch.int64),
            "mask": torch.from_numpy(np.ascontiguousarray(mask).copy()),
            "index": index,
        }


# --------------------------------------------------------------------------- fingerprint
def _relative(path: Path) -> str:
    """Path relative to the category folder: the last three parts (split/defect/file)."""
    return "/".join(Path(path).parts[-3:])


def _hash_file(digest: "hashlib._Hash", path: Path) -> None:
    try:
        with open(path, "rb") as handle:
            digest.update(os.fstat(handle.fileno()).st_size.to_bytes(8, "little"))
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc


def dataset_fingerprint(samples: Sequence[Sample]) -> str:
    """SHA-256 (hex) over the samples' relative paths, labels, file bytes and masks.

    Paths enter relative to the category folder (``test/hole/000.png``,
    ``ground_truth/hole/000_mask.png``), so moving the dataset keeps the fingerprint,
    and the samples are sorted first, so their order does not matter.  Any change
    to an image, a mask, a label or a file name changes it.
    """
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda s: (_relative(s.path), str(s.path))):
        mask_name = _relative(sample.mask_path) if sample.mask_path is not None else "-"
        header = f"{_relative(sample.path)}\0{sample.label}\0{sample.defect}\0{mask_name}\0"
        digest.update(len(header).to_bytes(8, "little"))
        digest.update(header.encode("utf-8"))
        _hash_file(digest, sample.path)
        if sample.mask_path is not None:
            _hash_file(digest, sample.mask_path)
    return digest.hexdigest()
