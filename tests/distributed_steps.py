"""A few RD4AD training steps in float64, in one process or as one of torchrun's (``test_distributed``'s worker).

Run as ``python -m torch.distributed.run --nproc-per-node 2 tests/distributed_steps.py DATA_ROOT OUT.pt``, rank 0
saves what :func:`train_steps` returns; the test calls :func:`train_steps` itself for the single process. float64,
because in float32 a rounding difference anywhere (another thread count will do) can flip a ReLU whose input is
within 1e-6 of zero, and Adam's first steps (about ``lr * sign(gradient)``) turn the gradients' resulting 1e-3
relative differences into whole-step differences on some weights; in float64 that leaves differences below 1e-9,
so what the test sees is whether the data-parallel arithmetic is one process's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from training.checkpoint import build_detector
from training.config import TrainConfig
from training.data import ImageDataset, make_splits
from training.distributed import DistributedRank, from_environment, loss_function, process_group
from training.methods import ADAM_BETAS, Method
from training.train import seed_everything

#: Rows of each step's batch: 7 splits 4 + 3 over two processes (uneven shares, as a method's short last batch),
#: 8 splits evenly.
BATCHES = (7, 8)


def train_steps(data_root: Path, group: DistributedRank | None) -> dict[str, torch.Tensor]:
    """Train RD4AD with denoising (per-row random perturbations) for ``len(BATCHES)`` Adam steps in float64.

    Args:
        data_root: The demo data (category ``brick``, 64 px).
        group: This process's place under torchrun, or ``None`` for one process.

    Returns:
        The trainable parameters and BatchNorm running statistics (by state-dict name), each step's loss of the
        whole batch (``loss.<i>``) and the denoising generator's state (``generator``).
    """
    config = TrainConfig(data_root=data_root, category="brick", image_size=64, denoising="broad", seed=0)
    seed_everything(config.seed)
    model = build_detector(config).double()
    detector = model.detector
    optimizer = torch.optim.Adam(detector.trainable_parameters(), lr=config.learning_rate,
                                 betas=ADAM_BETAS[Method.RD4AD])
    splits = make_splits(data_root, "brick", seed=config.seed)
    images = ImageDataset(splits.train, config.image_size)
    model.train()
    out: dict[str, torch.Tensor] = {}
    first = 0
    with loss_function(detector, group) as loss_of:
        for i, rows in enumerate(BATCHES):
            batch = torch.stack([images[k]["image"] for k in range(first, first + rows)])
            first += rows
            loss, value = loss_of(model.normalize(batch).double())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            out[f"loss.{i}"] = torch.tensor(value, dtype=torch.float64)
    trainable = {id(p) for p in detector.trainable_parameters()}
    for name, tensor in detector.named_parameters():
        if id(tensor) in trainable:
            out[name] = tensor.detach().clone()
    for name, tensor in detector.named_buffers():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")) and not name.startswith("encoder."):
            out[name] = tensor.clone()
    out["generator"] = detector.generator.get_state()
    return out


def main() -> int:
    """``distributed_steps.py DATA_ROOT OUT``: under torchrun, rank 0 saves :func:`train_steps`'s tensors to OUT."""
    data_root, target = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    group = from_environment()
    if group is None:
        raise SystemExit("run under torchrun with more than one process")
    with process_group(group):
        result = train_steps(data_root, group)
    if group.is_main:
        torch.save(result, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
