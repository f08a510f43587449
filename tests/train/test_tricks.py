"""The fast recipe's training-side tricks on the CPU, and a cifar10-fast model that exports."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from port.data.datasets import load_split, materialize
from port.data.spec import parse_data_spec
from port.ground.errors import UsageError
from port.models.checkpoint import load_model
from port.models.layers import GhostBatchNorm2d, PatchWhitening
from port.models.registry import create_model
from port.train.ema import ModelEma, ema_decay_at
from port.train.loop import evaluate, train
from port.train.optim import build_optimizer
from port.train.recipe import TrainConfig, resolve
from port.train.runtime import Runtime
from port.train.state import load_train_state
from port.train.tricks import freeze_bn_scale, init_whitening, tta_logits


def test_frozen_bn_scale_stays_at_one_while_biases_train() -> None:
    torch.manual_seed(0)
    model = create_model("resnet9", 10, width=0.125)
    assert freeze_bn_scale(model) == 8
    optimizer = build_optimizer(model, resolve(None, {"arch": "resnet9", "lr": 0.5}))
    grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(id(bn.weight) not in grouped for bn in bns)
    biases = [bn.bias.detach().clone() for bn in bns]
    loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 16, 16)), torch.arange(8))
    loss.backward()
    optimizer.step()
    assert all(torch.equal(bn.weight, torch.ones_like(bn.weight)) for bn in bns)
    assert any(not torch.equal(bn.bias, b) for bn, b in zip(bns, biases, strict=True))


def test_ema_follows_the_update_rule() -> None:
    model = nn.Sequential(nn.Linear(2, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema = ModelEma(model, decay=0.9, every=2)
    expected = 1.0
    values = [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    for step, v in enumerate(values, start=1):
        with torch.no_grad():
            model[0].weight.fill_(v)
        model[1].num_batches_tracked.fill_(step)
        ema.step(model)
        if step % 2 == 0:  # averages every 2nd step, with the warm-up decay
            d = ema_decay_at(0.9, step // 2 - 1)
            expected = d * expected + (1 - d) * v
    assert ema.updates == 3 and ema.steps == 6
    assert ema.module[0].weight.flatten().tolist() == pytest.approx([expected] * 2, rel=1e-6)
    assert ema_decay_at(0.9, 0) == pytest.approx(0.1) and ema_decay_at(0.9, 1000) == 0.9
    assert int(ema.module[1].num_batches_tracked) == 6  # integer buffers are copied
    assert not any(p.requires_grad for p in ema.module.parameters())
    # The state round-trips (resume).
    again = ModelEma(model, decay=0.9, every=2)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 3 and torch.equal(again.module[0].weight, ema.module[0].weight)


def test_tta_averages_the_logits_of_the_image_and_its_mirror() -> None:
    torch.manual_seed(0)
    model = create_model("resnet9", 4, width=0.125).eval()
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        want = (model(x) + model(torch.flip(x, dims=[3]))) / 2
        torch.testing.assert_close(tta_logits(model, x), want)
        torch.testing.assert_close(tta_logits(model, x, model(x)), want)
    y = want.argmax(1)  # labels the TTA prediction gets right by construction
    runtime = Runtime.from_config(resolve(None, {"device": "cpu"}))
    scores = evaluate(model, [(x, y)], nn.CrossEntropyLoss(), runtime, tta=True)
    assert scores.tta_acc == 1.0
    assert scores.acc == pytest.approx((model(x).argmax(1) == y).float().mean().item())
    assert evaluate(model, [(x, y)], nn.CrossEntropyLoss(), runtime).tta_acc is None


def test_init_whitening_fits_the_stem_from_uint8_images() -> None:
    model = create_model("resnet9", 10, width=0.125, whiten=2)
    before = model.prep[0].weight.clone()
    images = torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8)
    assert init_whitening(model, images, (0.5,) * 3, (0.25,) * 3) == 1
    assert not torch.equal(before, model.prep[0].weight)
    assert init_whitening(create_model("resnet9", 10, width=0.125), images, (0.5,) * 3,
                          (0.25,) * 3) == 0


def test_cifar10_fast_recipe_sets_every_trick() -> None:
    cfg = resolve("cifar10-fast", {})
    assert (cfg.arch, cfg.epochs, cfg.batch_size) == ("resnet9", 10, 512)
    assert cfg.label_smoothing > 0 and cfg.activation == "celu" and cfg.whiten == 3
    assert cfg.ghost_batch == 32 and cfg.freeze_bn_scale and cfg.ema_decay > 0 and cfg.tta
    assert cfg.schedule == "onecycle" and cfg.nesterov and cfg.amp_dtype == "bfloat16"
    assert cfg.loader == "auto" and cfg.cutout == 8


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"arch": "resnet18_cifar", "activation": "celu"}, "resnet18_cifar has no activation"),
        ({"whiten": 5}, "whiten must be 0"),
        ({"ghost_batch": 48}, "ghost_batch 48 must divide batch_size 512"),
        ({"ema_decay": 1.0}, "ema_decay must be in"),
        ({"ghost_batch": 32, "sync_bn": True}, "contradict"),
        ({"loader": "gpu"}, "unknown loader 'gpu'"),
        ({"amp_dtype": "fp8"}, "unknown amp_dtype"),
    ],
)
def test_trick_settings_are_checked(overrides: dict, match: str) -> None:
    base = {"arch": "resnet9", "batch_size": 512}
    with pytest.raises(UsageError, match=match):
        resolve(None, {**base, **overrides})


def test_bf16_autocast_on_cpu(tiny: TrainConfig, tmp_path: Path) -> None:
    cfg = dataclasses.replace(tiny, epochs=1, amp=True, amp_dtype="bfloat16")
    result = train(cfg, tmp_path, progress=False)
    assert result.metrics["amp"] is True and result.metrics["amp_dtype"] == "bfloat16"
    assert np.isfinite(result.metrics["train_loss"])
    with pytest.raises(UsageError, match="float16 needs a CUDA device"):
        Runtime.from_config(dataclasses.replace(cfg, amp_dtype="float16"))


def test_cifar10_fast_run_saves_the_ema_and_exports_to_onnx(
    fast_tiny: TrainConfig, tmp_path: Path
) -> None:
    from port.export.onnx import export_onnx

    result = train(dataclasses.replace(fast_tiny, epochs=2), tmp_path, progress=False)
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= line["val_acc_tta"] <= 1 for line in lines)
    assert result.metrics["ema"] is True and "val_acc_tta" in result.metrics

    model, card, _ = load_model(result.model_path)
    # The card rebuilds the deployed graph: whitening stem and CELU, plain BatchNorm.
    assert card.model_kwargs == {"width": 0.125, "activation": "celu", "whiten": 3}
    assert isinstance(model.prep[0], PatchWhitening)
    assert not any(isinstance(m, GhostBatchNorm2d) for m in model.modules())
    # model.pt holds the EMA weights, not the raw ones.
    state = load_train_state(tmp_path / "checkpoints" / "last.pt")
    saved = model.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in state["ema"]["module"].items())
    assert not torch.equal(saved["fc.weight"], state["model"]["fc.weight"])

    split = load_split(parse_data_spec("synthetic"), "val", preprocess=card.preprocess,
                       limit=16, seed=0)
    images, _ = materialize(split)
    metrics = export_onnx(model, card, tmp_path / "model.onnx", sample=images)
    assert metrics  # export_onnx checked ONNX Runtime against PyTorch itself; check again:
    session = ort.InferenceSession(str(tmp_path / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {card.input_name: images})[0]
    with torch.inference_mode():
        want = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
