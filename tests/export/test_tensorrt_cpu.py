"""The TensorRT builder where no TensorRT/GPU is needed: ONNX precision detection, the INT8
quantizer choice, and clear refusals on a machine without TensorRT (the runner's are in
tests/engines)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from port.data.preprocess import CIFAR10_MEAN, CIFAR10_STD, Preprocess
from port.export.tensorrt import (
    QuantizerChoice,
    build_engine,
    choose_quantizer,
    installed_trt_major,
    onnx_precision,
    quantize_with_modelopt,
)
from port.export.trt_calibrator import calibration_batches
from port.export.trt_options import TrtBuildOptions
from port.ground.errors import BackendUnavailable, DataError, ModelError
from port.models.card import ModelCard

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
no_trt_only = pytest.mark.skipif(HAVE_TRT, reason="this machine has TensorRT")


def _card() -> ModelCard:
    return ModelCard(arch="tiny", num_classes=4, classes=list("abcd"),
                     preprocess=Preprocess.for_size(8, CIFAR10_MEAN, CIFAR10_STD))


def _save(nodes: list, inits: list, path: Path, value_info: list | None = None) -> Path:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        initializer=inits, value_info=value_info or [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def fp32_onnx(tmp_path: Path) -> Path:
    scale = numpy_helper.from_array(np.full((1,), 2.0, np.float32), "scale")
    return _save([helper.make_node("Mul", ["input", "scale"], ["logits"])], [scale],
                 tmp_path / "fp32.onnx")


@pytest.fixture()
def fp16_onnx(tmp_path: Path) -> Path:
    """FP16 graph with FP32 I/O, the shape of porter's FP16 export."""
    scale = numpy_helper.from_array(np.full((1,), 2.0, np.float16), "scale")
    nodes = [
        helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("Mul", ["x16", "scale"], ["y16"]),
        helper.make_node("Cast", ["y16"], ["logits"], to=TensorProto.FLOAT),
    ]
    return _save(nodes, [scale], tmp_path / "fp16.onnx")


@pytest.fixture()
def qdq_onnx(tmp_path: Path) -> Path:
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["logits"]),
    ]
    return _save(nodes, inits, tmp_path / "int8.onnx")


def test_onnx_precision_reads_what_the_graph_carries(fp32_onnx: Path, fp16_onnx: Path,
                                                     qdq_onnx: Path) -> None:
    assert onnx_precision(fp32_onnx) == "fp32"
    assert onnx_precision(fp16_onnx) == "fp16"
    assert onnx_precision(qdq_onnx) == "int8"


def test_onnx_precision_refuses_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        onnx_precision(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01not a protobuf\xff" * 10)
    with pytest.raises(ModelError, match="not a readable ONNX file"):
        onnx_precision(junk)


def test_quantizer_choice_prefers_modelopt_and_says_why() -> None:
    for method in ("entropy", "minmax"):
        choice = choose_quantizer(method, have_modelopt=True)
        assert choice == QuantizerChoice(
            name="modelopt", why="modelopt places Q/DQ nodes where TensorRT fuses them"
        )
    choice = choose_quantizer("percentile", have_modelopt=True)
    assert choice.name == "onnxruntime" and "no 'percentile' calibration" in choice.why
    choice = choose_quantizer("entropy", have_modelopt=False)
    assert choice.name == "onnxruntime" and "not installed" in choice.why


def test_quantizer_choice_probes_this_machine_when_not_told() -> None:
    have = importlib.util.find_spec("modelopt") is not None
    assert choose_quantizer("minmax") == choose_quantizer("minmax", have_modelopt=have)


@pytest.mark.skipif(importlib.util.find_spec("modelopt") is not None,
                    reason="modelopt is installed: it would quantize")
def test_modelopt_quantizer_without_modelopt_is_backend_unavailable(fp32_onnx: Path,
                                                                    tmp_path: Path) -> None:
    images = np.zeros((4, 3, 8, 8), np.float32)
    with pytest.raises(BackendUnavailable, match=r"nvidia-modelopt\[onnx\]"):
        quantize_with_modelopt(fp32_onnx, tmp_path / "q.onnx", images, method="minmax")
    assert not (tmp_path / "q.onnx").exists()


def test_calibration_batches_drop_the_partial_batch() -> None:
    assert calibration_batches(np.zeros((70, 3, 8, 8), np.float32), 32) == 2
    with pytest.raises(DataError, match="do not fill one batch of 32"):
        calibration_batches(np.zeros((10, 3, 8, 8), np.float32), 32)


def test_a_missing_onnx_is_refused_before_tensorrt_is_needed(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        build_engine(tmp_path / "nope.onnx", tmp_path / "m.engine", TrtBuildOptions(), _card())
    assert not list(tmp_path.glob("m.engine*"))


@no_trt_only
def test_build_without_tensorrt_exits_with_one_line_naming_it(fp16_onnx: Path,
                                                               tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable) as info:
        build_engine(fp16_onnx, tmp_path / "m.engine", TrtBuildOptions(), _card())
    assert str(info.value) == (
        "TensorRT is not installed: install the GPU extra (see README) or export --to onnx"
    )
    assert not list(tmp_path.glob("m.engine*"))
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        installed_trt_major()
