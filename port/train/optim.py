"""Optimizer and loss of a training run: SGD with decay-free BN/bias groups, smoothed CE."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from port.train.recipe import TrainConfig

# Modules whose ``weight`` is a real filter matrix and so takes weight decay.
_DECAYED = (nn.modules.conv._ConvNd, nn.Linear)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two SGD groups: conv/linear weights with ``weight_decay``; everything else without.

    BatchNorm's gamma/beta and biases are left undecayed: shrinking them towards zero only
    fights the normalisation (torchvision's ``--norm-weight-decay 0``, NVIDIA's RN50 recipe).
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, _DECAYED) and name == "weight":
                decay.append(param)
            else:
                no_decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum at the run's effective learning rate (linear scaling applied)."""
    return torch.optim.SGD(
        param_groups(model, cfg.weight_decay),
        lr=cfg.effective_lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
    )


def build_loss(cfg: TrainConfig) -> nn.CrossEntropyLoss:
    """Cross-entropy with the run's label smoothing (used for train and val loss alike)."""
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
