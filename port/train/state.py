"""Run state that makes ``--resume`` exact: per-epoch seeding, RNG snapshots, ``last.pt``.

Reproducibility rests on one rule: every source of randomness an epoch uses (shuffle order,
DataLoader worker seeds, augmentation in the main process) is re-seeded at the start of the
epoch from ``(seed, epoch)``. An epoch therefore computes the same thing whether the process
trained the epochs before it or loaded them from a checkpoint; the RNG snapshots stored in the
checkpoint are restored as well, for anything that draws outside an epoch.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from port.models.checkpoint import atomic_save, plain_state_dict, safe_load

TRAIN_FORMAT = "porter-train/1"


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A well-mixed 63-bit seed for ``epoch`` of a run seeded with ``seed`` (process ``rank``
    of a distributed run; rank 0 and a single process draw the same)."""
    entropy = [seed, epoch] + ([rank] if rank else [])
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def seed_epoch(
    seed: int, epoch: int, generator: torch.Generator | None = None, rank: int = 0
) -> None:
    """Seed everything an epoch draws from: torch (all devices), Python, NumPy, the loader's
    generator (shuffle order and worker base seed) when given. Each ``rank`` gets its own
    stream, so processes do not augment their shards with identical random numbers."""
    s = epoch_seed(seed, epoch, rank)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)
    if generator is not None:
        generator.manual_seed(s)


def rng_state() -> dict[str, Any]:
    """Snapshot of the global RNGs in plain tensors/ints (loadable with weights_only=True)."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a :func:`rng_state` snapshot (CUDA states only where the devices exist)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
        "has_gauss": np_state["has_gauss"],
        "gauss": np_state["gauss"],
    })


def save_train_state(
    path: Path,
    *,
    epoch: int,
    config: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    history: list[dict[str, Any]],
    runtime: dict[str, Any],
    ema: dict[str, Any] | None = None,
) -> None:
    """Write everything needed to continue after ``epoch`` completed epochs, atomically
    (:func:`port.models.checkpoint.atomic_save`, through :mod:`port.ground.atomic`: a kill mid-write
    leaves the previous epoch's file).

    ``ema``: the weight average's state (:meth:`port.train.ema.ModelEma.state_dict`), if any.
    """
    payload = {
        "format": TRAIN_FORMAT,
        "epoch": epoch,
        "config": config,
        "model": plain_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "history": history,
        "runtime": runtime,
        "ema": ema,
    }
    atomic_save(payload, path)


def load_train_state(path: Path) -> dict[str, Any]:
    """Read ``last.pt`` safely; ``ModelError`` if it is unreadable or not a porter checkpoint."""
    from port.ground.errors import ModelError

    state = safe_load(path)
    if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
        raise ModelError(f"{path} is not a porter training checkpoint: start a new --run")
    return state
