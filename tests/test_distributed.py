"""Data-parallel training under torchrun (:mod:`training.distributed`): two CPU processes on gloo train what one does.

Two levels, because float32 training is itself only reproducible to rounding:

- **The arithmetic, exactly** (:func:`test_two_processes_take_one_process_steps_in_float64`): RD4AD with denoising
  (per-row random perturbations), uneven and even batches, two Adam steps in float64 through the real
  data-parallel step: parameters, BatchNorm running statistics, losses and the perturbation generator equal one
  process's to 1e-8 of each tensor's largest value (measured: 4e-10, on the conv weights in front of
  BatchNorm; the losses to 1e-15).
- **kd-train end to end** (:func:`test_torchrun_kd_train_writes_one_process_run`): the same command in one process
  and under ``torchrun --nproc-per-node 2``, float32. One run folder with the same files, a valid stats JSON, the
  same training facts, and weights and thresholds as close as float32 allows. Measured on the reference machine
  (64 px, batch 8, 4 steps, lr 0.005): the trained parameters differ from one process's by 8.8% of the distance
  training moved them (largest element 0.029), thresholds by 0.1%; one process on 2 threads against 1 thread
  differs by 12% and 2% (ReLU inputs within 1e-6 of zero flip with rounding, and Adam's first steps are about
  ``lr * sign(gradient)``), and the same two processes without synced BatchNorm by 126%. Hence the bounds: 25% of
  the update, 5% on the thresholds.
- **The student** (:func:`test_the_student_trains_its_pool_across_processes`), which trains on a pool of its own
  rather than the loader's batches: the same files and step count, and the first epoch's loss to 1e-4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kdcore.stats import load_stats
from tests.distributed_steps import BATCHES, train_steps
from training import cli
from training.checkpoint import build_detector
from training.config import TrainConfig
from training.distributed import DistributedRank, check_batch_size, from_environment, take_rows
from training.runs import RunPaths
from training.train import seed_everything

ROOT = Path(__file__).resolve().parents[1]
#: The end-to-end run: 64 px, a global batch of 8 (4 per process), 2 epochs of 2 steps, RD4AD with denoising
#: (its per-row perturbations are what sharding could get wrong); the map's composition is fixed so that the
#: run folders differ by the trained weights alone.
KD_TRAIN_OPTIONS = ("--category", "brick", "--image-size", "64", "--epochs", "2", "--eval-every", "2",
                    "--batch-size", "8", "--max-steps-per-epoch", "2", "--seed", "0", "--denoising", "broad",
                    "--map-scales", "all", "--positional-normalization", "off", "--tap-memory", "off",
                    "--threads", "1", "--quiet")


def _torchrun(*args: str, processes: int = 2) -> list[str]:
    """The command line of ``torchrun --standalone`` (a free rendezvous port) with this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *args]


def _run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a command from the repository root; the project on the path, one thread per process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _relative_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------------- the pieces
@pytest.mark.parametrize("n", [7, 8, 9, 16])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_rows_are_the_ranks_contiguous_parts_of_the_batch(n: int, world: int) -> None:
    parts = [DistributedRank(rank=r, world_size=world, local_rank=r).rows(n) for r in range(world)]
    assert [i for part in parts for i in range(n)[part]] == list(range(n))  # in order, each row once
    sizes = [part.stop - part.start for part in parts]
    assert max(sizes) - min(sizes) <= 1 and (n % world or len(set(sizes)) == 1)


def test_a_batch_smaller_than_the_processes_is_refused() -> None:
    with pytest.raises(ValueError, match="3 rows cannot be split across 4 processes"):
        DistributedRank(rank=0, world_size=4, local_rank=0).rows(3)


def test_take_rows_of_tensors_and_tuples() -> None:
    x, y = torch.arange(10).view(5, 2), torch.arange(5)
    assert torch.equal(take_rows(x, slice(1, 3)), x[1:3])
    pair = take_rows((x, y), slice(3, 5))
    assert isinstance(pair, tuple) and torch.equal(pair[0], x[3:5]) and torch.equal(pair[1], y[3:5])


def test_the_environment_says_whether_torchrun_started_us() -> None:
    assert from_environment({}) is None
    assert from_environment({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) is None
    assert from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == DistributedRank(3, 4, 1)
    with pytest.raises(ValueError, match="RANK is None"):
        from_environment({"WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match="out of range"):
        from_environment({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})


def test_the_global_batch_must_split_evenly() -> None:
    check_batch_size(16, DistributedRank(0, 4, 0))
    with pytest.raises(ValueError, match="--batch-size: the global batch 10 is not a multiple of the 4 processes"):
        check_batch_size(10, DistributedRank(0, 4, 0))


@pytest.mark.parametrize(("options", "message"), [
    (("--batch-size", "7"), "--batch-size: the global batch 7 is not a multiple of the 2 processes"),
    (("--method", "kdae_vector", "--category", "0"), "kdae_vector trains in one process"),
])
def test_kd_train_refuses_under_torchrun_before_joining_the_group(
    options: tuple[str, ...], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    # Refused before any rendezvous: with no other process and no master address, joining would fail or hang.
    assert cli.main(["--output", str(tmp_path / "run"), *options]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("processes", [2, 3])  # 3: batches of 7 and 8 split 3+2+2 and 3+3+2
def test_several_processes_take_one_process_steps_in_float64(processes: int, demo_root: Path, tmp_path: Path,
                                                             one_thread: None) -> None:
    target = tmp_path / f"{processes}_processes.pt"
    done = _run(_torchrun(str(ROOT / "tests" / "distributed_steps.py"), str(demo_root), str(target),
                          processes=processes))
    assert done.returncode == 0, done.stderr[-3000:]
    two = torch.load(target)
    one = train_steps(demo_root, None)
    assert one.keys() == two.keys() and len(one) > 2 * len(BATCHES)
    assert torch.equal(one.pop("generator"), two.pop("generator")), "the perturbation generators left step"
    assert any(name.endswith("running_var") for name in one)
    worst = max(float((one[k].double() - two[k].double()).abs().max() / one[k].double().abs().max().clamp_min(1e-12))
                for k in one)
    assert worst < 1e-8, worst


# ---------------------------------------------------------------------------------------------------- end to end
@dataclass(frozen=True)
class _Runs:
    """The same kd-train command's run folder from one process and from two, and the two's output."""

    single: RunPaths
    multi: RunPaths
    multi_output: subprocess.CompletedProcess[str]


def _both_ways(options: tuple[str, ...], where: Path) -> _Runs:
    """``kd-train OPTIONS`` in one process and under ``torchrun --nproc-per-node 2``, each into its own folder."""
    single_root, multi_root = where / "single", where / "multi"
    single_root.mkdir(parents=True)
    multi_root.mkdir(parents=True)
    one = _run([sys.executable, "-m", "training.cli", *options, "--output", str(single_root / "run")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(_torchrun("-m", "training.cli", *options, "--output", str(multi_root / "run")))
    assert two.returncode == 0, two.stderr[-3000:]
    # The other process wrote nothing anywhere under the run's parent.
    assert [p.name for p in multi_root.iterdir()] == ["run"]
    return _Runs(RunPaths(single_root / "run"), RunPaths(multi_root / "run"), two)


@pytest.fixture(scope="module")
def rd4ad_runs(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> _Runs:
    """RD4AD trained by :data:`KD_TRAIN_OPTIONS` both ways."""
    return _both_ways(("--data-root", str(demo_root), *KD_TRAIN_OPTIONS), tmp_path_factory.mktemp("rd4ad"))


def test_torchrun_kd_train_writes_one_process_run(rd4ad_runs: _Runs) -> None:
    single, multi, two = rd4ad_runs.single, rd4ad_runs.multi, rd4ad_runs.multi_output
    # Rank 0 alone prints, writes and logs INFO.
    assert two.stdout.count("run folder:") == 1
    assert two.stderr.count("kept epoch") == 1
    assert _relative_files(multi.root) == _relative_files(single.root)

    a, b = load_stats(single.stats), load_stats(multi.stats)  # validates against the schema
    facts = ("epochs", "best_epoch", "steps", "batch_size", "seed", "num_train", "dataset_fingerprint", "denoising")
    assert {f: getattr(b.training, f) for f in facts} == {f: getattr(a.training, f) for f in facts}
    assert b.model == a.model and b.normalization == a.normalization
    for threshold in ("image_threshold", "pixel_threshold"):
        va, vb = getattr(a, threshold).value, getattr(b, threshold).value
        assert abs(vb - va) <= 0.05 * abs(va), (threshold, va, vb)
    assert abs(b.training.final_loss - a.training.final_loss) <= 1e-2 * a.training.final_loss

    # The history is the whole batch's loss, as one process records it: the first epoch's starts from equal
    # weights, so it differs by rounding only (measured 4e-6 relative; without synced BatchNorm 2e-3).
    history_a, history_b = (json.loads(p.history.read_text()) for p in (single, multi))
    assert [r["epoch"] for r in history_b] == [r["epoch"] for r in history_a]
    assert history_b[0]["loss"] == pytest.approx(history_a[0]["loss"], rel=1e-4)

    config = TrainConfig.model_validate(json.loads(single.config.read_text()))
    assert json.loads(multi.config.read_text()) == {**json.loads(single.config.read_text()),
                                                    "output": str(multi.root)}
    seed_everything(config.seed)
    start = build_detector(config).state_dict()
    wa, wb = load_file(str(single.weights)), load_file(str(multi.weights))
    assert wa.keys() == wb.keys()
    network = [k for k, v in wa.items() if k.startswith("detector.") and v.is_floating_point() and "running_" not in k]
    trained = [k for k in network if not torch.equal(wa[k], start[k])]
    assert trained and not any(".encoder." in k for k in trained)  # the teacher stays as it was
    moved = float(np.sqrt(sum(float((wa[k] - start[k]).square().sum()) for k in trained)))
    apart = float(np.sqrt(sum(float((wa[k] - wb[k]).square().sum()) for k in trained)))
    assert apart <= 0.25 * moved, (apart, moved)
    assert all(torch.equal(wa[k], wb[k]) for k in network if ".encoder." in k)


def test_the_student_trains_its_pool_across_processes(rd4ad_runs: _Runs, demo_root: Path, tmp_path: Path) -> None:
    """The student trains on its own pool (tuples of features and targets, shuffled by its own generator) rather
    than the loader's batches: 27 images and a copy each make 54 pool rows, batches of 32 and 22."""
    options = ("--method", "student", "--teacher-run", str(rd4ad_runs.single.root), "--student-pool-copies", "1",
               "--data-root", str(demo_root), "--category", "brick", "--image-size", "64", "--epochs", "1",
               "--eval-every", "1", "--batch-size", "8", "--seed", "0", "--threads", "1", "--quiet")
    runs = _both_ways(options, tmp_path)
    assert _relative_files(runs.multi.root) == _relative_files(runs.single.root)
    a, b = load_stats(runs.single.stats), load_stats(runs.multi.stats)
    assert (b.training.steps, b.model) == (a.training.steps, a.model)
    # One epoch's mean loss, its first step from equal weights (measured: 6e-8 relative).
    history_a, history_b = (json.loads(p.history.read_text()) for p in (runs.single, runs.multi))
    assert history_b[0]["loss"] == pytest.approx(history_a[0]["loss"], rel=1e-4)
