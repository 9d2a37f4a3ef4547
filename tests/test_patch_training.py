"""Patch training: windows cut by the client's tiling, whole frames calibrated and measured, the grid carried to the
server and used by the client, and the served full-frame score equal to the training evaluation's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from client.scoring import ScoreConfig, score_images
from export.repository import export_runs
from kdcore.contract import PATCH_GRID_PARAMETER
from kdcore.stats import PatchGrid, load_stats
from kdcore.tiling import MapStitcher, tile_boxes, tiling_of
from serving.embedded import TritonServer
from tests.conftest import serving
from training.config import TrainConfig
from training.data import ImageDataset, make_splits
from training.demo_data import write_demo_dataset
from training.evaluate import evaluation_side, predict, predict_frames
from training.train import TrainResult, train

pytestmark = pytest.mark.server
GRID = PatchGrid(columns=2, rows=2, overlap=0.25)
SIZE = 64  # the model's input; the frames are 256 px


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("panel")
    write_demo_dataset(root, "panel", image_size=256, n_train=8, n_test_good=6, n_per_defect=3)
    return root


@pytest.fixture(scope="module")
def patch_run(panel: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    config = TrainConfig(data_root=panel, category="panel", output=tmp_path_factory.mktemp("runs") / "patch",
                         image_size=SIZE, epochs=1, batch_size=8, max_steps_per_epoch=3, denoising="off",
                         tap_memory="off", patches_per_row=GRID.columns, patches_per_column=GRID.rows,
                         patch_overlap=GRID.overlap, seed=0)
    return train(config, progress=False)


def test_windows_are_the_clients_and_frames_are_stitched_as_the_client_stitches(panel: Path) -> None:
    splits = make_splits(panel, "panel", holdout_fraction=0.15, validation_fraction=0.4, seed=0)
    dataset = ImageDataset(splits.test[:3], SIZE, grid=GRID)
    for frame, (h, w) in enumerate(dataset.frame_sizes):
        assert [box for i, box in dataset.windows if i == frame] == tile_boxes(h, w, tiling_of(GRID))
    # A window is anomalous exactly where its part of the mask is.
    for item, (frame, _box) in enumerate(dataset.windows):
        assert dataset.labels[item] == int(dataset[item]["mask"].any()) or dataset.samples[frame].mask_path is None

    class Constant(torch.nn.Module):  # every window's map is its index: the stitching is then checkable by hand
        image_size = SIZE

        def forward(self, image: torch.Tensor):
            n = image.shape[0]
            value = image.float().mean(dim=(1, 2, 3)).view(n, 1, 1, 1)
            out = type("Out", (), {})()
            out.anomaly_map = value.expand(n, 1, SIZE, SIZE)
            out.pred_score = value.view(n, 1)
            return out

    model = Constant()
    frames = predict_frames(model, dataset)
    windows = predict(model, dataset)
    for frame, (h, w) in enumerate(dataset.frame_sizes):
        stitcher = MapStitcher(h, w)
        for item, (i, box) in enumerate(dataset.windows):
            if i == frame:
                stitcher.add(box, windows.maps[item])
        side = evaluation_side(dataset)
        expected = cv2.resize(stitcher.result(), (side, side), interpolation=cv2.INTER_AREA)
        np.testing.assert_allclose(frames.maps[frame], expected, atol=1e-6)
        own = [windows.scores[item] for item, (i, _) in enumerate(dataset.windows) if i == frame]
        assert frames.scores[frame] == pytest.approx(max(own))  # the frame's score: its highest window's


def test_the_stats_json_is_for_whole_frames_and_records_the_grid(patch_run: TrainResult, panel: Path) -> None:
    stats = load_stats(patch_run.paths.stats)
    assert stats.training.patch_grid == GRID
    splits = make_splits(panel, "panel", holdout_fraction=0.15, validation_fraction=0.4, seed=0)
    test, validation = stats.test_metrics, stats.validation_metrics
    assert test.num_good + test.num_anomalous == len(splits.test)  # frames, not windows
    assert validation.num_good + validation.num_anomalous == len(splits.validation)
    assert stats.image_threshold.num_samples == len(splits.validation)
    # Region-level figures of the whole frames' calibrated maps against their masks (kdcore.detection).
    for value in (test.region_recall, test.region_f1, test.detection_ap, test.segmentation_f1):
        assert value is not None and 0.0 <= value <= 1.0


@pytest.fixture(scope="module")
def patch_server(patch_run: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = tmp_path_factory.mktemp("patch_repo") / "model_repository"
    export_runs([(patch_run.paths.root, "panel_patch")], repo)
    with serving(repo, tmp_path_factory.mktemp("patch_triton")) as server:
        yield server


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_client_tiles_by_the_served_grid_and_reproduces_the_training_score(
        patch_server: TritonServer, patch_run: TrainResult, panel: Path, protocol: str) -> None:
    config_text = (patch_server.model_repository / "panel_patch" / "config.pbtxt").read_text()
    assert PATCH_GRID_PARAMETER in config_text
    splits = make_splits(panel, "panel", holdout_fraction=0.15, validation_fraction=0.4, seed=0)
    samples = splits.test[:4]
    expected = predict_frames(patch_run.model, ImageDataset(samples, SIZE, grid=GRID))
    results = {}
    score_images([s.path for s in samples], ScoreConfig(model="panel_patch", url=patch_server.url(protocol),
                                                        protocol=protocol, maps=True, batch_size=4),
                 lambda r: results.__setitem__(str(r.path), r))
    for sample, raw in zip(samples, expected.scores):
        served = results[str(sample.path)]
        assert served.ok and served.tiles == len(tile_boxes(256, 256, tiling_of(GRID)))
        assert served.raw_score == pytest.approx(float(raw), abs=1e-3)  # the export tolerance
        assert served.anomaly_map.shape[-2:] == (256, 256)  # stitched at the frame's resolution


def test_evaluate_reproduces_the_patch_models_whole_frame_metrics(
        patch_server: TritonServer, patch_run: TrainResult, panel: Path, tmp_path: Path, capsys) -> None:
    """``client.py score --evaluate`` tiles the frames by the served grid and measures them as the training report
    did (stitched maps at kdcore.tiling.evaluation_side): the served metrics agree with the stats JSON."""
    from client.client import main as client_main

    out = tmp_path / "eval"
    rc = client_main(["score", "--evaluate", str(panel / "panel"), "--stats", str(patch_run.paths.stats),
                      "--model", "panel_patch", "-u", patch_server.grpc_url, "-o", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads((out / "evaluation.json").read_text())
    assert report["comparison"]["agree"] and report["comparison"]["counts_match"], report["comparison"]
