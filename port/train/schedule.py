"""Learning-rate schedules as pure functions of the iteration, wrapped in a ``LambdaLR``.

Every schedule is a multiplier of the peak learning rate, evaluated per optimizer step (so
warmup and decay are smooth even with few, long epochs). Because the factor depends only on the
step index, a resumed run picks the schedule up exactly where it stopped.

* ``step``: ``gamma ** (epoch // step_size)`` (torchvision's StepLR, changes at epoch bounds);
* ``exponential``: ``gamma ** (step / steps_per_epoch)``, a factor gamma per epoch;
* ``cosine``: half a cosine from 1 to 0 over the steps after warmup (SGDR without restarts);
* ``onecycle``: piecewise linear 0 -> 1 -> 0 with the peak at ``onecycle_peak`` of training.

``warmup_epochs`` multiplies step/exponential/cosine by a linear ramp to 1 over that many epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from port.train.recipe import TrainConfig


@dataclass(frozen=True)
class Schedule:
    """The learning-rate multiplier of every step of one run."""

    kind: str  # step | exponential | cosine | onecycle
    total_steps: int  # optimizer steps in the whole run
    steps_per_epoch: int
    warmup_steps: int = 0
    step_size: int = 30  # epochs between step decays
    gamma: float = 0.1
    peak: float = 0.25  # onecycle: fraction of training at the peak

    @classmethod
    def from_config(cls, cfg: TrainConfig, steps_per_epoch: int) -> Schedule:
        """The schedule ``cfg`` describes for an epoch of ``steps_per_epoch`` optimizer steps."""
        return cls(
            kind=cfg.schedule,
            total_steps=cfg.epochs * steps_per_epoch,
            steps_per_epoch=steps_per_epoch,
            warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
            step_size=cfg.step_size,
            gamma=cfg.gamma,
            peak=cfg.onecycle_peak,
        )

    def __call__(self, step: int) -> float:
        """Multiplier of the peak lr for optimizer step ``step`` (0-based)."""
        if self.kind == "onecycle":
            # Evaluate at the middle of the step, so neither the first nor the last step has
            # lr exactly 0 (a wasted step), and the shape stays symmetric.
            t = (step + 0.5) / self.total_steps
            return t / self.peak if t <= self.peak else max(0.0, (1 - t) / (1 - self.peak))
        if self.kind == "step":
            factor = self.gamma ** (step // self.steps_per_epoch // self.step_size)
        elif self.kind == "exponential":
            factor = self.gamma ** (step / self.steps_per_epoch)
        elif self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
            factor = 0.5 * (1 + math.cos(math.pi * progress))
        else:
            raise ValueError(f"unknown schedule {self.kind!r}")  # validated in recipe: a bug
        if step < self.warmup_steps:
            factor *= (step + 1) / self.warmup_steps  # reaches 1 on the last warmup step
        return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over ``optimizer`` (call ``.step()`` after every optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule.from_config(cfg, steps_per_epoch))
