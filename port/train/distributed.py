"""The worker side of distributed (DDP) training: process group, model wrapping, collectives.

A worker is a ``porter train`` process started by torch.distributed's launcher (see
:mod:`port.train.launch`, or ``torchrun -m port train ...``), which sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. Backend: NCCL on CUDA,
Gloo on CPU. Rules the training loop follows:

- every process builds the same model from the same seed; DDP broadcasts rank 0's weights and
  buffers at wrap time, then averages gradients in every backward;
- BatchNorm: ``sync_bn`` converts to SyncBatchNorm (statistics over the global batch; PyTorch
  runs it on GPUs only). Otherwise each process normalises with its own batch - the same as
  ghost BatchNorm with ``batch_size`` images per group - and the running statistics, which
  drift apart per process, are averaged over processes after every epoch
  (:func:`average_buffers`, timm's ``--dist-bn reduce``), so rank 0 evaluates and saves
  statistics of all the data;
- only rank 0 reads the checkpoint to resume (and sends it to the others), evaluates, and
  writes checkpoints, metrics, plots, ``model.pt`` and the manifest.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from port.ground.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch is imported inside the functions that use it: DistContext and in_launcher are read by
# `porter train`'s flag checks (port.train.launch), which must answer a bad flag without torch.

_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly one-process) training job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        """More than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that evaluates and writes."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistContext:
        """Read the launcher's environment; a single process when it is absent."""
        if not in_launcher():
            return cls()
        try:
            rank, local, world = (int(os.environ[k]) for k in _ENV)
        except ValueError:
            raise UsageError(
                f"RANK/LOCAL_RANK/WORLD_SIZE must be integers, got "
                f"{[os.environ[k] for k in _ENV]}: start porter with --nproc-per-node or torchrun"
            ) from None
        if not 0 <= rank < world or local < 0:
            raise UsageError(f"rank {rank} / world size {world} from the environment make no "
                             "sense: start porter with --nproc-per-node or torchrun")
        return cls(rank=rank, local_rank=local, world_size=world)


def in_launcher() -> bool:
    """True inside a process started by torchrun / porter's launcher."""
    return all(k in os.environ for k in _ENV)


@contextlib.contextmanager
def process_group(ctx: DistContext, device: torch.device) -> Iterator[None]:
    """Join the job's process group for the duration (no-op for one process).

    NCCL for CUDA devices (one GPU per process, ``cuda:LOCAL_RANK``), Gloo for the CPU.
    """
    if not ctx.distributed:
        yield
        return
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield
        dist.barrier()  # rank 0 has written model.pt before any process reports success
    finally:
        dist.destroy_process_group()


def wrap_model(
    model: nn.Module, ctx: DistContext, device: torch.device, *, sync_bn: bool
) -> nn.Module:
    """``model`` in DistributedDataParallel (with SyncBatchNorm when ``sync_bn``).

    No buffer broadcast before each forward: each process keeps its own BatchNorm running
    statistics during an epoch (they do not affect training, which uses batch statistics);
    :func:`average_buffers` merges them after the epoch. Parameter objects are kept, so an
    optimizer built on ``model`` beforehand stays valid.
    """
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        if device.type != "cuda":
            raise UsageError("sync_bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only): "
                             "drop --sync-bn on CPU; per-process statistics are averaged")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # Newer torch spells "no buffer broadcast before each forward" forward_sync_buffers.
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in params
               else {"broadcast_buffers": False})
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,  # gradients live in the all-reduce buckets: no copies
        **no_sync,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or ``model`` itself)."""
    return getattr(model, "module", model)


def average_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Replace every floating-point buffer (BatchNorm running mean/var) by its mean over all
    processes; one all-reduce of the concatenated buffers."""
    if not ctx.distributed:
        return
    import torch
    import torch.distributed as dist

    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.detach().reshape(-1).float() for b in buffers])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for b in buffers:
        n = b.numel()
        b.copy_(flat[offset : offset + n].view_as(b))
        offset += n


def all_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum of ``values`` over all processes (the tensor itself for one process)."""
    if ctx.distributed:
        import torch.distributed as dist

        dist.all_reduce(values)
    return values


def broadcast_from_main(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every process (pickled; for small control data and checkpoints)."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
