"""Tiny ONNX classifiers in the forms other exporters write, made here (no downloads).

Every model is the same small network (two 3x3 convolutions with ReLU, global average pooling,
a 10-class head) with seeded random weights, written in one foreign form each: what tf2onnx,
keras2onnx, old PyTorch/Caffe2 exports and hand-written graphs look like. ``FORMS`` maps a form
name to its builder ``(directory) -> Path``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = 10
OPSET = 13


def _weights(channels: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def he(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return {"w1": he(8, channels, 3, 3), "b1": np.zeros(8, np.float32) + 0.05,
            "w2": he(16, 8, 3, 3), "b2": np.zeros(16, np.float32) + 0.05,
            "wh": he(CLASSES, 16), "bh": np.zeros(CLASSES, np.float32)}


def _body(x: str) -> list[onnx.NodeProto]:
    """x (NCHW float) -> pooled [N, 16, 1, 1] named 'pooled'."""
    return [
        helper.make_node("Conv", [x, "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"], name="pool"),
    ]


def _nc_head() -> list[onnx.NodeProto]:
    return [helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
            helper.make_node("Gemm", ["flat", "wh", "bh"], ["logits"], name="fc", transB=1)]


def _model(nodes: list[onnx.NodeProto], inp: onnx.ValueInfoProto, out: onnx.ValueInfoProto,
           weights: dict[str, np.ndarray], *, opset: int = OPSET,
           ir_version: int | None = None, initializers_as_inputs: bool = False
           ) -> onnx.ModelProto:
    used = {i for n in nodes for i in n.input}
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items() if k in used]
    inputs = [inp]
    if initializers_as_inputs:  # IR 3: every weight is also listed as a graph input
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in inits]
    graph = helper.make_graph(nodes, "foreign", inputs, [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="foreign-test")
    # onnx.helper writes its newest IR version; exporters write one runtimes of their time read.
    model.ir_version = ir_version if ir_version is not None else 8
    onnx.checker.check_model(model)
    return model


def _float_input(shape: list, elem: int = TensorProto.FLOAT, name: str = "image"
                 ) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _logits(batch: int | str = "N") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, CLASSES])


def nhwc(directory: Path) -> Path:
    """tf2onnx/keras style: [N, 32, 32, 3] input, transposed to NCHW inside the graph."""
    nodes = [helper.make_node("Transpose", ["image"], ["x"], name="to_nchw", perm=[0, 3, 1, 2]),
             *_body("x"), *_nc_head()]
    model = _model(nodes, _float_input(["N", 32, 32, 3]), _logits(), _weights(3, 1))
    return _save(model, directory / "nhwc.onnx")


def batch1(directory: Path) -> Path:
    """A graph exported with a fixed batch of 1 ([1, 3, 32, 32])."""
    model = _model([*_body("image"), *_nc_head()], _float_input([1, 3, 32, 32]), _logits(1),
                   _weights(3, 2))
    return _save(model, directory / "batch1.onnx")


def softmax_nc11(directory: Path) -> Path:
    """A 1x1-convolution head with a softmax: [N, 10, 1, 1] probabilities (Caffe style)."""
    w = _weights(3, 3)
    w["wh"] = w["wh"].reshape(CLASSES, 16, 1, 1)
    nodes = [*_body("image"),
             helper.make_node("Conv", ["pooled", "wh", "bh"], ["scores"], name="head"),
             helper.make_node("Softmax", ["scores"], ["probs"], name="softmax", axis=1)]
    out = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", CLASSES, 1, 1])
    model = _model(nodes, _float_input(["N", 3, 32, 32]), out, w)
    return _save(model, directory / "softmax_nc11.onnx")


def float64(directory: Path) -> Path:
    """A float64 input, cast to float32 inside the graph."""
    nodes = [helper.make_node("Cast", ["image"], ["x"], name="cast", to=TensorProto.FLOAT),
             *_body("x"), *_nc_head()]
    model = _model(nodes, _float_input(["N", 3, 32, 32], TensorProto.DOUBLE), _logits(),
                   _weights(3, 4))
    return _save(model, directory / "float64.onnx")


def ir3(directory: Path) -> Path:
    """IR 3 / opset 8, every initializer also listed as a graph input (old exporters)."""
    model = _model([*_body("image"), *_nc_head()], _float_input(["N", 3, 32, 32]), _logits(),
                   _weights(3, 5), opset=8, ir_version=3, initializers_as_inputs=True)
    return _save(model, directory / "ir3.onnx")


def external(directory: Path) -> Path:
    """Weights in a separate ``model.onnx.data`` file beside the graph."""
    model = _model([*_body("image"), *_nc_head()], _float_input(["N", 3, 32, 32]), _logits(),
                   _weights(3, 6))
    folder = directory / "external"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    return path


def gray28_torchscript(directory: Path) -> Path:
    """A 1-channel 28-px classifier from PyTorch's legacy TorchScript exporter (dynamo=False)."""
    import torch

    torch.manual_seed(7)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1, stride=2), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, CLASSES),
    ).eval()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "gray28.onnx"
    torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False,
                      input_names=["input.1"], output_names=["output"], opset_version=13,
                      dynamic_axes={"input.1": {0: "batch"}, "output": {0: "batch"}})
    return path


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


FORMS: dict[str, Callable[[Path], Path]] = {
    "gray28_torchscript": gray28_torchscript,
    "nhwc": nhwc,
    "batch1": batch1,
    "softmax_nc11": softmax_nc11,
    "float64": float64,
    "ir3": ir3,
    "external": external,
}
