"""The TensorRT loaders against real TensorRT (port/engines/trt_loaders.py): composed by hand the
way build_engine composes them, and their refusals. GPU-free parts: tests/engines/."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from port.engines.cuda import CudaContext
from port.engines.trt_loaders import (
    BatchRange,
    CreateConfig,
    EngineBytesFromNetwork,
    EngineFromBytes,
    NetworkFromOnnx,
    ProfileShapes,
    engine_io,
    make_logger,
)
from port.ground.errors import ModelError, UsageError
from tests.gpu.conftest import Trained
from tests.gpu.helpers import trt_major

pytestmark = pytest.mark.gpu


@pytest.fixture()
def logger(tmp_path: Path) -> Iterator[object]:
    """A porter TensorRT logger inside a current CUDA context."""
    with CudaContext(0) as ctx, ctx.active(), contextlib.closing(
        make_logger(tmp_path / "trt.log")
    ) as log:
        yield log


def _onnx(path: Path, batch: int | str, op: str = "Relu", domain: str = "") -> Path:
    graph = helper.make_graph(
        [helper.make_node(op, ["input"], ["out"], domain=domain)], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 3, 8, 8])],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=10), str(path))
    return path


def test_the_loaders_compose_into_an_engine_with_the_profile_asked_for(
    trained: Trained, logger: object
) -> None:
    flags = ("STRONGLY_TYPED",) if trt_major() == 10 else ()
    network = NetworkFromOnnx(path=trained.fp16_onnx, logger=logger, flags=flags,
                              batches=BatchRange(min=2, opt=4, max=8))()
    assert network.input_names == [trained.card.input_name]
    config = CreateConfig(logger=logger, workspace_bytes=1 << 30, builder_opt_level=1)(network)
    built = EngineBytesFromNetwork(network=network, config=config, logger=logger)()
    assert built.data and built.timing_cache["path"] is None
    loaded = EngineFromBytes(data=lambda: built.data, logger=logger)()
    io = engine_io(loaded.engine)
    inputs = [t for t in io if t.is_input]
    assert inputs[0].profile == ProfileShapes(min=(2, 3, 32, 32), opt=(4, 3, 32, 32),
                                              max=(8, 3, 32, 32))
    assert [t.name for t in io if not t.is_input] == [trained.card.output_name]


def test_a_fixed_batch_onnx_needs_a_matching_range(tmp_path: Path, logger: object) -> None:
    path = _onnx(tmp_path / "fixed.onnx", batch=4)
    with pytest.raises(UsageError, match="fixed batch of 4"):
        NetworkFromOnnx(path=path, logger=logger, batches=BatchRange(min=1, opt=2, max=8))()
    network = NetworkFromOnnx(path=path, logger=logger, batches=BatchRange(min=4, opt=4, max=4))()
    assert network.profile["input"].max == (4, 3, 8, 8)


def test_an_operator_tensorrt_cannot_parse_is_a_model_error(tmp_path: Path,
                                                            logger: object) -> None:
    path = _onnx(tmp_path / "custom.onnx", batch="batch", op="NoSuchOp", domain="com.example")
    with pytest.raises(ModelError, match=r"could not parse custom\.onnx.*support matrix"):
        NetworkFromOnnx(path=path, logger=logger, batches=BatchRange(min=1, opt=1, max=1))()


def test_bytes_that_are_not_a_plan_are_a_model_error(logger: object) -> None:
    with pytest.raises(ModelError, match=r"could not load garbage\.engine"):
        EngineFromBytes(data=b"\x00not a plan" * 64, logger=logger, what="garbage.engine")()
