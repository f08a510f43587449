"""Exponential moving average (EMA) of a model's weights and BatchNorm statistics.

Why: the last steps of a short, high-learning-rate run bounce around a minimum; an average of
recent weights sits closer to its centre and generalises better (Polyak averaging; Page's fast
ResNet-9 averages every 5 steps with decay 0.99). The average is what the run evaluates and
saves as ``model.pt``; the raw weights keep training.

Update rule, every ``every`` optimizer steps (the n-th update, n = 0, 1, ...)::

    d = min(decay, (1 + n) / (10 + n))      # warm-up: early averages forget the random init
    ema = d * ema + (1 - d) * model         # floating-point parameters and buffers
    ema = model                             # integer buffers (BatchNorm's num_batches_tracked)

The warm-up is TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` rule.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay the ``updates``-th update (0-based) uses: ``min(decay, (1+n)/(10+n))``."""
    return min(decay, (1 + updates) / (10 + updates))


class ModelEma:
    """An averaged copy of ``model``: call :meth:`step` after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float, every: int = 1) -> None:
        if not 0 < decay < 1 or every < 1:
            raise ValueError(f"EMA needs 0 < decay < 1 and every >= 1, got {decay}, {every}")
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.every = every
        self.steps = 0  # optimizer steps seen
        self.updates = 0  # averaging updates made

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        """Count one optimizer step of ``model``; average when ``every`` steps have passed."""
        self.steps += 1
        if self.steps % self.every:
            return
        weight = 1.0 - ema_decay_at(self.decay, self.updates)
        ema_float, model_float = [], []
        current = model.state_dict()  # by name: a SyncBatchNorm-converted model still matches
        for name, e in self.module.state_dict().items():
            m = current[name]
            if e.is_floating_point():
                ema_float.append(e)
                model_float.append(m.detach())
            else:
                e.copy_(m)
        if ema_float:
            # One fused kernel per dtype/device group instead of one per tensor.
            torch._foreach_lerp_(ema_float, model_float, weight)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """Averaged weights and counters, for ``checkpoints/last.pt``."""
        return {"module": {k: v.detach().cpu().contiguous()
                           for k, v in self.module.state_dict().items()},
                "steps": self.steps, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.module.load_state_dict(state["module"])
        self.steps = int(state["steps"])
        self.updates = int(state["updates"])
