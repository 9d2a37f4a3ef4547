"""The MVTec AD folder layout: which files are images, masks, good and anomalous (no decoding, no torch).

Used by training (:mod:`training.data`) and by the scoring client's evaluation against ground truth
(:mod:`client.evaluation`), so both read a dataset folder by one definition::

    <root>/<category>/train/good/*.png                   defect-free training images
    <root>/<category>/test/good/*.png                    defect-free test images
    <root>/<category>/test/<defect>/*.png                anomalous test images, one folder per defect type
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   pixel masks (non-zero = anomalous)
    <root>/<category>/validation/good|<defect>/*.png     optional validation set, same layout as test/

Image files may have any suffix in :data:`kdcore.imageio.IMAGE_EXTENSIONS` (any case); files are always
listed in sorted order; other files, and hidden files and folders (names starting with ``.``), are ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kdcore.imageio import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

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


def scan_split(category_dir: Path, split: str) -> list[Sample]:
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
    test = scan_split(category_dir, "test")
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
    samples = scan_split(category_dir, "validation")
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
