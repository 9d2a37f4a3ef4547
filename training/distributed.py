"""Data-parallel training under ``torchrun``: N processes that together train what one process trains.

``torchrun --nproc-per-node N -m training.cli ...`` starts N copies of ``kd-train``; each finds its rank in the
environment (:func:`from_environment`), joins the process group (:func:`process_group`) and runs the common
training loop of :mod:`training.train` with :func:`loss_function`'s data-parallel step. What makes the N
processes train, from the same seed and the same ``--batch-size``, the weights one process would train:

- **The global batch is ``--batch-size``.** Every process draws the same global batches from the same seeded
  loader (one process's order) and computes the loss of its own contiguous rows, ``batch_size // N`` of them
  (:meth:`DistributedRank.rows`). Why every process reads the whole batch rather than a :class:`DistributedSampler`
  share: what some methods draw per batch (RD4AD's denoising perturbations, one generator over the rows in
  order) and what they measure before training (statistics, the student's pool) must be what one process draws
  and measures, so every process draws and measures it all; the decoded images are cached, so reading them is
  cheap next to the networks.
- **Gradients are one process's.** :class:`~torch.nn.parallel.DistributedDataParallel` averages the processes'
  gradients; each loss is a mean over its rows, scaled by its share of the batch (``rows * N / batch``), so the
  average is the gradient of the mean over the whole batch, uneven last batches included.
- **BatchNorm sees the whole batch.** The students' BatchNorm layers train on batch statistics; with one
  process's rows only, every process would normalise differently. :func:`synced_batchnorm` makes them use the
  statistics of the global batch (:class:`SyncedBatchNorm`: torch's own ``SyncBatchNorm`` runs on GPUs only,
  and the trainer runs on the CPU). The teachers are frozen in eval mode and need nothing.
- **Seeds are the same everywhere**, so every process builds the same initial weights (DDP also broadcasts rank
  0's once).

Only rank 0 validates, selects, calibrates and writes the run folder (:func:`training.train.train_data_parallel`);
the others train and leave.

What is equal and what is close (``tests/test_distributed.py``): in float64, two processes' weights after two Adam
steps equal one process's to 4e-10 of each tensor's largest value. In float32 the sums come in another order (the
BatchNorm statistics from the processes' parts, convolutions over fewer images), and float32 training is chaotic
at that level: a ReLU input within 1e-6 of zero flips, the gradients move by 1e-3, and Adam's first steps (about
``lr * sign(gradient)``) move the weights where a gradient is near zero by whole steps. One process on 2 threads
against 1 thread differs the same way: after 4 steps of the demo at 64 px the weights were 12% of the update
apart, two processes against one 9%, thresholds 2% and 0.1%.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

if TYPE_CHECKING:
    from training.detector import DistillationDetector

#: The environment variables ``torchrun`` sets for every process it starts.
ENVIRONMENT = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
#: The process-group backend: the trainer runs on the CPU, and gloo is torch's CPU backend.
BACKEND = "gloo"

#: A training step's loss: ``item -> (the tensor to call backward on, the loss over the whole batch)``.
LossFunction = Callable[[Any], tuple[Tensor, float]]


@dataclass(frozen=True)
class DistributedRank:
    """This process's place among the data-parallel processes of one training run.

    Attributes:
        rank: This process's index, 0 to ``world_size - 1``; rank 0 writes the run folder.
        world_size: Processes training together.
        local_rank: Index among the processes on this machine (what would pick a GPU; the trainer runs on the CPU).
    """

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Whether this process validates, selects and writes (rank 0)."""
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This process's rows of a global batch of ``n``: the ``rank``-th of ``world_size`` contiguous parts.

        The parts are equal where ``world_size`` divides ``n``; otherwise the first ``n % world_size`` are one
        longer (a method's short last batch).

        Raises:
            ValueError: ``n`` is smaller than ``world_size`` (a process would get no rows, and with none it cannot
                take part in the BatchNorm statistics every process must share).
        """
        if n < self.world_size:
            raise ValueError(f"a training batch of {n} rows cannot be split across {self.world_size} processes; "
                             f"run fewer processes (torchrun --nproc-per-node) or give more training images")
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))


def from_environment(environ: Mapping[str, str] | None = None) -> DistributedRank | None:
    """The data-parallel place ``torchrun`` gave this process, or ``None`` for a single process.

    Args:
        environ: The environment; ``None`` reads ``os.environ``.

    Returns:
        ``None`` without ``WORLD_SIZE`` or with ``WORLD_SIZE=1`` (nothing to share); else the ranks.

    Raises:
        ValueError: ``WORLD_SIZE`` is set above 1 and ``RANK`` or ``LOCAL_RANK`` is missing or not an integer in
            range (the message names the variable).
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or _integer(env, "WORLD_SIZE") <= 1:
        return None
    world, rank, local = (_integer(env, name) for name in ENVIRONMENT)
    if not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK {rank} / LOCAL_RANK {local} out of range for WORLD_SIZE {world}")
    return DistributedRank(rank=rank, world_size=world, local_rank=local)


def _integer(env: Mapping[str, str], name: str) -> int:
    """The integer in environment variable ``name``; a ``ValueError`` naming it when missing or not an integer."""
    text = env.get(name)
    try:
        return int(text)  # type: ignore[arg-type]  # None: TypeError, turned into the same message
    except (TypeError, ValueError):
        raise ValueError(f"{name} is {text!r}: data-parallel training runs under torchrun, which sets "
                         f"{', '.join(ENVIRONMENT)} to integers") from None


def check_batch_size(batch_size: int, group: DistributedRank) -> None:
    """Refuse a global batch the processes cannot share equally.

    Why refuse rather than round: ``--batch-size`` means the same in a single process and under torchrun (the
    global batch), so a run on N processes reproduces one process's; a per-process batch of ``batch_size // N``
    that silently dropped the rest would not.

    Raises:
        ValueError: ``batch_size`` is not a multiple of the process count (the message starts with the flag).
    """
    if batch_size % group.world_size:
        raise ValueError(f"--batch-size: the global batch {batch_size} is not a multiple of the "
                         f"{group.world_size} processes; each process takes batch_size / processes images")


@contextlib.contextmanager
def process_group(group: DistributedRank) -> Iterator[None]:
    """Join the run's process group (``torchrun``'s rendezvous in the environment) for the block; leave it after.

    Raises:
        RuntimeError: From torch, when the rendezvous fails.
    """
    dist.init_process_group(BACKEND, rank=group.rank, world_size=group.world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _grouped() -> bool:
    """Whether this process shares training with others now."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllReduceSum(torch.autograd.Function):
    """The sum over processes of a tensor, differentiable: the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:  # noqa: D102 - documented on the class
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # noqa: D102
        # Every process's loss depends on every process's rows through the shared statistics; summing the
        # upstream gradients gives each process its rows' part of the gradient of all the losses together.
        total = grad.clone()
        dist.all_reduce(total)
        return total


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The elementwise sum of ``tensor`` over the processes, with a gradient (its own sum over the processes)."""
    return _AllReduceSum.apply(tensor)


class SyncedBatchNorm(_BatchNorm):
    """BatchNorm that, in training mode among several processes, normalises with the whole global batch's
    statistics, so N processes compute what one process computes on the whole batch.

    Outside training, or in a single process, it is the plain BatchNorm it replaced. The running statistics are
    updated in place from the global statistics (the unbiased variance, as torch's), so they too are one
    process's. Two passes (the mean, then the centred squares) keep the variance as accurate as torch's own.
    """

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002 - torch's name
        if input.dim() < 2:
            raise ValueError(f"expected a batch of at least 2 dimensions (N, C, ...), got {input.dim()}")

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002
        """Normalise ``(N, C, ...)`` over the batch, spatial positions and processes."""
        if not (self.training and _grouped()):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        local = torch.tensor([input.numel() // input.shape[1]], dtype=input.dtype, device=input.device)
        sums = all_reduce_sum(torch.cat([input.sum(dims), local]))
        count = float(sums[-1].detach())
        if count < 2:
            raise ValueError(f"expected more than 1 value per channel when training, got {int(count)}")
        mean = sums[:-1] / count
        centred = input - mean.view(shape)
        var = all_reduce_sum(centred.square().sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                # torch's rule: momentum None is a cumulative average.
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (count / (count - 1)), alpha=factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def _synced(layer: _BatchNorm) -> SyncedBatchNorm:
    """A :class:`SyncedBatchNorm` sharing ``layer``'s parameters and buffers (the same tensors, not copies)."""
    synced = SyncedBatchNorm(layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats)
    # Shared, not copied: the optimiser already holds these parameters, and updates of the running statistics
    # must land in the layer that is put back afterwards.
    for name, tensor in (*layer._parameters.items(), *layer._buffers.items()):
        setattr(synced, name, tensor)
    synced.train(layer.training)
    return synced


@contextlib.contextmanager
def synced_batchnorm(module: nn.Module) -> Iterator[nn.Module]:
    """Replace every BatchNorm layer inside ``module`` by a :class:`SyncedBatchNorm` for the block; put them back after.

    The state dict keeps its keys and tensors, so checkpoints taken inside the block load outside it, and the
    module leaves the block with its own layer classes (what the exporter and the checkpoint loader expect). Frozen
    teachers stay in eval mode, where the synced layers are plain BatchNorm.

    Yields:
        ``module``, with the synced layers.
    """
    replaced: list[tuple[nn.Module, str, _BatchNorm]] = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm) and not isinstance(child, SyncedBatchNorm):
                replaced.append((parent, name, child))
                setattr(parent, name, _synced(child))
    try:
        yield module
    finally:
        for parent, name, original in reversed(replaced):
            original.train(getattr(parent, name).training)
            setattr(parent, name, original)


def batch_rows(item: Any) -> int:
    """Rows of a training item: a tensor's first dimension, or the first tensor's of a tuple or list."""
    if isinstance(item, Tensor):
        return int(item.shape[0])
    if isinstance(item, (tuple, list)) and item:
        return batch_rows(item[0])
    raise TypeError(f"a training item is a tensor or a tuple of tensors, got {type(item).__name__}")


def take_rows(item: Any, rows: slice) -> Any:
    """``rows`` of a training item: of a tensor, or of every tensor of a tuple or list (same type back)."""
    if isinstance(item, Tensor):
        return item[rows]
    if isinstance(item, (tuple, list)):
        return type(item)(take_rows(part, rows) for part in item)
    raise TypeError(f"a training item is a tensor or a tuple of tensors, got {type(item).__name__}")


class _ShardLoss(nn.Module):
    """What DistributedDataParallel wraps: the trainable parameters only, and this process's weighted loss.

    Why not the detector itself: DDP would broadcast its frozen teachers and buffers and watch parameters no
    optimiser updates; here it sees exactly the parameters the optimiser steps. The detector is kept outside the
    module tree for the same reason.
    """

    def __init__(self, detector: DistillationDetector, parameters: list[nn.Parameter]) -> None:
        super().__init__()
        self.trainable = nn.ParameterList(parameters)
        self.__dict__["detector"] = detector

    def forward(self, item: Any, rows: slice, weight: float) -> Tensor:
        """``weight`` times the detector's loss of ``rows`` of ``item`` (:meth:`DistillationDetector.shard_loss`)."""
        return self.detector.shard_loss(item, rows) * weight


@contextlib.contextmanager
def loss_function(detector: DistillationDetector, group: DistributedRank | None) -> Iterator[LossFunction]:
    """The training step's loss for the block: the detector's own in one process, a data-parallel one under torchrun.

    Under torchrun the BatchNorm layers are synced (:func:`synced_batchnorm`) and the trainable parameters wrapped
    in DistributedDataParallel for the block; ``backward`` on the returned tensor then leaves every process
    with the gradient one process computes on the whole batch. The reported value is the loss of the whole batch
    (summed over the processes), so the history means what one process's means.

    Args:
        detector: The detector being trained.
        group: This process's place, or ``None`` for a single process.

    Yields:
        ``item -> (loss to call backward on, loss of the whole batch)``.
    """
    if group is None:

        def single(item: Any) -> tuple[Tensor, float]:
            loss = detector.training_loss(item)
            return loss, loss.item()

        yield single
        return
    with synced_batchnorm(detector), warnings.catch_warnings():
        # A 1x1 convolution's weight gradient can come back with other strides on its size-1 dimensions than
        # DDP's bucket (the same memory layout); DDP copies it and warns once per process, which tells a user nothing.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        ddp = DistributedDataParallel(_ShardLoss(detector, detector.trainable_parameters()))

        def shared(item: Any) -> tuple[Tensor, float]:
            n = batch_rows(item)
            rows = group.rows(n)
            # DDP averages the processes' gradients: each mean over its rows, weighted by its share of the batch
            # times the process count, averages to the gradient of the mean over the whole batch.
            loss = ddp(item, rows, (rows.stop - rows.start) * group.world_size / n)
            total = loss.detach().clone()
            dist.all_reduce(total)
            return loss, float(total) / group.world_size

        try:
            yield shared
        finally:
            del ddp  # its reducer's gradient hooks go with it
        # Normal exit only (after an error a barrier could wait for a process that is gone): every process has
        # finished training before rank 0 goes on to validate, calibrate and write.
        dist.barrier()
