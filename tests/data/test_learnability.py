"""The synthetic set is learnable: a tiny CNN beats chance (10 %) by far in a few CPU epochs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from port.data.datasets import load_split, materialize
from port.data.spec import DataSpec


def _tiny_cnn() -> nn.Module:
    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, 10))


@pytest.mark.slow
def test_tiny_cnn_learns_synthetic(synthetic_spec: DataSpec) -> None:
    threads = torch.get_num_threads()
    # One thread: the tiny convolutions gain nothing from more, and a shared CPU loses a lot.
    torch.set_num_threads(1)
    try:
        accuracy = _train_and_score(synthetic_spec)
    finally:
        torch.set_num_threads(threads)
    assert accuracy > 0.4, f"val accuracy {accuracy:.3f}: the synthetic set should be learnable"


def _train_and_score(synthetic_spec: DataSpec) -> float:
    torch.manual_seed(0)
    train = load_split(synthetic_spec, "train", limit=2000)
    x, y = (torch.from_numpy(a) for a in materialize(train))
    xv, yv = (torch.from_numpy(a) for a in materialize(load_split(synthetic_spec, "val")))
    model = _tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    for _ in range(4):  # about 8 s on one CPU core; reaches ~68 % (96 % after 12 full epochs)
        model.train()
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return (model(xv).argmax(1) == yv).float().mean().item()
