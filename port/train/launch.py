"""Starting a distributed run: ``porter train --nproc-per-node N [--nnodes M --node-rank R
--rdzv-endpoint HOST:PORT]`` hands over to torch.distributed's own launcher (torchrun).

The launching process resolves the training settings once, writes them to a temporary YAML
recipe, and runs torchrun (``torch.distributed.run``) with ``--module port`` and the worker
arguments ``train --run RUN --recipe THAT.yaml``: torchrun starts N workers on this machine,
each a ``porter train`` that finds ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` in its environment
and trains its share (:mod:`port.train.distributed`); rank 0 records the result in the
manifest.

- One machine: ``--standalone`` rendezvous on a free localhost port (nothing to configure).
- M machines: run the same command on each with ``--nnodes M --node-rank R --rdzv-endpoint
  HOST:PORT`` where HOST:PORT is reachable on node 0 (static rendezvous: node 0 hosts the
  store, ``--node-rank`` orders the machines). Every node needs the data; the run directory
  only matters on node 0, whose rank 0 writes everything.

Running porter under your own launcher works too (``torchrun ... -m port train ...``, Slurm's
``srun`` with the same variables): porter then trains as a worker and starts nothing itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from port.ground.errors import PorterError, UsageError
from port.train.distributed import DistContext, in_launcher
from port.train.recipe import TrainConfig, save_recipe

_ENDPOINT_RE = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[^:\s]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class LaunchSpec:
    """The launcher flags of ``porter train`` (None = not given)."""

    nproc_per_node: int | None = None
    nnodes: int | None = None
    node_rank: int | None = None
    rdzv_endpoint: str | None = None

    @property
    def given(self) -> bool:
        """Any launcher flag was given."""
        return any(v is not None for v in dataclasses.astuple(self))

    @property
    def world_size(self) -> int:
        """Processes in the whole job: nodes x processes per node."""
        return (self.nproc_per_node or 1) * (self.nnodes or 1)

    @property
    def spawns(self) -> bool:
        """This process must start workers (more than one process, not already a worker)."""
        return self.given and self.world_size > 1 and not in_launcher()

    def validate(self) -> LaunchSpec:
        """Range and consistency checks; ``UsageError`` naming the flag to fix."""
        nproc = 1 if self.nproc_per_node is None else self.nproc_per_node
        nnodes = 1 if self.nnodes is None else self.nnodes
        if nproc < 1:
            raise UsageError(f"--nproc-per-node must be >= 1, got {nproc}")
        if nnodes < 1:
            raise UsageError(f"--nnodes must be >= 1, got {nnodes}")
        rank = self.node_rank or 0
        if not 0 <= rank < nnodes:
            raise UsageError(f"--node-rank must be in [0, {nnodes}) for --nnodes {nnodes}, "
                             f"got {rank}")
        if nnodes > 1 and not self.rdzv_endpoint:
            raise UsageError("several nodes need a meeting point: pass --rdzv-endpoint HOST:PORT "
                             "(an address of node 0 that every node can reach)")
        if self.rdzv_endpoint is not None:
            found = _ENDPOINT_RE.match(self.rdzv_endpoint)
            if not found or not 0 < int(found["port"]) < 65536:
                raise UsageError(f"--rdzv-endpoint must be HOST:PORT (e.g. 10.0.0.1:29500), got "
                                 f"{self.rdzv_endpoint!r}")
        return self


def resolve_world(cfg: TrainConfig, launch: LaunchSpec) -> TrainConfig:
    """``cfg`` with ``world_size`` set to the processes that will train it.

    Inside a worker that is the launcher's ``WORLD_SIZE``; otherwise the launcher flags'
    product. A recipe (or a resumed run's saved settings) asking for another world size is
    refused rather than silently retargeted: the global batch, hence the result, would change.
    """
    launch.validate()
    if in_launcher():
        if launch.given:
            raise UsageError("this porter already runs under a launcher (RANK and WORLD_SIZE are "
                             "set): drop --nproc-per-node/--nnodes/--node-rank/--rdzv-endpoint")
        world = DistContext.from_env().world_size
    else:
        world = launch.world_size
    if cfg.world_size not in (1, world):
        raise UsageError(
            f"the settings ask for world_size {cfg.world_size} but {world} process(es) would "
            f"train: start {cfg.world_size} with --nproc-per-node (x --nnodes)"
        )
    return TrainConfig.from_dict({**cfg.to_dict(), "world_size": world})


def torchrun_args(launch: LaunchSpec) -> list[str]:
    """torchrun's own arguments for this node, ending in ``--module port``: every process
    runs ``python -m port`` (the worker's arguments are added after parsing, so that
    argparse never sees porter's flags - it would take ``--run`` for torchrun's ``--run-path``).
    """
    nnodes = launch.nnodes or 1
    args = ["--nnodes", str(nnodes), "--nproc-per-node", str(launch.nproc_per_node or 1),
            # No elastic restarts: a failed worker fails the run, which --resume continues.
            "--max-restarts", "0"]
    if nnodes == 1 and not launch.rdzv_endpoint:
        args.append("--standalone")  # a free localhost port, nothing to configure
    else:
        args += ["--rdzv-backend", "static", "--rdzv-endpoint", str(launch.rdzv_endpoint),
                 "--node-rank", str(launch.node_rank or 0)]
    return [*args, "--module", "port"]


@contextlib.contextmanager
def _worker_threads(cfg: TrainConfig, nproc: int) -> Iterator[None]:
    """OMP_NUM_THREADS for the workers (they inherit the environment): the run's ``threads``,
    else the cores shared out between this node's processes. Setting it also keeps torchrun
    from printing its banner about choosing 1."""
    before = os.environ.get("OMP_NUM_THREADS")
    if before is None:
        share = cfg.threads or max(1, (os.cpu_count() or 1) // nproc)
        os.environ["OMP_NUM_THREADS"] = str(share)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)


def launch_workers(
    cfg: TrainConfig, run: Path, launch: LaunchSpec, *, resume: bool, download: bool
) -> None:
    """Run ``cfg`` in ``launch.nproc_per_node`` worker processes on this node (and wait).

    A failed worker fails the launch with ``PorterError`` (its own message is printed above
    by the worker); the run can then be continued with ``--resume``.
    """
    from torch.distributed import DistError
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    _preflight(cfg, launch, download=download)
    with tempfile.TemporaryDirectory(prefix="porter-launch-") as tmp:
        recipe = save_recipe(cfg, Path(tmp) / "train.yaml")
        worker = ["train", "--run", str(run.resolve()), "--recipe", str(recipe)]
        worker += ["--resume"] if resume else []
        worker += ["--download"] if download else []
        with _worker_threads(cfg, launch.nproc_per_node or 1):
            try:
                args = parse_args(torchrun_args(launch))
                args.training_script_args = worker
                torchrun(args)
            except ChildFailedError as exc:
                rank, failure = exc.get_first_failure()
                raise PorterError(
                    f"training process rank {rank} of {cfg.world_size} exited with code "
                    f"{failure.exitcode} (its message is above): fix that, then continue with "
                    "--resume"
                ) from None
            except (RendezvousError, DistError) as exc:
                where = launch.rdzv_endpoint or "localhost"
                raise PorterError(
                    f"the {launch.nnodes or 1} node(s) could not meet at {where} "
                    f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): check "
                    "--rdzv-endpoint (reachable from every node), --nnodes, and that node 0 runs"
                ) from None


def _preflight(cfg: TrainConfig, launch: LaunchSpec, *, download: bool) -> None:
    """Refuse, before any process starts, what every worker would refuse after loading data."""
    import torch

    from port.data.spec import parse_data_spec
    from port.train.runtime import Runtime

    parse_data_spec(cfg.data, download=download)  # a missing data directory: DataError

    # CUDA asked for but absent: BackendUnavailable; cuda:N with several processes: UsageError.
    device = Runtime.from_config(cfg, local_rank=0).device
    nproc = launch.nproc_per_node or 1
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise UsageError(f"--nproc-per-node {nproc} needs {nproc} GPUs; this machine has "
                         f"{torch.cuda.device_count()}: use at most that many processes")
    if cfg.sync_bn and device.type != "cuda":
        raise UsageError("sync_bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only): "
                         "drop --sync-bn on CPU; per-process statistics are averaged")
