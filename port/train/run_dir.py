"""The run directory of a training: where each file lives, and reading and writing them.

Layout after training::

    train.yaml             the resolved config, a recipe: ``--recipe RUN/train.yaml`` reproduces
                           the run (written when training starts, rewritten on resume)
    model.pt               the trained model + ModelCard (port.models.checkpoint format)
    checkpoints/last.pt    model, optimizer, scheduler, scaler, EMA, RNG states after the last
                           epoch; its config is what ``--resume`` continues with and checks
    metrics.jsonl          one JSON line per completed epoch
    curves.png             loss and accuracy per epoch

Only rank 0 of a distributed run writes here. Every rewrite is atomic (:mod:`port.ground.atomic`);
metrics.jsonl grows by appends between rewrites (see :func:`append_metrics` for why).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from port.ground import errors
from port.ground.atomic import atomic_write_text
from port.ground.errors import UsageError
from port.train.distributed import DistContext, broadcast_from_main
from port.train.recipe import TrainConfig, config_diff, save_recipe

# port.train.state (torch) is imported where a checkpoint is read: RunPaths and
# require_checkpoint answer `porter train --resume` on an empty run without torch.


@dataclass(frozen=True)
class RunPaths:
    """Where a run directory keeps each training artifact."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "train.yaml"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"


def prepare(paths: RunPaths, cfg: TrainConfig, resume: bool) -> dict[str, Any] | None:
    """Refuse to overwrite recorded work; with ``resume`` load and check the last checkpoint."""
    run = paths.root
    if not resume:
        if paths.model.exists():
            raise UsageError(
                f"run {run} already has a trained model ({paths.model.name}): pass --resume to "
                "continue it or choose a new --run"
            )
        if paths.checkpoint.exists():
            raise UsageError(
                f"run {run} holds an unfinished training ({paths.checkpoint}): pass --resume to "
                "continue it or choose a new --run"
            )
        return None
    require_checkpoint(paths)
    from port.train.state import load_train_state

    state = load_train_state(paths.checkpoint)
    diff = config_diff(state["config"], cfg)
    if diff:
        shown = "; ".join(diff[:4]) + (f" (+{len(diff) - 4} more)" if len(diff) > 4 else "")
        raise UsageError(
            f"cannot resume {run}: settings differ from the checkpoint ({shown}); "
            "pass the original settings or choose a new --run"
        )
    return state


def require_checkpoint(paths: RunPaths) -> None:
    """``UsageError`` when the run has no checkpoint to resume from (no torch needed)."""
    if not paths.checkpoint.exists():
        raise UsageError(
            f"nothing to resume in {paths.root}: no "
            f"{paths.checkpoint.relative_to(paths.root)}; train without --resume"
        )


def shared_prepare(
    paths: RunPaths, cfg: TrainConfig, resume: bool, ctx: DistContext
) -> dict[str, Any] | None:
    """:func:`prepare` on rank 0; every process gets its outcome (the checkpoint to resume
    from, or the same error), so no process waits for a rank that has given up."""
    if not ctx.distributed:
        return prepare(paths, cfg, resume)
    outcome: tuple[Any, ...] | None = None
    if ctx.is_main:
        try:
            outcome = ("ok", prepare(paths, cfg, resume))
        except errors.PorterError as exc:
            outcome = ("error", type(exc).__name__, str(exc))
    outcome = broadcast_from_main(outcome, ctx)
    assert outcome is not None
    if outcome[0] == "error":
        raise getattr(errors, outcome[1], errors.PorterError)(outcome[2])
    return outcome[1]


def saved_config(run_dir: str | Path) -> TrainConfig | None:
    """The config a run's last checkpoint was trained with (``None`` without a checkpoint).

    Lets a caller resume with ``porter train --run R --resume`` and no other flags. Read from
    the checkpoint, not train.yaml: the checkpoint is what resuming continues (and checks
    against), and runs from before train.yaml existed have only it.
    """
    path = RunPaths(Path(run_dir)).checkpoint
    if not path.exists():
        return None
    from port.train.state import load_train_state

    return TrainConfig.from_dict(load_train_state(path)["config"])


def write_config(paths: RunPaths, cfg: TrainConfig) -> Path:
    """Write ``train.yaml``: the resolved config as a recipe that reproduces the run."""
    return save_recipe(
        cfg, paths.config,
        note=f"porter train: the resolved settings of {paths.root}.\n"
             "Reproduce the run with: porter train --run NEW_RUN --recipe THIS_FILE",
    )


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl from ``history`` (atomically): after a resume it holds exactly the
    checkpoint's epochs, so a re-run epoch never appears twice."""
    atomic_write_text(path, "".join(json.dumps(line) + "\n" for line in history))


def append_metrics(path: Path, line: dict[str, Any]) -> None:
    """Add one epoch's line to metrics.jsonl, durably.

    An append rather than an atomic rewrite, on purpose: earlier lines are never at risk (a
    crash can at worst leave a torn last line, which the resume's :func:`write_metrics` drops
    with every other line after the checkpoint), a reader following the file (``tail -f``, a
    dashboard) keeps its handle where a rename would swap the file under it, and an epoch costs
    one line, not the whole history.
    """
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())
