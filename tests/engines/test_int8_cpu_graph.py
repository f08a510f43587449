"""The CPU form of porter's symmetric INT8 graph (port.engines.int8_cpu_graph), on real ORT.

The claim the rewrite rests on is checked value by value: after a ReLU, the symmetric int8 grid
(zero point 0) and the uint8 grid (zero point 0) with the same scale dequantize every value below
127.5 steps identically (rounding included); above it, int8 saturates at 127 steps and uint8 at
255. Then: a graph whose activations stay in range computes the same numbers in both forms, a
saturating input shows exactly the documented difference, ORT's CPU provider folds every ReLU of
the rewritten graph, and the runner records which graph ran.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from port.engines.int8_cpu_graph import cpu_form, rewrite_for_cpu
from port.engines.onnxrt import OnnxRuntimeRunner
from port.export.quantize import quantize_int8
from port.ground.errors import UsageError

from .tiny import Tiny

SCALE = np.float32(0.05)


def _session(model: onnx.ModelProto | bytes, optimize: bool = False,
             save: Path | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if save is not None:
        opts.optimized_model_filepath = str(save)
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _relu_qdq(zero_point: np.ndarray) -> onnx.ModelProto:
    """y = DQ(Q(Relu(x))) with scale SCALE and the given zero point (its dtype picks the grid)."""
    inits = [numpy_helper.from_array(np.array(SCALE), "s"),
             numpy_helper.from_array(zero_point, "zp")]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])]
    graph = helper.make_graph(nodes, "relu-qdq",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_int8_and_uint8_grids_agree_below_127_5_steps_and_only_there() -> None:
    steps = np.arange(-20, 300, dtype=np.float32)
    # Every grid point, every rounding edge (k +- 0.5 steps, ties go to even), points in between.
    x = np.concatenate([steps, steps + 0.5, steps - 0.5, steps + 0.49, steps + 0.51,
                        np.nextafter(steps + 0.5, np.float32(-1e9)),
                        np.nextafter(steps + 0.5, np.float32(1e9))]).astype(np.float32) * SCALE
    int8 = _session(_relu_qdq(np.array(0, np.int8))).run(None, {"x": x})[0]
    uint8 = _session(_relu_qdq(np.array(0, np.uint8))).run(None, {"x": x})[0]
    in_range = x < np.float32(127.5) * SCALE
    np.testing.assert_array_equal(int8[in_range], uint8[in_range])
    above = ~in_range
    # Above the int8 range: int8 saturates at 127 steps, uint8 keeps up to 255 steps.
    np.testing.assert_array_equal(int8[above], np.float32(127) * SCALE)
    expected = np.clip(np.round(x[above] / SCALE), 0, 255) * SCALE
    np.testing.assert_allclose(uint8[above], expected, rtol=0, atol=1e-6)
    assert (uint8[above] > int8[above]).all()


def _conv_block(q2_scale: float = 0.05) -> onnx.ModelProto:
    """Symmetric QDQ like porter writes: Conv -> Q -> DQ -> Relu -> Q -> DQ (x2 readers) -> Add."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(4, 4, 3, 3)).astype(np.int8)
    s = np.float32(q2_scale)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
        numpy_helper.from_array(np.array(0, np.int8), "xz"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.full(4, 0.004, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(4, np.int8), "wz"),
        numpy_helper.from_array(np.array(s), "s1"), numpy_helper.from_array(np.array(s), "s2"),
        numpy_helper.from_array(np.array(s), "s2b"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "s1", "z"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "s1", "z"], ["cd"]),
        helper.make_node("Relu", ["cd"], ["r"]),
        # Dedicated pairs, one per reader, as porter's TensorRT graph has them.
        helper.make_node("QuantizeLinear", ["r", "s2", "z"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "s2", "z"], ["rd"]),
        helper.make_node("QuantizeLinear", ["r", "s2b", "z"], ["rq2"]),
        helper.make_node("DequantizeLinear", ["rq2", "s2b", "z"], ["rd2"]),
        helper.make_node("MaxPool", ["rd"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["p", "rd2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def test_rewrite_computes_the_same_in_range_and_keeps_more_when_saturating() -> None:
    model = _conv_block()
    cpu = onnx.ModelProto()
    cpu.CopyFrom(model)
    done = rewrite_for_cpu(cpu)
    onnx.checker.check_model(cpu)
    assert done.rewritten_pairs == 2 and done.merged_pairs == 1 and done.removed_relus == 1
    assert done.signed_pairs == 1  # the input's pair: uint8 with zero point 128
    ops = collections.Counter(n.op_type for n in cpu.graph.node)
    assert ops["Relu"] == 0 and ops["QuantizeLinear"] == 2  # the input's Q and one uint8 pair
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (1, 4, 6, 6)).astype(np.float32)
    ref = _session(model).run(None, {"x": x})[0]
    assert np.abs(_session(model).run(None, {"x": x * 8})[0]).max() >= 2 * 127 * 0.05 - 1e-6
    for optimize in (False, True):  # QDQ semantics, and ORT's fused CPU kernels
        np.testing.assert_array_equal(_session(cpu, optimize).run(None, {"x": x})[0], ref)
    # A large input saturates the conv output: int8 stops at 127 steps, the CPU form at 255.
    big = x * 8
    sym, rewritten = (_session(m).run(None, {"x": big})[0] for m in (model, cpu))
    assert sym.max() == pytest.approx(2 * 127 * 0.05)
    assert rewritten.max() > sym.max()
    assert rewritten.max() <= 2 * 255 * 0.05 + 1e-6


def test_other_graphs_are_left_alone() -> None:
    uint8 = _relu_qdq(np.array(0, np.uint8))
    before = uint8.SerializeToString()
    done = rewrite_for_cpu(uint8)
    assert (done.rewritten_pairs, done.merged_pairs, done.removed_relus) == (0, 0, 0)
    assert uint8.SerializeToString() == before
    model, record = cpu_form(before, "bytes")
    assert model == before and record["graph"] == "as exported" and "no symmetric" in record["why"]


@pytest.fixture(scope="module")
def tiny_int8(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """porter's INT8 graph of the tiny CIFAR ResNet-18 (residual Adds, ReLUs after them)."""
    out = tmp_path_factory.mktemp("int8-cpu-graph") / "model.int8.onnx"
    images = np.random.default_rng(0).standard_normal((16, 3, 32, 32), dtype=np.float32)
    quantize_int8(tiny.onnx, out, images, batch_size=8, progress=False)
    return out


def test_runner_runs_the_cpu_form_and_says_so(tiny_int8: Path, tiny: Tiny,
                                              tmp_path: Path) -> None:
    before = tiny_int8.read_bytes()
    x = tiny.images
    with OnnxRuntimeRunner(tiny_int8, providers=["CPUExecutionProvider"]) as runner:
        cpu = runner.infer({"input": x})[runner.logits_output()]
        graph = runner.details()["int8_cpu"]["graph"]
    with OnnxRuntimeRunner(tiny_int8, providers=["CPUExecutionProvider"],
                           int8_graph="file") as runner:
        file = runner.infer({"input": x})[runner.logits_output()]
        assert runner.details()["int8_cpu"]["graph"]["graph"] == "as exported"
    assert tiny_int8.read_bytes() == before  # the TensorRT graph on disk is untouched
    assert graph["graph"] == "cpu rewrite" and graph["uint8_pairs"] > 0
    assert graph["removed_relus"] > 0 and "unchanged" in graph["why"]
    np.testing.assert_array_equal(cpu.argmax(1), file.argmax(1))
    np.testing.assert_allclose(cpu, file, atol=0.05 * np.abs(file).max())
    # ORT's CPU provider folds every ReLU of the CPU form into quantization.
    form, _ = cpu_form(str(tiny_int8), "tiny")
    _session(form, optimize=True, save=tmp_path / "opt.onnx")
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["Relu"] == 0 and ops["QLinearConv"] > 0
    with pytest.raises(UsageError, match="cpu, file"):
        OnnxRuntimeRunner(tiny_int8, int8_graph="fast")


def test_evaluate_refuses_an_unknown_int8_cpu_graph(tmp_path: Path) -> None:
    from tests.inprocess import cli, refused

    refused(cli("evaluate", "--run", tmp_path, "--compare", "--int8-cpu-graph", "fast"),
            "--int8-cpu-graph fast", "cpu, file")


def test_signed_pairs_become_uint8_with_zero_point_128_value_for_value() -> None:
    """DQ(Q(x)) on the symmetric int8 grid and on the uint8 grid with zero point 128, same
    scale: identical for every x, inside the range and beyond it (both clamp at -128 and 127
    steps), rounding ties included."""
    model = _relu_qdq(np.array(0, np.int8))
    model.graph.node.remove(model.graph.node[0])  # no ReLU: x itself, of either sign
    model.graph.node[0].input[0] = "x"
    cpu = onnx.ModelProto()
    cpu.CopyFrom(model)
    done = rewrite_for_cpu(cpu)
    assert (done.signed_pairs, done.rewritten_pairs, done.removed_relus) == (1, 0, 0)
    zero = {t.name: numpy_helper.to_array(t) for t in cpu.graph.initializer}
    q = next(n for n in cpu.graph.node if n.op_type == "QuantizeLinear")
    assert zero[q.input[2]].dtype == np.uint8 and int(zero[q.input[2]]) == 128
    steps = np.arange(-140 * 4, 140 * 4 + 1, dtype=np.float32) / 4  # ties at every half step
    x = steps * SCALE
    for optimize in (False, True):
        np.testing.assert_array_equal(_session(cpu, optimize).run(None, {"x": x})[0],
                                      _session(model, optimize).run(None, {"x": x})[0])


class _SiluNet(torch.nn.Module):
    """No ReLU anywhere (EfficientNet's activation): every activation may be negative."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.silu(self.a(x))
        x = torch.nn.functional.silu(self.b(x)) + x
        return self.fc(x.mean((2, 3)))


def test_a_net_without_relus_runs_on_uint8_kernels_with_the_files_numbers(
        tmp_path: Path) -> None:
    """The slowdown of issue 23 (INT8 slower than FP32 on SiLU nets): the CPU form now gives
    every activation pair to ORT as uint8, which fuses the convolutions, and computes what the
    file computes."""
    from port.data.preprocess import CIFAR10_MEAN, CIFAR10_STD, Preprocess
    from port.export.onnx import export_onnx
    from port.models.card import ModelCard

    torch.manual_seed(0)
    images = np.random.default_rng(0).standard_normal((16, 3, 32, 32), dtype=np.float32)
    card = ModelCard(arch="silu", num_classes=10, classes=[f"c{i}" for i in range(10)],
                     preprocess=Preprocess.for_size(32, CIFAR10_MEAN, CIFAR10_STD))
    fp32, int8 = tmp_path / "silu.onnx", tmp_path / "silu.int8.onnx"
    export_onnx(_SiluNet().eval(), card, fp32, sample=images[:4], exporter="torchscript")
    quantize_int8(fp32, int8, images, progress=False)
    form, record = cpu_form(str(int8), "silu")
    assert record["graph"] == "cpu rewrite" and record["signed_uint8_pairs"] > 0
    assert record["uint8_pairs"] == 0 and "zero point 128" in record["why"]
    # QDQ semantics: the same numbers exactly. ORT's fused kernels then requantize in integer
    # arithmetic where the file's int8 graph ran float ops: within rounding of each other.
    file_out = _session(int8.read_bytes()).run(None, {"input": images})[0]
    np.testing.assert_array_equal(_session(form).run(None, {"input": images})[0], file_out)
    fused = _session(form, optimize=True).run(None, {"input": images})[0]
    np.testing.assert_allclose(fused, file_out, atol=0.02 * np.abs(file_out).max())
    _session(form, optimize=True, save=tmp_path / "opt.onnx")
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["QLinearConv"] == 2
