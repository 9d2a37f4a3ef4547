"""Loading datasets in the MVTec AD folder layout.

This is the layout of MVTec AD, of the built-in demo data (:mod:`training.demo_data`)
and the layout users arrange their own images in::

    <root>/<category>/train/good/*.png                   defect-free training images
    <root>/<category>/test/good/*.png                    defect-free test images
    <root>/<category>/test/<defect>/*.png                anomalous test images, one folder per defect type
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   pixel masks (non-zero = anomalous)
    <root>/<category>/validation/good|<defect>/*.png     optional, see :func:`make_splits`

Image files may be ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif`` or ``.tiff`` (any
case); files are always listed in sorted order; other files, and hidden files and
folders (names starting with ``.``, e.g. ``.ipynb_checkpoints``), are ignored.

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

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD = "good"


class DatasetError(ValueError, FileNotFoundError):
    """A dataset folder or file is missing, empty, unreadable or inconsistent.

    Subclasses both :class:`ValueError` and :class:`FileNotFoundError`, so callers can
    catch either.  The message always names the offending path.
    """


@dataclass(frozen=True)
class Sample:
    """One image of the dataset.

    Attributes:
        path: The image file.
        label: 0 for a good (normal) image, 1 for an anomalous one.
        defect: ``"good"`` or the name of the defect folder.
        mask_path: The ground-truth mask, or ``None`` for good images and for anomalous
            images of a defect type that has no ``ground_truth/<defect>/`` folder.
    """

    path: Path
    label: int
    defect: str
    mask_path: Path | None


@dataclass(frozen=True)
class DatasetSplits:
    """Disjoint splits of one category; see the module docstring for their roles."""

    train: list[Sample]
    holdout: list[Sample]
    validation: list[Sample]
    test: list[Sample]


# --------------------------------------------------------------------------- scanning
def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def _require_dir(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise DatasetError(f"missing {what} folder: {folder}")


def _mask_index(mask_dir: Path) -> dict[str, Path]:
    """Map image stem -> mask file; accepts ``<stem>_mask.<ext>`` (MVTec) and ``<stem>.<ext>``."""
    index: dict[str, Path] = {}
    plain: dict[str, Path] = {}
    for mask in _list_images(mask_dir):
        if mask.stem.endswith("_mask"):
            index.setdefault(mask.stem[: -len("_mask")], mask)
        else:
            plain.setdefault(mask.stem, mask)
    for stem, mask in plain.items():  # "<stem>_mask" wins over "<stem>" when both exist
        index.setdefault(stem, mask)
    return index


def _scan_split(category_dir: Path, split: str) -> list[Sample]:
    """Scan ``<category>/<split>/`` (test or validation): good plus one folder per defect."""
    split_dir = category_dir / split
    _require_dir(split_dir, f"{split}/")
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"no sub-folders (good/, <defect>/) in {split_dir}")
    samples: list[Sample] = []
    for folder in folders:
        images = _list_images(folder)
        if not images:
            raise DatasetError(f"empty folder (no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images): {folder}")
        defect = folder.name
        if defect == GOOD:
            samples.extend(Sample(path, 0, GOOD, None) for path in images)
            continue
        mask_dir = category_dir / "ground_truth" / defect
        if not mask_dir.is_dir():
            logger.warning(
                "no ground_truth/%s/ folder in %s: %d anomalous %s images have no masks "
                "(image-level labels only; pixel metrics treat them as all-normal)",
                defect,
                category_dir,
                len(images),
                split,
            )
            samples.extend(Sample(path, 1, defect, None) for path in images)
            continue
        masks = _mask_index(mask_dir)
        for path in images:
            mask = masks.get(path.stem)
            if mask is None:
                raise DatasetError(
                    f"anomalous image {path} has no mask: expected {mask_dir / (path.stem + '_mask.png')} "
                    f"(or another image extension)"
                )
            samples.append(Sample(path, 1, defect, mask))
    return samples


def scan_category(root: Path, category: str) -> tuple[list[Sample], list[Sample]]:
    """List the images of one category in the MVTec AD layout.

    Args:
        root: Dataset root containing ``<category>/``.
        category: Category folder name.

    Returns:
        ``(train, test)``: the images of ``train/good`` (all label 0) and every image of
        ``test/`` (``test/good`` label 0, every other sub-folder is a defect type with
        label 1), each in sorted order.

    Masks are looked up in ``ground_truth/<defect>/`` by file stem, as
    ``<stem>_mask.<ext>`` (MVTec AD naming) or ``<stem>.<ext>``.  An anomalous image
    without a mask is an error, *except* when the whole ``ground_truth/<defect>/``
    folder is absent: then that defect type has image-level labels only and its
    samples get ``mask_path=None`` (a warning is logged; :func:`load_mask` turns ``None``
    into an all-zero mask, so pixel metrics are not meaningful for those images).

    Raises:
        DatasetError: A required folder is missing (``<category>``, ``train/good``,
            ``test``), a folder has no images, or an anomalous image has no mask.
    """
    category_dir = Path(root) / category
    _require_dir(category_dir, "category")
    train_dir = category_dir / "train" / GOOD
    _require_dir(train_dir, "train/good/")
    train_images = _list_images(train_dir)
    if not train_images:
        raise DatasetError(f"empty folder (no images): {train_dir}")
    train = [Sample(path, 0, GOOD, None) for path in train_images]
    test = _scan_split(category_dir, "test")
    return train, test


def scan_validation(root: Path, category: str) -> list[Sample] | None:
    """List ``<category>/validation/`` if the category has one, else return ``None``.

    The folder has the same layout as ``test/`` (``validation/good``,
    ``validation/<defect>``); masks are found in ``ground_truth/<defect>/`` by file stem,
    exactly as for ``test/``.  Because test and validation masks share that folder,
    an image stem must not occur in both ``test/<defect>/`` and
    ``validation/<defect>/`` (for example name validation images ``val_000.png``).

    Raises:
        DatasetError: As :func:`scan_category`, or when a validation image stem collides
            with a test image stem of the same defect type (their masks would be shared).
    """
    category_dir = Path(root) / category
    if not (category_dir / "validation").is_dir():
        return None
    samples = _scan_split(category_dir, "validation")
    test_dir = category_dir / "test"
    for sample in samples:
        if sample.mask_path is None:
            continue
        test_images = _list_images(test_dir / sample.defect) if (test_dir / sample.defect).is_dir() else []
        clashes = [p for p in test_images if p.stem == sample.path.stem]
        if clashes:
            raise DatasetError(
                f"validation image {sample.path} and test image {clashes[0]} share the stem "
                f"{sample.path.stem!r}, so they would share the mask {sample.mask_path}; rename one of them"
            )
    return samples


# --------------------------------------------------------------------------- splitting
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
            defect type, i.e. stratified) that goes to validation; the rest is test.
            Every sub-folder with at least two images contributes at least one image to
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
        n_val = int(round(len(members) * validation_fraction))
        if len(members) >= 2 and validation_fraction > 0:
            n_val = min(max(n_val, 1), len(members) - 1)
        elif len(members) < 2:
            n_val = 0
        order = rng.permutation(len(members))
        validation.extend(members[i] for i in order[:n_val])
        test.extend(members[i] for i in order[n_val:])
    return DatasetSplits(train, holdout, _sorted(validation), _sorted(test))


# --------------------------------------------------------------------------- loading
def _read(path: Path, flags: int) -> np.ndarray:
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # works for non-ASCII paths too
    except OSError as exc:
        raise DatasetError(f"cannot read image file {path}: {exc}") from exc
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise DatasetError(f"cannot decode image file {path} (corrupt or unsupported format)")
    return image


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(image)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(image) * scale, 0, 255).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8)


def load_image(path: Path, size: int) -> np.ndarray:
    """Read an image as RGB uint8 of shape ``(size, size, 3)``.

    Grayscale images are replicated to three channels, an alpha channel is dropped,
    16-bit images are scaled to 8 bits.  The image is resized (aspect ratio not kept)
    with ``cv2.INTER_AREA``, the same resampling the serving pipeline uses.

    Raises:
        DatasetError: The file is missing, unreadable or not a decodable image.
    """
    image = _to_uint8(_read(path, cv2.IMREAD_UNCHANGED))
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 1:
        image = cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        raise DatasetError(f"unsupported number of channels ({image.shape[2]}) in {path}")
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def load_mask(path: Path | None, size: int) -> np.ndarray:
    """Read a ground-truth mask as uint8 ``{0, 1}`` of shape ``(size, size)``.

    Pixels above half the mask's maximum are anomalous, so both 0/255 and 0/1 masks
    work.  Resizing uses nearest neighbour.  ``None`` gives an all-zero mask.

    Raises:
        DatasetError: The file is missing or not a decodable image.
    """
    if path is None:
        return np.zeros((size, size), dtype=np.uint8)
    mask = _read(path, cv2.IMREAD_GRAYSCALE)
    if mask.shape != (size, size):
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    peak = int(mask.max())
    if peak == 0:
        return np.zeros((size, size), dtype=np.uint8)
    return (mask.astype(np.float32) > 0.5 * peak).astype(np.uint8)


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
    """

    def __init__(self, samples: Sequence[Sample], image_size: int, *, augment: bool = False) -> None:
        self.samples = list(samples)
        self.image_size = int(image_size)
        self.augment = augment
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        """Image labels (0 good, 1 anomalous) as an int64 array."""
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
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image).copy()),
            "label": torch.tensor(self.samples[index].label, dtype=torch.int64),
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
