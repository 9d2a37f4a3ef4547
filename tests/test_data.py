"""Tests for the demo dataset writer (training.demo_data) and the MVTec-layout loader (training.data)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from training import data as data_mod
from training import demo_data
from training.data import (
    DatasetError,
    ImageDataset,
    Sample,
    dataset_fingerprint,
    load_image,
    load_mask,
    make_splits,
    scan_category,
)
from training.demo_data import DEFECT_TYPES, DEMO_CATEGORIES, write_demo_dataset
from training.demo_data import dataset as demo_dataset
from training.demo_data.categories import BENCHMARK, CATEGORIES
from training.demo_data.defects import apply_defect, good_image
from training.split_sizes import validation_count

SMALL = {"image_size": 64, "n_train": 6, "n_test_good": 4, "n_per_defect": 3}
REPO = Path(__file__).resolve().parents[1]
# Where SMALL's generated evaluation indices land with the default validation_fraction=0.4
# (make_splits' rounding: good round(1.6)=2 of 4, defects round(1.2)=1 of 3), written out
# by hand so the tests do not just repeat the module's own placement code.
GOOD_PLACES = ["validation/good/val_000", "validation/good/val_001", "test/good/000", "test/good/001"]
DEFECT_PLACES = ["validation/{d}/val_000", "test/{d}/000", "test/{d}/001"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    write_demo_dataset(root, "brick", seed=0, **SMALL)
    return root


@pytest.fixture(scope="module")
def flat_root(tmp_path_factory) -> Path:
    """The demo dataset without a validation/ folder: everything in test/ (the version-1 placement)."""
    root = tmp_path_factory.mktemp("flat")
    write_demo_dataset(root, "brick", seed=0, validation_fraction=0.0, **SMALL)
    return root


@pytest.fixture()
def demo_copy(small_root, tmp_path) -> Path:
    """A private, modifiable copy of the demo dataset root."""
    shutil.copytree(small_root, tmp_path / "root")
    return tmp_path / "root"


@pytest.fixture()
def flat_copy(flat_root, tmp_path) -> Path:
    """A private, modifiable copy of the demo dataset root without validation/."""
    shutil.copytree(flat_root, tmp_path / "flat")
    return tmp_path / "flat"


# --------------------------------------------------------------------------- demo data
def test_demo_layout_and_counts(small_root):
    category = small_root / "brick"
    assert sorted(p.name for p in category.iterdir()) == sorted(
        ["train", "validation", "test", "ground_truth", demo_data.MANIFEST_NAME]
    )
    for split in ("validation", "test"):
        assert sorted(p.name for p in (category / split).iterdir()) == sorted(("good",) + DEFECT_TYPES)
    assert len(list((category / "train" / "good").glob("*.png"))) == 6
    assert sorted(p.name for p in (category / "validation" / "good").iterdir()) == ["val_000.png", "val_001.png"]
    assert sorted(p.name for p in (category / "test" / "good").iterdir()) == ["000.png", "001.png"]
    for defect in DEFECT_TYPES:
        assert sorted(p.name for p in (category / "validation" / defect).iterdir()) == ["val_000.png"]
        assert sorted(p.name for p in (category / "test" / defect).iterdir()) == ["000.png", "001.png"]
        assert sorted(p.name for p in (category / "ground_truth" / defect).iterdir()) == [
            "000_mask.png", "001_mask.png", "val_000_mask.png"
        ]
    manifest = json.loads((category / demo_data.MANIFEST_NAME).read_text())
    assert manifest["validation_fraction"] == 0.4 and manifest["version"] == demo_dataset._GENERATOR_VERSION
    assert (manifest["n_test_good"], manifest["n_per_defect"]) == (4, 3)  # totals, validation + test
    image = cv2.imread(str(category / "train" / "good" / "000.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    b, g, r = (float(image[..., c].mean()) for c in range(3))
    assert r > g > b  # brick is tinted reddish, i.e. a colour image, not grey
    assert not list(small_root.glob(".*"))  # no temporary folders left behind


def test_demo_masks_are_exact_and_sized(small_root):
    category = small_root / "brick"
    for d, defect in enumerate(DEFECT_TYPES):
        for i, place in enumerate(DEFECT_PLACES):
            image_path = category / f"{place.format(d=defect)}.png"
            image = cv2.imread(str(image_path))[..., ::-1]
            mask_path = category / "ground_truth" / defect / f"{image_path.stem}_mask.png"
            mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
            assert mask.shape == (64, 64) and mask.dtype == np.uint8
            assert set(np.unique(mask)) == {0, 255}
            inside = mask > 0
            assert 0.005 <= inside.mean() <= 0.10, (defect, i, inside.mean())
            # Regenerate the defect-free image from the same random stream: the pixels
            # that changed must be exactly (up to rounding coincidences) the mask.
            good = good_image("brick", demo_dataset._rng(0, "brick", "defect", d + 1, i), 64)
            diff = np.abs(image.astype(int) - good.astype(int)).max(axis=2)
            assert not diff[~inside].any(), f"{defect} {i}: pixels outside the mask changed"
            assert (diff[inside] > 0).mean() > 0.9
            assert diff[inside].mean() > 20, f"{defect} {i}: defect too faint"


def test_demo_images_match_old_placement(small_root, flat_root):
    """Every image is drawn from the same stream as before, only placed in validation/ or test/."""
    category, flat = small_root / "brick", flat_root / "brick"
    for i, place in enumerate(GOOD_PLACES):
        expected = good_image("brick", demo_dataset._rng(0, "brick", "test_good", 0, i), 64)
        path = category / f"{place}.png"
        assert np.array_equal(cv2.imread(str(path))[..., ::-1], expected), place
        # validation_fraction=0 is the version-1 layout: everything in test/, index i -> {i:03d}.png.
        assert path.read_bytes() == (flat / "test" / "good" / f"{i:03d}.png").read_bytes(), place
    for d, defect in enumerate(DEFECT_TYPES):
        for i, place in enumerate(DEFECT_PLACES):
            rng = demo_dataset._rng(0, "brick", "defect", d + 1, i)
            expected, expected_mask = apply_defect(rng, good_image("brick", rng, 64), "brick", defect)
            path = category / f"{place.format(d=defect)}.png"
            mask_path = category / "ground_truth" / defect / f"{path.stem}_mask.png"
            assert np.array_equal(cv2.imread(str(path))[..., ::-1], expected), place
            assert np.array_equal(cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED), expected_mask), place
            assert path.read_bytes() == (flat / "test" / defect / f"{i:03d}.png").read_bytes(), place
            assert mask_path.read_bytes() == (flat / "ground_truth" / defect / f"{i:03d}_mask.png").read_bytes()
    assert not (flat / "validation").exists()
    flat_train, new_train = _files(flat / "train"), _files(category / "train")
    assert flat_train == new_train


def test_demo_good_images_are_similar_texture(small_root):
    category = small_root / "brick"
    means = [cv2.imread(str(p)).reshape(-1, 3).mean(axis=0) for p in sorted((category / "train" / "good").glob("*.png"))]
    means = np.array(means)
    assert means.std(axis=0).max() < 15  # mild nuisance variation only


def test_demo_deterministic(tmp_path):
    a = write_demo_dataset(tmp_path / "a", "gravel", seed=5, **SMALL)
    b = write_demo_dataset(tmp_path / "b", "gravel", seed=5, **SMALL)
    c = write_demo_dataset(tmp_path / "c", "gravel", seed=6, **SMALL)
    files_a, files_b, files_c = _files(a), _files(b), _files(c)
    assert files_a == files_b
    assert files_a.keys() == files_c.keys()
    differing = [k for k in files_a if k.endswith(".png") and files_a[k] != files_c[k]]
    assert len(differing) > len(files_a) // 2


def test_demo_keeps_complete_dataset(demo_copy, capsys):
    before = _files(demo_copy / "brick")
    assert write_demo_dataset(demo_copy, "brick", seed=1, **SMALL) == demo_copy / "brick"
    assert _files(demo_copy / "brick") == before
    assert demo_data.main(["--root", str(demo_copy), "--image-size", "64"]) == 0
    assert "Kept existing" in capsys.readouterr().out
    assert _files(demo_copy / "brick") == before


def test_demo_overwrite_and_incomplete(demo_copy):
    (demo_copy / "brick" / "test" / "hole" / "000.png").unlink()
    (demo_copy / "brick" / "ground_truth" / "hole" / "000_mask.png").unlink()
    shutil.rmtree(demo_copy / "brick" / "test" / "stain")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_demo_dataset(demo_copy, "brick", **SMALL)
    write_demo_dataset(demo_copy, "brick", overwrite=True, **SMALL)
    assert (demo_copy / "brick" / "test" / "stain" / "001.png").is_file()
    assert sorted(p.name for p in demo_copy.iterdir()) == ["brick"]


def test_demo_missing_validation_is_incomplete(demo_copy):
    # A current-version dataset that lost its validation/ folder is broken, not kept: with
    # it gone, make_splits would silently split test/ again.
    shutil.rmtree(demo_copy / "brick" / "validation")
    with pytest.raises(FileExistsError, match="not a complete demo dataset"):
        write_demo_dataset(demo_copy, "brick", **SMALL)


def test_demo_regenerates_old_version(small_root, demo_copy, caplog):
    category = demo_copy / "brick"
    # Simulate a version-1 dataset: no validation/ folder, no validation_fraction in the manifest.
    manifest_path = category / demo_data.MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = 1
    del manifest["validation_fraction"]
    manifest_path.write_text(json.dumps(manifest))
    shutil.rmtree(category / "validation")
    for mask in category.glob("ground_truth/*/val_*_mask.png"):
        mask.unlink()
    with caplog.at_level(logging.INFO, logger="training.demo_data"):
        assert write_demo_dataset(demo_copy, "brick", seed=0, **SMALL) == category  # no FileExistsError
    assert any("version 1" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    assert _files(category) == _files(small_root / "brick")  # regenerated, byte-identical
    assert sorted(p.name for p in demo_copy.iterdir()) == ["brick"]  # swapped in place, nothing left over
    # The same through the CLI (what `make demo` runs on an old data/ folder).
    manifest_path.write_text(json.dumps(manifest))
    shutil.rmtree(category / "validation")
    assert demo_data.main(["--root", str(demo_copy), "--image-size", "64", "--n-train", "6",
                           "--n-test-good", "4", "--n-per-defect", "3"]) == 0
    assert _files(category) == _files(small_root / "brick")


def test_demo_invalid_validation_fraction(tmp_path, capsys):
    for fraction in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"validation_fraction must be in \[0, 1\)"):
            write_demo_dataset(tmp_path, "brick", validation_fraction=fraction, **SMALL)
    for fraction in ("0.4", None, True):
        with pytest.raises(TypeError, match="validation_fraction must be a number"):
            write_demo_dataset(tmp_path, "brick", validation_fraction=fraction, **SMALL)
    assert demo_data.main(["--root", str(tmp_path), "--validation-fraction", "1"]) == 2
    assert "validation_fraction" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # validated before anything is written


def test_demo_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = demo_dataset.write_png

    def failing(path, array):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        original(path, array)

    monkeypatch.setattr(demo_dataset, "write_png", failing)
    with pytest.raises(KeyboardInterrupt):
        write_demo_dataset(tmp_path, "grass", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_demo_cli(tmp_path, capsys):
    args = ["--root", str(tmp_path), "--category", "grass", "--image-size", "48", "--n-train", "2",
            "--n-test-good", "1", "--n-per-defect", "1", "--seed", "3"]
    assert demo_data.main(args) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "grass") in out and "train/good" in out
    assert "validation/" not in out  # single-image folders all go to test: no validation/ folder
    assert not (tmp_path / "grass" / "validation").exists()
    assert cv2.imread(str(tmp_path / "grass" / "test" / "scratch" / "000.png")).shape == (48, 48, 3)
    args = ["--root", str(tmp_path), "--category", "gravel", "--image-size", "48", "--n-train", "2",
            "--n-test-good", "5", "--n-per-defect", "2", "--validation-fraction", "0.2"]
    assert demo_data.main(args) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()[1:]}
    assert lines["validation/good"] == 1 and lines["test/good"] == 4  # round(1.0)
    assert lines["validation/hole"] == 1 and lines["test/hole"] == 1  # round(0.4) -> at least one
    assert lines["total"] == 2 + 5 + 2 * len(DEFECT_TYPES)
    assert demo_data.main(["--root", str(tmp_path), "--category", "grass", "--seed", "-1"]) == 2
    with pytest.raises(SystemExit) as excinfo:
        demo_data.main(["--category", "marble"])
    assert excinfo.value.code == 2
    with pytest.raises(ValueError, match="unknown demo category"):
        write_demo_dataset(tmp_path, "marble")


def test_demo_module_help():
    result = subprocess.run(
        [sys.executable, "-m", "training.demo_data", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    )
    for option in ("--root", "--category", "--seed", "--image-size", "--n-train", "--n-test-good",
                   "--n-per-defect", "--validation-fraction", "--overwrite"):
        assert option in result.stdout
    assert set(DEMO_CATEGORIES) <= set(result.stdout.replace(",", " ").replace("{", " ").replace("}", " ").split())


# --------------------------------------------------------------------------- scanning / splits
def test_scan_category(small_root):
    train, test = scan_category(small_root, "brick")
    assert len(train) == 6 and all(s.label == 0 and s.defect == "good" and s.mask_path is None for s in train)
    assert [s.path for s in train] == sorted(s.path for s in train)
    assert Counter(s.defect for s in test) == {"good": 2, **{d: 2 for d in DEFECT_TYPES}}  # test/ only
    for s in test:
        assert s.label == (s.defect != "good")
        if s.label:
            assert s.mask_path == small_root / "brick" / "ground_truth" / s.defect / f"{s.path.stem}_mask.png"


def test_make_splits_counts_disjoint_stratified(flat_root):
    splits = make_splits(flat_root, "brick", holdout_fraction=0.34, validation_fraction=0.4, seed=0)
    assert (len(splits.train), len(splits.holdout)) == (4, 2)
    paths = [s.path for part in (splits.train, splits.holdout, splits.validation, splits.test) for s in part]
    assert len(paths) == len(set(paths)) == 6 + 4 + 3 * len(DEFECT_TYPES)
    val, test = Counter(s.defect for s in splits.validation), Counter(s.defect for s in splits.test)
    assert val == {"good": 2, **{d: 1 for d in DEFECT_TYPES}}
    assert test == {"good": 2, **{d: 2 for d in DEFECT_TYPES}}
    assert all(s.path.parent.parent.name == "train" for s in splits.train + splits.holdout)


def test_make_splits_deterministic(flat_root):
    a = make_splits(flat_root, "brick", seed=1)
    b = make_splits(flat_root, "brick", seed=1)
    assert a == b
    others = [make_splits(flat_root, "brick", seed=s) for s in range(2, 7)]
    assert any(o.validation != a.validation for o in others)
    assert any(o.holdout != a.holdout for o in others)
    with pytest.raises(ValueError):
        make_splits(flat_root, "brick", validation_fraction=1.0)


def test_make_splits_uses_demo_validation_folder(small_root, flat_root):
    category = small_root / "brick"
    for seed, fraction in ((0, 0.4), (3, 0.1)):  # fraction and seed do not matter with a validation/ folder
        splits = make_splits(small_root, "brick", validation_fraction=fraction, seed=seed)
        assert [s.path for s in splits.validation] == sorted(category.glob("validation/*/*.png"), key=str)
        assert [s.path for s in splits.test] == sorted(category.glob("test/*/*.png"), key=str)  # test/, whole
        for s in splits.validation + splits.test:
            assert s.label == (s.defect != "good")
            if s.label:
                assert s.mask_path == category / "ground_truth" / s.defect / f"{s.path.stem}_mask.png"
    # The demo's per-folder split sizes equal those of make_splits' stratified split.
    flat = make_splits(flat_root, "brick", validation_fraction=0.4)
    assert Counter(s.defect for s in splits.validation) == Counter(s.defect for s in flat.validation)
    assert Counter(s.defect for s in splits.test) == Counter(s.defect for s in flat.test)


def test_demo_validation_count_mirrors_make_splits(tmp_path):
    """validation_count, the demo writer's per-folder rule, is make_splits' rounding, for many sizes."""
    category = tmp_path / "toy"
    (category / "train" / "good").mkdir(parents=True)
    pixel = np.zeros((4, 4, 3), dtype=np.uint8)
    cv2.imwrite(str(category / "train" / "good" / "0.png"), pixel)
    for n in range(1, 9):
        (category / "test" / f"g{n}").mkdir(parents=True)  # one label-1 folder per size, without masks
        for i in range(n):
            cv2.imwrite(str(category / "test" / f"g{n}" / f"{i}.png"), pixel)
    for fraction in (0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.9, 0.99):
        splits = make_splits(tmp_path, "toy", validation_fraction=fraction)
        sizes = Counter(s.defect for s in splits.validation)
        for n in range(1, 9):
            assert sizes.get(f"g{n}", 0) == validation_count(n, fraction), (n, fraction)


def test_validation_folder_is_used(flat_copy):
    demo_copy = flat_copy  # a category without its own validation/ folder
    category = demo_copy / "brick"
    for sub in ("good", "hole"):
        (category / "validation" / sub).mkdir(parents=True)
    shutil.copy(category / "test" / "good" / "000.png", category / "validation" / "good" / "val_000.png")
    shutil.copy(category / "test" / "hole" / "000.png", category / "validation" / "hole" / "val_000.png")
    shutil.copy(category / "ground_truth" / "hole" / "000_mask.png", category / "ground_truth" / "hole" / "val_000_mask.png")
    splits = make_splits(demo_copy, "brick")
    assert [s.path.name for s in splits.validation] == ["val_000.png", "val_000.png"]
    assert len(splits.test) == 4 + 3 * len(DEFECT_TYPES)  # test/ stays whole
    hole = next(s for s in splits.validation if s.defect == "hole")
    assert hole.mask_path.name == "val_000_mask.png"
    # A validation stem that also exists in test/<defect>/ would share its mask: refused.
    shutil.copy(category / "test" / "hole" / "001.png", category / "validation" / "hole" / "001.png")
    with pytest.raises(DatasetError, match="001"):
        make_splits(demo_copy, "brick")


def test_scan_errors(demo_copy):
    with pytest.raises(DatasetError, match="nosuch"):
        scan_category(demo_copy, "nosuch")
    category = demo_copy / "brick"
    (category / "test" / ".ipynb_checkpoints").mkdir()  # hidden folders and files are ignored
    (category / "test" / "good" / "._000.png").write_bytes(b"macOS resource fork")
    _, test = scan_category(demo_copy, "brick")
    assert len(test) == 2 + 2 * len(DEFECT_TYPES)  # test/ only; validation/ is scan_validation's
    (category / "ground_truth" / "scratch" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"scratch/001\.png"):
        scan_category(demo_copy, "brick")
    # Without any ground_truth/scratch folder the images are allowed, without masks.
    shutil.rmtree(category / "ground_truth" / "scratch")
    _, test = scan_category(demo_copy, "brick")
    assert all(s.mask_path is None and s.label == 1 for s in test if s.defect == "scratch")
    for p in (category / "test" / "stain").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="empty folder.*stain"):
        scan_category(demo_copy, "brick")
    shutil.rmtree(category / "train")
    with pytest.raises(DatasetError, match=r"train/good"):
        scan_category(demo_copy, "brick")
    with pytest.raises(ValueError):  # DatasetError is also a ValueError ...
        scan_category(demo_copy, "brick")
    with pytest.raises(FileNotFoundError):  # ... and a FileNotFoundError
        scan_category(demo_copy, "brick")


# --------------------------------------------------------------------------- loading
def test_load_image_formats(tmp_path):
    gray = np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    loaded = load_image(tmp_path / "gray.png", 32)
    assert loaded.shape == (32, 32, 3) and loaded.dtype == np.uint8
    assert (loaded == gray[..., None]).all()

    rgba = np.zeros((40, 40, 4), dtype=np.uint8)  # OpenCV order: B, G, R, A
    rgba[..., 2] = 200  # red
    rgba[..., 1] = 50  # green
    rgba[..., 3] = 128
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    loaded = load_image(tmp_path / "rgba.png", 20)
    assert loaded.shape == (20, 20, 3)
    assert tuple(loaded[5, 5]) == (200, 50, 0)  # returned as RGB

    bgr = np.zeros((16, 16, 3), dtype=np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV order
    cv2.imwrite(str(tmp_path / "blue.jpg"), bgr)
    assert load_image(tmp_path / "blue.jpg", 16)[..., 2].mean() > 240


def test_load_image_errors(small_root, tmp_path):
    # A truncated PNG (interrupted copy).  Note: a PNG header followed by junk that reads
    # as a huge chunk length makes OpenCV 4.11 spend seconds before failing; avoid it here.
    good = (small_root / "brick" / "train" / "good" / "000.png").read_bytes()
    (tmp_path / "corrupt.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match="corrupt.png"):
        load_image(tmp_path / "corrupt.png", 32)
    (tmp_path / "text.jpg").write_bytes(b"this is not an image at all")
    with pytest.raises(DatasetError, match="text.jpg"):
        load_image(tmp_path / "text.jpg", 32)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="empty.png"):
        load_image(tmp_path / "empty.png", 32)
    with pytest.raises(DatasetError, match="missing.png"):
        load_image(tmp_path / "missing.png", 32)


def test_load_mask(tmp_path):
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:4, 2:6] = 255
    cv2.imwrite(str(tmp_path / "m255.png"), mask)
    cv2.imwrite(str(tmp_path / "m1.png"), (mask > 0).astype(np.uint8))
    for name in ("m255.png", "m1.png"):
        loaded = load_mask(tmp_path / name, 16)
        assert loaded.dtype == np.uint8 and set(np.unique(loaded)) == {0, 1}
        assert loaded.sum() == 2 * 4 * 4  # 8 pixels, each becomes 2x2 with the nearest upscale
    assert not load_mask(None, 8).any() and load_mask(None, 8).shape == (8, 8)


def test_image_dataset(small_root, monkeypatch):
    _, test = scan_category(small_root, "brick")
    dataset = ImageDataset(test, 32)
    assert len(dataset) == len(test)
    anomalous = next(i for i, s in enumerate(test) if s.label == 1)
    item = dataset[anomalous]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (32, 32, 3)
    assert item["mask"].dtype == torch.uint8 and item["mask"].shape == (32, 32) and item["mask"].sum() > 0
    assert item["label"].item() == 1 and item["index"] == anomalous
    assert (dataset.labels == [s.label for s in test]).all()

    def no_reads(*args, **kwargs):
        raise AssertionError("cache miss")

    monkeypatch.setattr(data_mod, "load_image", no_reads)
    again = dataset[anomalous]  # served from the cache
    assert torch.equal(again["image"], item["image"])
    item["image"].zero_()  # callers mutating items must not corrupt the cache
    assert torch.equal(dataset[anomalous]["image"], again["image"])
    monkeypatch.undo()

    batch = next(iter(torch.utils.data.DataLoader(ImageDataset(test[:4], 32).preload(), batch_size=4)))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["label"].shape == (4,)

    torch.manual_seed(0)
    flipped = ImageDataset(test, 32, augment=True)
    flipped._cache = dataset._cache
    outputs = {bytes(flipped[anomalous]["image"].numpy()) for _ in range(12)}
    assert len(outputs) > 1


def test_dataset_fingerprint(small_root, tmp_path):
    train, test = scan_category(small_root, "brick")
    fingerprint = dataset_fingerprint(test)
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    assert dataset_fingerprint(list(reversed(test))) == fingerprint  # order-independent
    assert dataset_fingerprint(train) != fingerprint
    shutil.copytree(small_root / "brick", tmp_path / "elsewhere" / "brick")
    _, moved = scan_category(tmp_path / "elsewhere", "brick")
    assert dataset_fingerprint(moved) == fingerprint  # location-independent
    mask = next(s.mask_path for s in moved if s.mask_path is not None)
    mask_bytes = bytearray(mask.read_bytes())
    mask_bytes[-13] ^= 1  # flip a bit (inside the IEND chunk CRC is fine: bytes are hashed)
    mask.write_bytes(bytes(mask_bytes))
    assert dataset_fingerprint(moved) != fingerprint
    relabelled = [Sample(s.path, 1 - s.label, s.defect, s.mask_path) for s in test]
    assert dataset_fingerprint(relabelled) != fingerprint


# --------------------------------------------------------------------------- benchmark categories
@pytest.mark.parametrize("category", BENCHMARK)
def test_benchmark_category_layout_masks_and_determinism(category: str, tmp_path: Path) -> None:
    """Each benchmark category writes the MVTec layout with its own defect kinds (none of the demo's), exact
    masks (the image differs from its good twin only inside the mask, the mask covers a small, non-empty part),
    and the same bytes for the same seed."""
    kinds = CATEGORIES[category].defects
    assert kinds and not set(kinds) & set(DEFECT_TYPES)
    root = write_demo_dataset(tmp_path / "a", category, seed=3, **SMALL).parent
    train, test = scan_category(root, category)
    assert len(train) == SMALL["n_train"]
    assert Counter(s.defect for s in test) == {"good": 2, **{d: 2 for d in kinds}}
    for d, kind in enumerate(kinds):
        for i, (split, stem) in enumerate([("validation", "val_000"), ("test", "000"), ("test", "001")]):
            rng = demo_dataset._rng(3, category, "defect", d + 1, i)
            good = CATEGORIES[category].good(rng, SMALL["image_size"])
            image = cv2.imread(str(root / category / split / kind / f"{stem}.png"))[..., ::-1]
            mask = cv2.imread(str(root / category / "ground_truth" / kind / f"{stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
            assert image.shape == (64, 64, 3) and mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
            changed = np.any(image != good, axis=2)
            assert changed.any() and not (changed & (mask == 0)).any(), (kind, stem)
            assert 0.0005 < (mask > 0).mean() < 0.15, (kind, stem)
    again = write_demo_dataset(tmp_path / "b", category, seed=3, **SMALL)
    assert _files(again) == _files(root / category)


def test_benchmark_categories_leave_the_demo_images_as_they_were(small_root: Path, tmp_path: Path) -> None:
    """Adding categories must not move the demo's random streams: brick is byte-identical to its renderer."""
    for i in range(2):
        expected = good_image("brick", demo_dataset._rng(0, "brick", "train", 0, i), 64)
        got = cv2.imread(str(small_root / "brick" / "train" / "good" / f"{i:03d}.png"))[..., ::-1]
        assert np.array_equal(got, expected)
    assert list(CATEGORIES)[:len(DEMO_CATEGORIES)] == list(DEMO_CATEGORIES)
