"""Shared fixture for the training tests: a tiny config that trains in about a second."""

from __future__ import annotations

from typing import Any

import pytest

from port.train.recipe import TrainConfig, resolve

# Seconds of CPU, not minutes: 16 px synthetic images, a ResNet-18 at 1/8 width. One intra-op
# thread: on a busy 2-core machine two OpenMP threads spin against other processes and a tiny
# model trains several times slower than with one.
TINY: dict[str, Any] = {
    "data": "synthetic", "arch": "resnet18_cifar", "width": 0.125, "image_size": 16,
    "limit": 192, "val_limit": 64, "batch_size": 32, "epochs": 3, "lr": 0.2,
    "schedule": "cosine", "workers": 0, "seed": 7, "device": "cpu", "threads": 1,
}


# The cifar10-fast recipe, every trick on, shrunk the same way (ResNet-9 at 1/8 width).
FAST_TINY: dict[str, Any] = {
    "data": "synthetic", "width": 0.125, "image_size": 16, "limit": 192, "val_limit": 64,
    "batch_size": 32, "ghost_batch": 8, "epochs": 3, "lr_scale_batch": 32, "cutout": 4,
    "ema_every": 2, "workers": 0, "seed": 7, "device": "cpu", "threads": 1,
}


@pytest.fixture
def tiny() -> TrainConfig:
    return resolve(None, TINY)


@pytest.fixture
def fast_tiny() -> TrainConfig:
    return resolve("cifar10-fast", FAST_TINY)
