"""Optimizer groups (no decay on BN/bias) and the shape of every learning-rate schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from port.models.registry import create_model
from port.train.optim import build_loss, build_optimizer, param_groups
from port.train.recipe import resolve
from port.train.schedule import Schedule, build_scheduler


@pytest.mark.parametrize("arch", ["resnet18_cifar", "resnet9", "resnet18"])
def test_no_weight_decay_on_bn_or_bias(arch: str) -> None:
    kwargs = {"width": 0.25} if arch != "resnet18" else {}
    model = create_model(arch, 10, **kwargs)
    decay, no_decay = param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert id(module.weight) not in decayed and id(module.bias) not in decayed
        if isinstance(module, nn.Conv2d | nn.Linear):
            assert id(module.weight) in decayed
            if module.bias is not None:
                assert id(module.bias) not in decayed
    # Every parameter is in exactly one group.
    all_ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())


def test_optimizer_settings() -> None:
    cfg = resolve(None, {"lr": 0.1, "batch_size": 512, "lr_scale_batch": 256, "momentum": 0.875,
                         "nesterov": True, "weight_decay": 1e-4, "arch": "resnet9"})
    opt = build_optimizer(create_model("resnet9", 10, width=0.25), cfg)
    assert isinstance(opt, torch.optim.SGD)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.2)] * 2
    assert opt.defaults["momentum"] == 0.875 and opt.defaults["nesterov"] is True
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]


def test_loss_uses_label_smoothing() -> None:
    assert build_loss(resolve(None, {"label_smoothing": 0.1})).label_smoothing == 0.1


def _factors(**kw) -> list[float]:
    sched = Schedule(**kw)
    return [sched(i) for i in range(sched.total_steps)]


def test_cosine_with_warmup() -> None:
    f = _factors(kind="cosine", total_steps=100, steps_per_epoch=10, warmup_steps=20)
    ramp = f[:20]
    assert ramp == sorted(ramp) and ramp[0] == pytest.approx(1 / 20) and ramp[-1] == 1.0
    decay = f[20:]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert f[20] == 1.0 and f[-1] < 0.01  # ends near zero
    assert f[60] == pytest.approx(0.5)  # half way through the decay = half the lr


def test_cosine_without_warmup_starts_at_peak() -> None:
    f = _factors(kind="cosine", total_steps=50, steps_per_epoch=5)
    assert f[0] == 1.0 and f[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 49 / 50)))


def test_onecycle_peak() -> None:
    f = _factors(kind="onecycle", total_steps=100, steps_per_epoch=10, peak=0.3)
    top = max(range(100), key=f.__getitem__)
    assert top in (29, 30) and f[top] == pytest.approx(1.0, abs=0.02)
    assert f[:top] == sorted(f[:top]) and f[top:] == sorted(f[top:], reverse=True)
    assert 0 < f[0] < 0.02 and 0 < f[-1] < 0.01  # neither end wastes a step at lr 0


def test_step_schedule() -> None:
    f = _factors(kind="step", total_steps=90, steps_per_epoch=3, step_size=10, gamma=0.1)
    assert f[0] == f[29] == 1.0
    assert f[30] == pytest.approx(0.1) and f[60] == pytest.approx(0.01)


def test_exponential_schedule() -> None:
    f = _factors(kind="exponential", total_steps=40, steps_per_epoch=4, gamma=0.5)
    assert f[0] == 1.0 and f[4] == pytest.approx(0.5) and f[8] == pytest.approx(0.25)
    assert f[2] == pytest.approx(0.5 ** 0.5)  # stepped per iteration, not per epoch


def test_warmup_applies_to_step_schedule() -> None:
    f = _factors(kind="step", total_steps=40, steps_per_epoch=4, warmup_steps=4, step_size=5)
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]


def test_lambda_scheduler_follows_schedule_and_resumes() -> None:
    cfg = resolve(None, {"epochs": 4, "schedule": "cosine", "warmup_epochs": 1, "lr": 0.4})
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=5)
    seen = []
    for _ in range(12):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = Schedule.from_config(cfg, 5)
    assert seen == pytest.approx([0.4 * expected(i) for i in range(12)])
    # A fresh scheduler loaded from the state dict continues where this one stopped.
    opt2 = build_optimizer(model, cfg)
    sched2 = build_scheduler(opt2, cfg, steps_per_epoch=5)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.4 * expected(12))
