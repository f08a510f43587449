"""FP16 export: pre-flight on real CIFAR-10 images, a planted overflow, --keep-fp32 (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

from port.data.datasets import load_split, materialize
from port.data.spec import parse_data_spec
from port.export.fp16 import FP16_MAX, convert_fp16, preflight_fp16
from port.export.onnx import export_onnx
from port.ground.errors import UsageError
from port.models.card import ModelCard

PLANT = 2.0**14  # scales one layer's activations past FP16's 65504 (ReLU commutes with it)


class TinyNet(nn.Module):
    """Two conv-bn-relu blocks, global pool, linear: small enough to reason about node by node."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                    nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32),
                                    nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def data(cifar_subset_dir: Path) -> dict:
    spec = parse_data_spec(str(cifar_subset_dir))
    train = load_split(spec, "train", limit=256, seed=0)
    x_train, _ = materialize(train)
    x_test, _ = materialize(load_split(spec, "val", limit=64, seed=0))
    return {"split": train, "x_train": x_train, "x_test": x_test}


def _with_real_bn_stats(model: nn.Module, images: np.ndarray) -> nn.Module:
    """BatchNorm statistics from real images (no training): activations then have a trained
    network's scale, which is what the pre-flight judges."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), 64):
            model(torch.from_numpy(images[start:start + 64]))
    return model.eval()


def _export(model: nn.Module, data: dict, path: Path) -> Path:
    split = data["split"]
    card = ModelCard(arch=type(model).__name__.lower(), num_classes=10, classes=split.classes,
                     preprocess=split.preprocess)
    export_onnx(model, card, path, sample=data["x_test"][:8], exporter="torchscript")
    return path


def _run(path: Path, images: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": images})[0]


@pytest.fixture(scope="module")
def resnet18_onnx(data: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = _with_real_bn_stats(torchvision.models.resnet18(num_classes=10), data["x_train"])
    return _export(model, data, tmp_path_factory.mktemp("fp16") / "resnet18.onnx")


@pytest.fixture(scope="module")
def tiny(data: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """TinyNet, and a copy with an FP16 overflow planted in block1 that leaves logits unchanged."""
    torch.manual_seed(0)
    model = _with_real_bn_stats(TinyNet(), data["x_train"])
    planted = TinyNet()
    planted.load_state_dict(model.state_dict())
    planted.eval()
    with torch.no_grad():
        planted.block1[1].weight.mul_(PLANT)  # BN affine: block1's output x PLANT ...
        planted.block1[1].bias.mul_(PLANT)
        planted.block2[0].weight.div_(PLANT)  # ... undone by block2's conv
    out = tmp_path_factory.mktemp("tiny")
    return {"clean": _export(model, data, out / "tiny.onnx"),
            "planted": _export(planted, data, out / "planted.onnx")}


def _names(path: Path) -> dict[str, str]:
    """op type -> name of the first node of that type, per block (torchscript naming)."""
    return {n.name: n.op_type for n in onnx.load(str(path)).graph.node}


def test_planted_model_computes_the_same_in_fp32(tiny: dict, data: dict) -> None:
    clean, planted = _run(tiny["clean"], data["x_test"]), _run(tiny["planted"], data["x_test"])
    np.testing.assert_allclose(planted, clean, rtol=1e-3, atol=1e-3)
    assert (planted.argmax(1) == clean.argmax(1)).all()


def test_preflight_is_clean_on_normal_models(resnet18_onnx: Path, tiny: dict,
                                             data: dict) -> None:
    for path in (resnet18_onnx, tiny["clean"]):
        findings = preflight_fp16(path, data["x_test"])
        assert findings == [], [f.describe() for f in findings]


def test_preflight_finds_and_names_the_planted_overflow(tiny: dict, data: dict) -> None:
    findings = preflight_fp16(tiny["planted"], data["x_test"])
    overflow = [f for f in findings if f.kind == "overflow"]
    assert overflow and all(f.where == "activation" for f in overflow)
    names = _names(tiny["planted"])
    # The overflowing tensors are block1's conv (BN folded in) and ReLU outputs, nothing later.
    assert {f.op_type for f in overflow} == {"Conv", "Relu"}
    assert all(f.node.startswith("/block1/") for f in overflow)
    assert all(f.node in names and names[f.node] == f.op_type for f in overflow)
    assert all(f.max_abs > FP16_MAX and 0 < f.fraction <= 1 for f in overflow)
    assert all(not f.kept_fp32 for f in overflow)
    # To stay FP32 the tensor's reader must stay FP32 too: block2's conv is named as well.
    keep = {n for f in overflow for n in f.keep}
    assert any(n.startswith("/block2/") and names[n] == "Conv" for n in keep)
    assert "/block1/" in overflow[0].describe() and "65504" in overflow[0].describe()
    # block2's weights were divided by 2^14: FP16 keeps them only as subnormals.
    tiny_weights = [f for f in findings if f.where == "weight"]
    assert tiny_weights and all(f.kind in ("subnormal", "underflow") for f in tiny_weights)
    assert tiny_weights[0].node.startswith("/block2/")


def test_weights_only_preflight_without_images(tiny: dict) -> None:
    findings = preflight_fp16(tiny["planted"], None)
    assert findings and all(f.where == "weight" for f in findings)


def test_convert_refuses_the_planted_overflow(tiny: dict, data: dict, tmp_path: Path) -> None:
    out = tmp_path / "planted.fp16.onnx"
    with pytest.raises(UsageError) as info:
        convert_fp16(tiny["planted"], out, sample_images=data["x_test"])
    message = str(info.value)
    assert "\n" not in message
    assert "--keep-fp32 " in message and "/block1/" in message and "/block2/" in message
    assert not out.exists()


def test_keep_fp32_on_those_nodes_lets_conversion_pass(tiny: dict, data: dict,
                                                       tmp_path: Path) -> None:
    findings = preflight_fp16(tiny["planted"], data["x_test"])
    keep = sorted({n for f in findings if f.kind == "overflow" for n in f.keep})
    out = tmp_path / "planted.fp16.onnx"
    metrics = convert_fp16(tiny["planted"], out, sample_images=data["x_test"], keep_fp32=keep)
    assert metrics["keep_fp32"] == keep
    assert all(f["kept_fp32"] for f in metrics["findings"] if f["kind"] == "overflow")
    assert metrics["ort_cpu"]["ran"] and metrics["ort_cpu"]["finite"]
    assert metrics["ort_cpu"]["check_top1_agreement"] == 1.0

    # The overflowing tensors never pass through FP16 in the written graph.
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out)))
    dtypes = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    overflowing = {f.tensor for f in findings if f.kind == "overflow"}
    assert all(dtypes.get(t) == onnx.TensorProto.FLOAT for t in overflowing)
    casts_to_fp16 = [n for n in model.graph.node if n.op_type == "Cast"
                     and n.attribute[0].i == onnx.TensorProto.FLOAT16]
    assert not any(n.input[0] in overflowing for n in casts_to_fp16)
    got, ref = _run(out, data["x_test"]), _run(tiny["clean"], data["x_test"])
    assert np.isfinite(got).all() and (got.argmax(1) == ref.argmax(1)).mean() >= 0.95


def test_convert_fp16_normal_model(resnet18_onnx: Path, data: dict, tmp_path: Path) -> None:
    out = tmp_path / "resnet18.fp16.onnx"
    metrics = convert_fp16(resnet18_onnx, out, sample_images=data["x_test"])
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    # FP32 in and out (apps keep feeding float32), FP16 weights inside.
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    inits = {t.name: t.data_type for t in model.graph.initializer}
    assert conv_weights and all(inits[w] == onnx.TensorProto.FLOAT16 for w in conv_weights)
    assert metrics["bytes"] < 0.6 * metrics["fp32_bytes"]

    source = {p.key: p.value for p in onnx.load(str(resnet18_onnx)).metadata_props}
    props = {p.key: p.value for p in model.metadata_props}
    assert props["porter.precision"] == "fp16"
    assert all(props[k] == v for k, v in source.items() if k != "porter.precision")
    assert json.loads(props["porter.fp16"])["keep_fp32"] == []

    run = metrics["ort_cpu"]
    assert run["ran"] and run["provider"] == "CPUExecutionProvider" and run["how"]
    assert run["finite"] and run["check_top1_agreement"] >= 7 / 8
    got, ref = _run(out, data["x_test"]), _run(resnet18_onnx, data["x_test"])
    agreement = float((got.argmax(1) == ref.argmax(1)).mean())
    print(f"\nFP16 vs FP32 on {len(ref)} images: top-1 agreement {agreement:.4f}, max |diff| "
          f"{np.abs(got - ref).max():.3g}; {run['how']}")
    assert agreement >= 0.95


def test_unknown_keep_fp32_name_lists_valid_names(tiny: dict, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        convert_fp16(tiny["clean"], tmp_path / "x.onnx", keep_fp32=["conv_that_does_not_exist"])
    message = str(info.value)
    assert "conv_that_does_not_exist" in message and "\n" not in message
    first = onnx.load(str(tiny["clean"])).graph.node[0].name
    assert first in message
    with pytest.raises(UsageError, match="conv_that_does_not_exist"):
        preflight_fp16(tiny["clean"], None, keep_fp32=["conv_that_does_not_exist"])


def test_fp16_input_is_refused(tiny: dict, tmp_path: Path) -> None:
    once = tmp_path / "once.onnx"
    convert_fp16(tiny["clean"], once)
    with pytest.raises(UsageError, match="FP32"):
        convert_fp16(once, tmp_path / "twice.onnx")
