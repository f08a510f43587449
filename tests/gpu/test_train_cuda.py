"""The CUDA paths of fast training (skipped without a GPU): the device-resident loader on the GPU,
bf16/fp16 autocast with channels_last, and every cifar10-fast trick in one tiny run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from port.data.gpu_loader import Augment, DeviceLoader
from port.train.loop import train
from port.train.recipe import TrainConfig

GPU_NEEDS = "cuda"  # tests/gpu/conftest.py: a CUDA device for torch, no TensorRT


def test_device_loader_on_cuda_is_deterministic_and_channels_last() -> None:
    images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(300)

    def loader() -> DeviceLoader:
        return DeviceLoader(images, labels, batch_size=64, mean=(0.5,) * 3, std=(0.25,) * 3,
                            device="cuda", augment=Augment.standard(32, cutout=8), shuffle=True,
                            drop_last=True, seed=1, dtype=torch.bfloat16, channels_last=True)

    a, b = loader(), loader()
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.is_cuda and xa.dtype == torch.bfloat16
        assert xa.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_cifar10_fast_tiny_run_on_cuda(fast_tiny: TrainConfig, tmp_path: Path,
                                       amp_dtype: str) -> None:
    cfg = dataclasses.replace(fast_tiny, device="cuda", amp="auto", amp_dtype=amp_dtype,
                              channels_last="auto", epochs=2)
    result = train(cfg, tmp_path, progress=False)
    m = result.metrics
    assert m["device"].startswith("cuda") and m["amp"] is True and m["amp_dtype"] == amp_dtype
    assert m["channels_last"] is True and m["loader"] == "device"
    assert np.isfinite(m["train_loss"]) and 0 <= m["val_acc_tta"] <= 1
