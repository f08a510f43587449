"""Which loader a run uses: device-resident when CIFAR-sized data fit, DataLoader otherwise."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from port.ground.errors import UsageError
from port.train.data import CPU_BUDGET_BYTES, choose_loader
from port.train.loop import train
from port.train.recipe import TrainConfig

CPU = torch.device("cpu")


def test_auto_prefers_the_device_for_small_images_that_fit() -> None:
    kind, why = choose_loader("auto", 32, 60_000, 4, CPU)  # CIFAR-10, both splits
    assert kind == "device" and "fit" in why


def test_auto_falls_back_to_the_dataloader() -> None:
    kind, why = choose_loader("auto", 224, 1000, 0, CPU)
    assert kind == "dataloader" and "224 px" in why
    too_many = CPU_BUDGET_BYTES // (3 * 40 * 40) + 1
    kind, why = choose_loader("auto", 32, too_many, 4, CPU)
    assert kind == "dataloader" and "budget" in why


def test_forcing() -> None:
    assert choose_loader("dataloader", 32, 100, 4, CPU)[0] == "dataloader"
    assert choose_loader("device", 64, 100, 8, CPU)[0] == "device"
    with pytest.raises(UsageError, match=r"up to 64 px.*--loader dataloader"):
        choose_loader("device", 224, 100, 0, CPU)


def test_the_run_records_its_loader(tiny: TrainConfig, tmp_path: Path) -> None:
    result = train(dataclasses.replace(tiny, epochs=1), tmp_path / "auto", progress=False)
    assert result.metrics["loader"] == "device"
    assert result.metrics["world_size"] == 1 and result.metrics["global_batch"] == 32
    result = train(dataclasses.replace(tiny, epochs=1, loader="dataloader"), tmp_path / "dl",
                   progress=False)
    assert result.metrics["loader"] == "dataloader"
