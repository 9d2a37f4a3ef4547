"""Export: parity with eager torch, the repository's contents, atomic writes, and the scorer without Triton."""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import export.repository as repository_module
from export.network import ExportParityError, check_parity, export_onnx, export_torchscript
from export.repository import ExportResult, export_run
from kdcore.scorer import Scorer, ScorerInputError
from kdcore.stats import StatsError, load_stats
from training.checkpoint import load_deployable
from training.train import TrainResult


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_repository_layout(exported: ExportResult) -> None:
    repo = exported.repository
    for rel in (
        "ad_inference/config.pbtxt", "ad_inference/validation/samples.npz", "ad_inference/validation/manifest.json",
        "ad_inference_onnx/1/model.onnx", "ad_inference_torchscript/1/model.pt", "ad_inference_scorer/stats.json",
        "ad_inference_scorer/1/model.py", "ad_inference_scorer/1/kdcore/scorer.py",
        "ad_inference_scorer/1/kdcore/stats.py", "ad_inference_decoder/1/model.py",
        "ad_inference_decoder/1/kdcore/imageio.py",
    ):
        assert (repo / rel).is_file(), rel
    assert (repo / "ad_inference" / "1").is_dir()
    onnx_cfg = (repo / "ad_inference_onnx" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in onnx_cfg and "dynamic_batching" in onnx_cfg and "model_warmup" in onnx_cfg
    assert 'platform: "pytorch_libtorch"' in (repo / "ad_inference_torchscript" / "config.pbtxt").read_text()
    # The schema shipped to the scorer is the core package's own file, not a copy that could drift.
    import kdcore.stats

    assert (repo / "ad_inference_scorer/1/kdcore/stats.py").read_text() == Path(kdcore.stats.__file__).read_text()
    assert not list(repo.parent.glob(".model_repository.*")), "staging folders left behind"


def test_parity_is_reported_and_tight(exported: ExportResult) -> None:
    assert {r.format for r in exported.parity} == {"onnx", "torchscript"}
    for r in exported.parity:
        assert set(r.max_abs) == {"pred_score", "anomaly_map"}
        assert max(r.max_abs.values()) < 1e-4


def test_parity_check_catches_a_different_model(trained_run: TrainResult, tmp_path: Path) -> None:
    model, spec, _ = load_deployable(trained_run.paths.root)
    onnx_path = export_onnx(model, spec, tmp_path / "m.onnx")
    ts_path = export_torchscript(model, spec, tmp_path / "m.pt")
    images = np.load(trained_run.paths.samples)["inputs"]
    with torch.no_grad():
        model.detector.decoder.stage1[0].conv2.weight.mul_(1.5)  # the eager model drifts from the files
    with pytest.raises(ExportParityError, match="exceeds the tolerance"):
        check_parity(model, spec, images, onnx_path, ts_path)


def test_failed_export_leaves_the_repository_intact(
    exported: ExportResult, trained_run: TrainResult, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    repo = tmp_path / "model_repository"
    export_run(trained_run.paths.root, repo, threads=1)
    before = _tree_digest(repo)

    def broken(*args, **kwargs):
        raise ExportParityError("onnx: max |diff| score 1.0 exceeds the tolerance")

    monkeypatch.setattr(repository_module, "check_parity", broken)
    with pytest.raises(ExportParityError):
        export_run(trained_run.paths.root, repo, threads=1)
    assert _tree_digest(repo) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging or backup folders left behind"


def test_corrupt_stats_aborts_export_with_the_field_named(trained_run: TrainResult, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for p in trained_run.paths.root.iterdir():
        if p.is_file():
            (run / p.name).write_bytes(p.read_bytes())
    doc = json.loads((run / "stats.json").read_text())
    doc["pixel_calibration"]["scale"] = 0
    (run / "stats.json").write_text(json.dumps(doc))
    repo = tmp_path / "repo"
    with pytest.raises(StatsError, match="field 'pixel_calibration.scale'"):
        export_run(run, repo)
    assert not repo.exists() or not any(repo.iterdir())
    done = subprocess.run(
        [sys.executable, "-m", "export.cli", "--run", str(run), "--repository", str(repo)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1 and "repository unchanged" in done.stderr and "pixel_calibration.scale" in done.stderr


def test_scorer_calibrates_and_labels(trained_run: TrainResult) -> None:
    stats = load_stats(trained_run.paths.stats)
    scorer = Scorer(stats)
    size = stats.model.input_size
    t = stats.image_threshold.value
    raw = np.array([[t - 10 * stats.image_calibration.scale], [t], [t + 10 * stats.image_calibration.scale]], np.float32)
    out = scorer(raw, np.zeros((3, 1, size, size), np.float32))
    assert out.score.shape == (3, 1) and out.anomaly_map.shape == (3, 1, size, size)
    assert out.score[0, 0] < 0.01 and abs(out.score[1, 0] - 0.5) < 1e-6 and out.score[2, 0] > 0.99
    assert list(out.label.ravel()) == [b"normal", b"anomalous", b"anomalous"]
    with pytest.raises(ScorerInputError, match="NaN"):
        scorer(np.array([[np.nan]], np.float32), np.zeros((1, 1, size, size), np.float32))
    with pytest.raises(ScorerInputError, match="expected"):
        scorer(raw, np.zeros((3, 1, size + 1, size), np.float32))


def test_calibration_properties_hold_for_every_exported_model(exported_all: list[ExportResult]) -> None:
    """Each model's shipped stats JSON maps its threshold to 0.5, is monotonic and bounded, good median low."""
    for result in exported_all:
        stats = load_stats(result.repository / result.names.scorer / "stats.json")
        cals = [(stats.image_calibration, stats.image_scores)]
        if stats.pixel_calibration is not None:
            cals.append((stats.pixel_calibration, stats.pixel_scores))
        for cal, good in cals:
            assert cal.apply(np.array([cal.threshold]))[0] == 0.5, result.names.name
            raw = np.linspace(good.min - 10 * cal.scale, good.max + 10 * cal.scale, 5001)
            p = cal.apply(raw)
            assert p.min() >= 0 and p.max() <= 1 and np.all(np.diff(p) >= 0), result.names.name
            if cal.threshold > good.median:
                assert cal.apply(np.array([good.median]))[0] < 0.25, result.names.name


def test_torchscript_argument_is_named_like_the_triton_input(exported_all: list[ExportResult]) -> None:
    """Triton's libtorch backend binds config inputs to forward()'s argument names."""
    import warnings

    for result in exported_all:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(result.repository / result.names.torchscript / "1" / "model.pt"))
        args = [a.name for a in module.forward.schema.arguments][1:]  # what the backend reads; [0] is self
        config = (result.repository / result.names.torchscript / "config.pbtxt").read_text()
        assert len(args) == 1 and f'name: "{args[0]}"' in config.split("output")[0], (result.names.name, args)


#: What a Python backend of the repository may import: it runs on the server's Python (the NGC image's), where
#: only these are installed (docker/Dockerfile.server).
BACKEND_ALLOWED = {"numpy", "cv2", "pydantic", "triton_python_backend_utils", "kdcore"}


def _imports(path: Path) -> set[str]:
    """Every absolute module a file imports (dotted names)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_shipped_backends_import_only_the_standard_library_numpy_opencv_and_pydantic(exported: ExportResult) -> None:
    """Every file the exporter ships beside a Python backend, and the ``kdcore`` modules they import, stay within
    the standard library, numpy, OpenCV and pydantic; the shipped ``kdcore`` holds every module it imports."""
    repo = exported.repository
    for folder in ("ad_inference_scorer/1", "ad_inference_decoder/1"):
        files = sorted((repo / folder).rglob("*.py"))
        shipped = {p.stem for p in (repo / folder / "kdcore").glob("*.py")}
        assert files and "__init__" in shipped, folder
        for path in files:
            imports = _imports(path)
            tops = {m.split(".")[0] for m in imports}
            outside = {m for m in tops - BACKEND_ALLOWED if m not in sys.stdlib_module_names}
            assert not outside, (path, outside)
            used = {m.split(".")[1] for m in imports if m.startswith("kdcore.")}
            assert used <= shipped, (path, used - shipped)
        # The backend loads in a fresh interpreter with nothing of the project on the path but the folder itself.
        probe = ("import sys, types; sys.modules['triton_python_backend_utils'] = types.ModuleType('pb'); "
                 f"sys.path[:] = [{str(repo / folder)!r}] + [p for p in sys.path if 'site-packages' in p or 'lib/python' in p]; "
                 "import kdcore; assert kdcore.__file__.startswith(sys.path[0]), kdcore.__file__; "
                 "import runpy; runpy.run_path(sys.path[0] + '/model.py')")
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd="/")
        assert done.returncode == 0, (folder, done.stderr[-2000:])
