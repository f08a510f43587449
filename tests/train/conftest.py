"""Shared fixtures for the training tests: a tiny config and a single-threaded torch.

One intra-op thread: on a busy 2-core machine OpenMP threads spin against other processes and a
tiny model trains 10x slower with 2 threads than with 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from port.train.recipe import TrainConfig, resolve

# Seconds of CPU, not minutes: 16 px synthetic images, a ResNet-18 at 1/8 width.
TINY: dict[str, Any] = {
    "data": "synthetic", "arch": "resnet18_cifar", "width": 0.125, "image_size": 16,
    "limit": 192, "val_limit": 64, "batch_size": 32, "epochs": 3, "lr": 0.2,
    "schedule": "cosine", "workers": 0, "seed": 7, "device": "cpu",
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny() -> TrainConfig:
    return resolve(None, TINY)
