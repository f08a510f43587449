"""port.models.onnx_signature: what an ONNX graph says about its image input and class output.

Every graph is built here with onnx.helper in the form another exporter writes (NHWC, one
channel, a fixed batch, float64, IR 3 initializers listed as inputs, an [N, C, 1, 1] softmax
head, QDQ, FP16 weights), and each refusal is checked for the value it names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from port.data.preprocess import Preprocess
from port.ground.errors import ModelError, UsageError
from port.models.card import ModelCard
from port.models.onnx_signature import apply_signature, read_signature
from tests.onnx_graphs import graph_model


def test_porter_like_nchw_dynamic_batch() -> None:
    sig = read_signature(graph_model(["batch", 3, 32, 32], ["batch", 10]))
    assert (sig.input_name, sig.layout, sig.channels, sig.batch) == ("image", "NCHW", 3, None)
    assert (sig.height, sig.width, sig.image_size, sig.rank) == (32, 32, 32, 4)
    assert (sig.input_dtype, sig.output_name, sig.output_layout) == ("float32", "logits", "NC")
    assert (sig.num_classes, sig.output_softmax, sig.precision, sig.opset) == (10, False,
                                                                                "fp32", 17)
    assert "NCHW, 3 channels, any batch, 32x32, float32" in sig.describe()


def test_nhwc_one_channel_fixed_batch_float64() -> None:
    sig = read_signature(graph_model([1, 28, 28, 1], [1, 10], layout="NHWC",
                                     elem=TensorProto.DOUBLE))
    assert (sig.layout, sig.channels, sig.batch, sig.image_size) == ("NHWC", 1, 1, 28)
    assert sig.input_dtype == "float64"


def test_symbolic_size_and_float16_input() -> None:
    sig = read_signature(graph_model(["n", 3, "h", "w"], ["n", 10], elem=TensorProto.FLOAT16))
    assert (sig.height, sig.width, sig.image_size, sig.input_dtype) == (None, None, None,
                                                                        "float16")
    assert "any size" in sig.describe()


def test_ir3_initializers_listed_as_inputs_are_not_inputs() -> None:
    model = graph_model(["n", 3, 32, 32], ["n", 10], init_as_input=True)
    model.ir_version = 3
    assert len(model.graph.input) == 2
    assert read_signature(model).input_name == "image"


def test_nc11_softmax_head_through_identity() -> None:
    sig = read_signature(graph_model(["n", 3, 32, 32], ["n", 1000, 1, 1], head="softmax",
                                     classes=1000))
    assert (sig.output_layout, sig.num_classes, sig.output_softmax) == ("NC11", 1000, True)
    plain = read_signature(graph_model(["n", 3, 32, 32], ["n", 10, 1, 1], head="nc11"))
    assert (plain.output_layout, plain.output_softmax) == ("NC11", False)


def test_undeclared_output_shape_is_inferred() -> None:
    sig = read_signature(graph_model(["n", 3, 32, 32], None))
    assert (sig.output_layout, sig.num_classes) == ("NC", 10)


@pytest.mark.parametrize(("kwargs", "precision"), [
    ({}, "fp32"), ({"qdq": True}, "int8"), ({"weight_dtype": np.float16}, "fp16")])
def test_precision_from_the_graph(kwargs: dict, precision: str) -> None:
    assert read_signature(graph_model(["n", 3, 32, 32], ["n", 10], **kwargs)).precision == \
        precision


def test_read_from_a_path_without_loading_external_data(tmp_path: Path) -> None:
    model = graph_model(["n", 3, 32, 32], None, classes=64)  # inferred from the weight dims
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="m.onnx.data",
              size_threshold=0)
    (tmp_path / "m.onnx.data").unlink()  # the graph alone says the signature
    assert read_signature(path).num_classes == 64


def test_layout_flag_decides_ambiguous_and_must_agree() -> None:
    ambiguous = graph_model(["n", 3, 8, 3], ["n", 10])
    with pytest.raises(UsageError, match="could be NCHW or NHWC: pass --layout"):
        read_signature(ambiguous)
    sig = read_signature(ambiguous, layout="NHWC")
    assert (sig.layout, sig.layout_from_flag, sig.height, sig.width) == ("NHWC", True, 3, 8)
    with pytest.raises(UsageError, match=r"--layout NHWC contradicts .* is NCHW"):
        read_signature(graph_model(["n", 3, 32, 32], ["n", 10]), layout="NHWC")


@pytest.mark.parametrize(("model", "fragments"), [
    (graph_model(["n", 4, 32, 32], ["n", 10]), ["takes 4 channels (NCHW)", "1 (grayscale)"]),
    (graph_model(["n", 32, 32, 2], ["n", 10], layout="NHWC"), ["takes 2 channels (NHWC)"]),
    (graph_model(["n", "c", "h", "w"], ["n", 10]), ["no fixed channel axis of 1 or 3"]),
    (graph_model(["n", 3, 32, 32], ["n", 10], extra_inputs=1), ["has 2 inputs", "'aux0'"]),
    (graph_model(["n", 3, 32, 32], ["n", 10], elem=TensorProto.UINT8), ["is uint8"]),
    (graph_model(["n", 3, 32, 32], ["n", 10, 4, 4]), ["[n, 10, 4, 4], a feature map"]),
    (graph_model(["n", 3, 32, 32], ["n"]), ["is [n], which has no class axis"]),
])
def test_refusals_name_what_the_model_wants(model: onnx.ModelProto, fragments: list) -> None:
    with pytest.raises(ModelError) as err:
        read_signature(model)
    for fragment in fragments:
        assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_wrong_rank_and_no_image_input() -> None:
    flat = graph_model(["n", 3, 32, 32], ["n", 10])
    flat.graph.input[0].type.tensor_type.shape.dim.pop()
    with pytest.raises(ModelError, match=r"rank 3 \[n, 3, 32\]; porter feeds image batches"):
        read_signature(flat)
    weights_only = graph_model(["n", 3, 32, 32], ["n", 10], init_as_input=True)
    weights_only.graph.input.pop(0)
    with pytest.raises(ModelError, match="has no image input"):
        read_signature(weights_only)


def test_apply_signature_fills_the_card() -> None:
    card = ModelCard(arch="external-onnx", num_classes=10, classes=[str(i) for i in range(10)],
                     preprocess=Preprocess.for_size(224, (0.5,), (0.25,)))
    sig = read_signature(graph_model([1, 28, 28, 1], [1, 10, 1, 1], layout="NHWC",
                                     head="softmax", elem=TensorProto.DOUBLE))
    filled = apply_signature(card, sig)
    assert (filled.channels, filled.batch, filled.input_dtype) == (1, 1, "float64")
    assert (filled.output_layout, filled.output_softmax) == ("NC11", True)
    assert (filled.preprocess.layout, filled.preprocess.image_size, filled.preprocess.resize,
            filled.preprocess.crop) == ("NHWC", 28, 28, 28)
    assert filled.preprocess.mean == (0.5,) and filled.input_shape == (1, 28, 28)
    assert (filled.input_name, filled.output_name) == ("image", "logits")
