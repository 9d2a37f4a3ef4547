"""Writing the versioned demo dataset in the MVTec AD folder layout, atomically::

    <root>/<category>/train/good/000.png ...
    <root>/<category>/validation/good/val_000.png ...
    <root>/<category>/validation/<defect>/val_000.png ...      defects: scratch, hole, stain, foreign
    <root>/<category>/test/good/000.png ...
    <root>/<category>/test/<defect>/000.png ...
    <root>/<category>/ground_truth/<defect>/000_mask.png ...      masks of test/<defect>/000.png ...
    <root>/<category>/ground_truth/<defect>/val_000_mask.png ...  masks of validation/<defect>/val_000.png ...
    <root>/<category>/demo_manifest.json                    (parameters it was written with)

Masks are uint8 0/255, the same size as their image.  The validation set is an explicit
``validation/`` folder (see :func:`training.data.make_splits`: when it exists, it *is* the
validation split and ``test/`` stays whole), so the test split is a folder on disk that
anyone (for example a serving client) can evaluate on and reproduce the recorded test
metrics.

``n_test_good`` and ``n_per_defect`` are the *total* numbers of good / per-defect
evaluation images (validation and test together).  Per folder (``good`` and each defect
type) with ``n`` images, the first ``n_val`` generated images (indices ``0 .. n_val-1``)
go to ``validation/`` and the rest to ``test/``, where ``n_val`` is
:func:`training.split_sizes.validation_count`, the rule :func:`training.data.make_splits`
splits by: ``round(n * validation_fraction)`` (Python rounding), then at least one image on
each side when ``n >= 2`` and the fraction is positive, and ``0`` when ``n == 1`` (a lone
image goes to test).  Names are numbered
from zero within each folder: generated index ``k < n_val`` is ``validation/.../val_<k>.png``
and generated index ``k >= n_val`` is ``test/.../<k - n_val>.png`` (three digits, more when
needed).  The ``val_`` prefix keeps validation stems distinct from test stems, because
the masks of both share ``ground_truth/<defect>/``.  No empty folder is written: with
``validation_fraction=0`` (or only single-image folders) there is no ``validation/`` at
all, and :func:`training.data.make_splits` then splits ``test/`` itself as for any
category without a ``validation/`` folder.

Everything is drawn from ``numpy.random.Generator`` streams derived from ``seed``
(one independent stream per image), so the same seed gives byte-identical files.  The
stream of an evaluation image depends only on its generated index, not on whether it
lands in ``validation/`` or ``test/``: version 1 of this generator (no ``validation/``
folder, everything in ``test/``) wrote exactly the same images.
The dataset is written into a temporary sibling folder and renamed into place at the
end; an interrupted run never leaves a half-written ``<root>/<category>``.  A dataset
written by another generator version (its ``demo_manifest.json`` says so) is replaced
the same way, even without ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from kdcore.atomic import swap_in
from training.demo_data.categories import CATEGORIES, get_category
from training.demo_data.defects import DEFECT_TYPES
from training.split_sizes import validation_count

logger = logging.getLogger(__name__)

#: The file in ``<root>/<category>/`` that records the generator, its version and the parameters.
MANIFEST_NAME = "demo_manifest.json"
# The manifest's "generator" value. It names the module this writer was once (now the package), and must stay
# as it is: it is how a dataset on disk is recognised as this generator's, of whichever version.
_GENERATOR = "training.demo_data"
# Version 2: explicit validation/ folder (validation_fraction).  Any other version on disk
# is regenerated, because its layout would silently change what make_splits calls "test".
_GENERATOR_VERSION = 2

_SPLIT_IDS = {"train": 0, "test_good": 1, "defect": 2}


def _rng(seed: int, category: str, split: str, defect_index: int, index: int) -> np.random.Generator:
    entropy = [seed, list(CATEGORIES).index(category), _SPLIT_IDS[split], defect_index, index]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def write_png(path: Path, array: np.ndarray) -> None:
    """Write an RGB (or single-channel) uint8 image as PNG; raises :class:`OSError` if OpenCV cannot."""
    if array.ndim == 3:
        array = np.ascontiguousarray(array[..., ::-1])  # RGB -> BGR for OpenCV
    if not cv2.imwrite(str(path), array, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"could not write {path}")


def _image_names(count: int) -> list[str]:
    width = max(3, len(str(max(count - 1, 0))))
    return [f"{i:0{width}d}" for i in range(count)]


def _count_images(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())


def _placement(n: int, fraction: float) -> list[tuple[str, str]]:
    """``(split, stem)`` for generated evaluation indices ``0 .. n-1``: validation first, then test."""
    n_val = validation_count(n, fraction)
    return [("validation", f"val_{name}") for name in _image_names(n_val)] + [
        ("test", name) for name in _image_names(n - n_val)
    ]


def _eval_folders(params: Mapping) -> list[tuple[str, int]]:
    """``(folder, total image count)`` for ``good`` and every defect type."""
    kinds = get_category(params["category"]).defects if params.get("category") in CATEGORIES else DEFECT_TYPES
    return [("good", int(params["n_test_good"]))] + [(d, int(params["n_per_defect"])) for d in kinds]


def _looks_complete(category_dir: Path, params: Mapping) -> bool:
    """True when ``category_dir`` has every folder of the demo layout ``params`` describes.

    Every expected folder must be non-empty and every anomalous image must have its mask;
    ``validation/<folder>`` is expected exactly where ``params`` put images in it (so
    with a positive ``validation_fraction`` a dataset without ``validation/`` is
    incomplete).  Counts are not compared, as before: a complete dataset written with
    other sizes is kept (with a warning), not treated as broken.
    """
    if _count_images(category_dir / "train" / "good") == 0:
        return False
    fraction = float(params.get("validation_fraction", 0.0))
    for folder, n in _eval_folders(params):
        n_val = validation_count(n, fraction)
        for split, expected in (("validation", n_val), ("test", n - n_val)):
            image_dir = category_dir / split / folder
            if expected == 0:
                continue
            if _count_images(image_dir) == 0:
                return False
            if folder == "good":
                continue
            for image in image_dir.iterdir():
                mask = category_dir / "ground_truth" / folder / f"{image.stem}_mask.png"
                if image.suffix.lower() == ".png" and not mask.is_file():
                    return False
    return True


def image_counts(category_dir: Path) -> dict[str, int]:
    """Image counts per folder, ``validation/*`` only when the dataset has that folder."""
    counts = {"train/good": _count_images(category_dir / "train" / "good")}
    splits = ("validation", "test") if (category_dir / "validation").is_dir() else ("test",)
    for split in splits:
        kinds = CATEGORIES[category_dir.name].defects if category_dir.name in CATEGORIES else DEFECT_TYPES
        for folder in ("good",) + kinds:
            counts[f"{split}/{folder}"] = _count_images(category_dir / split / folder)
    return counts


def _generate(target: Path, params: dict) -> None:
    category, size, seed = params["category"], params["image_size"], params["seed"]
    renderer = get_category(category)
    fraction = params["validation_fraction"]
    train_dir = target / "train" / "good"
    train_dir.mkdir(parents=True)
    for i, name in enumerate(_image_names(params["n_train"])):
        write_png(train_dir / f"{name}.png", renderer.good(_rng(seed, category, "train", 0, i), size))
    # The random stream of evaluation image i is keyed by its generated index only, not by
    # where it is placed, so the images are the same as those of generator version 1.
    # Folders are created on first use: an empty validation/<folder> would make
    # training.data.scan_validation fail.
    for i, (split, stem) in enumerate(_placement(params["n_test_good"], fraction)):
        image_dir = target / split / "good"
        image_dir.mkdir(parents=True, exist_ok=True)
        write_png(image_dir / f"{stem}.png", renderer.good(_rng(seed, category, "test_good", 0, i), size))
    for d, defect in enumerate(renderer.defects):
        mask_dir = target / "ground_truth" / defect
        mask_dir.mkdir(parents=True)
        for i, (split, stem) in enumerate(_placement(params["n_per_defect"], fraction)):
            image_dir = target / split / defect
            image_dir.mkdir(parents=True, exist_ok=True)
            rng = _rng(seed, category, "defect", d + 1, i)
            good = renderer.good(rng, size)
            image, mask = renderer.defect(rng, good, defect)
            write_png(image_dir / f"{stem}.png", image)
            write_png(mask_dir / f"{stem}_mask.png", mask)
    manifest = {"generator": _GENERATOR, "version": _GENERATOR_VERSION, **params}
    (target / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _read_manifest(category_dir: Path) -> dict | None:
    try:
        return json.loads((category_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_stale(manifest: dict | None) -> bool:
    """True when ``manifest`` was written by this generator, but by another version of it."""
    return (
        isinstance(manifest, dict)
        and manifest.get("generator") == _GENERATOR
        and manifest.get("version") != _GENERATOR_VERSION
    )


def _layout_params(manifest: dict | None, fallback: dict) -> Mapping:
    """Parameters that describe the layout on disk: a current manifest's, else ``fallback``.

    A complete dataset written with other sizes must be judged by its own layout (it is
    kept, with a warning), not by the caller's request.
    """
    if (
        isinstance(manifest, dict)
        and manifest.get("generator") == _GENERATOR
        and manifest.get("version") == _GENERATOR_VERSION
        and all(isinstance(manifest.get(k), int) for k in ("n_test_good", "n_per_defect"))
        and isinstance(manifest.get("validation_fraction"), (int, float))
    ):
        return manifest
    return fallback


def write_or_keep_demo_dataset(
    root: Path,
    category: str,
    *,
    seed: int,
    image_size: int,
    n_train: int,
    n_test_good: int,
    n_per_defect: int,
    validation_fraction: float,
    overwrite: bool,
) -> tuple[Path, bool]:
    """:func:`write_demo_dataset` (every argument required), also saying whether an existing dataset was kept.

    Returns:
        The category folder, and ``True`` when a complete dataset already there was kept instead of written.

    Raises:
        ValueError, TypeError, FileExistsError: As :func:`write_demo_dataset`.
    """
    get_category(category)  # raises for an unknown name
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    for name, value in (("n_train", n_train), ("n_test_good", n_test_good), ("n_per_defect", n_per_defect)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float, np.floating)):
        raise TypeError(f"validation_fraction must be a number in [0, 1), got {validation_fraction!r}")
    if not 0.0 <= validation_fraction < 1.0:  # also rejects NaN
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")

    root = Path(root)
    target = root / category
    params = {
        "category": category,
        "seed": int(seed),
        "image_size": int(image_size),
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_per_defect": int(n_per_defect),
        "validation_fraction": float(validation_fraction),
    }
    replace = overwrite
    if target.exists() and not overwrite:
        manifest = _read_manifest(target)
        if _is_stale(manifest):
            # Written by an older (or newer) generator, e.g. a data/ folder from before the
            # validation/ folder existed: its test/ is not the test split any more, so keeping
            # it would be wrong, and refusing would break `make demo`.  Replace it atomically.
            logger.info(
                "%s was written by demo generator version %s (current: %d); regenerating it in place",
                target,
                manifest.get("version"),
                _GENERATOR_VERSION,
            )
            replace = True
        elif _looks_complete(target, _layout_params(manifest, params)):
            if manifest is not None and any(manifest.get(k) != v for k, v in params.items()):
                logger.warning(
                    "%s was written with different parameters (%s); keeping it. Use overwrite=True "
                    "(--overwrite) to regenerate.",
                    target,
                    ", ".join(f"{k}={manifest.get(k)}" for k in params),
                )
            logger.info("kept existing complete dataset %s", target)
            return target, True
        else:
            raise FileExistsError(
                f"{target} exists but is not a complete demo dataset; pass overwrite=True (--overwrite) to replace it"
            )

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{category}.partial-", dir=root))
    try:
        os.chmod(tmp, 0o755)
        _generate(tmp, params)
        if replace and target.exists():  # overwrite or stale: move the old one aside, swap in, delete it
            swap_in(tmp, target)
        else:
            try:
                os.replace(tmp, target)
            except OSError:
                if _looks_complete(target, _layout_params(_read_manifest(target), params)):  # a concurrent run won
                    shutil.rmtree(tmp, ignore_errors=True)
                    return target, True
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote demo dataset %s", target)
    return target, False


def write_demo_dataset(
    root: Path,
    category: str = "brick",
    *,
    seed: int = 0,
    image_size: int = 256,
    n_train: int = 80,
    n_test_good: int = 24,
    n_per_defect: int = 12,
    validation_fraction: float = 0.4,
    overwrite: bool = False,
) -> Path:
    """Write the demo dataset for ``category`` under ``root`` in the MVTec AD layout.

    Args:
        root: Folder that receives ``<category>/``; created if missing.
        category: A name of :data:`~training.demo_data.categories.CATEGORIES`: a demo texture (brick, grass,
            gravel) or a benchmark category (stars, meadow, page, coffee, coins).
        seed: Non-negative seed; the same seed (and parameters) gives byte-identical files.
        image_size: Side of the square images in pixels (>= 32).
        n_train: Number of defect-free training images (``train/good``).
        n_test_good: Total number of defect-free evaluation images, ``validation/good``
            and ``test/good`` together.
        n_per_defect: Total number of evaluation images per defect type in
            :data:`DEFECT_TYPES`, ``validation/<defect>`` and ``test/<defect>`` together.
        validation_fraction: Share of each evaluation folder written to ``validation/``
            instead of ``test/``, in ``[0, 1)``; rounded per folder as in
            :func:`training.data.make_splits` (see the module docstring).  ``0`` writes
            no ``validation/`` folder.
        overwrite: Replace an existing ``<root>/<category>``.  Without it an existing
            complete dataset is kept unchanged (logged; a warning when it was written
            with other parameters), a dataset written by another version of this
            generator is regenerated in place (logged), and an existing incomplete or
            foreign folder raises :class:`FileExistsError`.

    Returns:
        The category folder ``<root>/<category>``.

    Raises:
        ValueError: An unknown category or an out-of-range parameter (including a
            ``validation_fraction`` outside ``[0, 1)``).
        TypeError: A ``validation_fraction`` that is not a number.
        FileExistsError: ``<root>/<category>`` exists but is not a complete demo dataset.

    The dataset is generated in a temporary sibling folder (``<root>/.<category>.partial-*``)
    and renamed into place only when complete, so an interrupted run never leaves a
    half-written dataset behind (a hard kill can leave the hidden temporary folder).
    """
    path, _ = write_or_keep_demo_dataset(
        root,
        category,
        seed=seed,
        image_size=image_size,
        n_train=n_train,
        n_test_good=n_test_good,
        n_per_defect=n_per_defect,
        validation_fraction=validation_fraction,
        overwrite=overwrite,
    )
    return path
