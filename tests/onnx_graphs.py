"""Tiny ONNX classifiers in the forms other exporters write, built with onnx.helper.

Shared by the signature unit tests and the import tests: one builder, one keyword per foreign
form (NHWC, one channel, fixed batch, float16/float64 input, IR 3 initializers listed as inputs,
an [N, C, 1, 1] or softmax head, QDQ, FP16 weights, extra inputs).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F32 = TensorProto.FLOAT


def graph_model(in_shape: list, out_shape: list | None, *, layout: str = "NCHW",
                elem: int = F32, head: str = "gap", init_as_input: bool = False,
                weight_dtype: np.dtype = np.float32, qdq: bool = False, opset: int = 17,
                extra_inputs: int = 0, classes: int = 10) -> onnx.ModelProto:
    """A tiny classifier: (NHWC->NCHW transpose) -> GlobalAveragePool -> 1x1 Conv -> head.

    ``head``: "gap" flattens to [N, C]; "nc11" keeps [N, C, 1, 1]; "softmax" is Softmax over
    the 1x1 map's channels and then Flatten (the softmax seen through Flatten).
    """
    channels = in_shape[1] if layout == "NCHW" else in_shape[3]
    channels = channels if isinstance(channels, int) else 3  # a symbolic axis: any weights
    nodes, inits = [], []
    x = "image"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    if elem != F32:
        nodes.append(helper.make_node("Cast", [x], ["x32"], to=F32))
        x = "x32"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    w = np.random.default_rng(0).standard_normal((classes, channels, 1, 1)).astype(weight_dtype)
    inits.append(numpy_helper.from_array(w, "w"))
    conv_in = "pooled"
    if weight_dtype == np.float16:
        nodes.append(helper.make_node("Cast", ["pooled"], ["pooled16"], to=TensorProto.FLOAT16))
        conv_in = "pooled16"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["pooled", "s", "z"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"])]
        conv_in = "dq"
    nodes.append(helper.make_node("Conv", [conv_in, "w"], ["map"]))
    if head == "gap":
        nodes.append(helper.make_node("Flatten", ["map"], ["logits"]))
    elif head == "nc11":
        nodes.append(helper.make_node("Identity", ["map"], ["logits"]))
    elif head == "softmax":
        nodes.append(helper.make_node("Softmax", ["map"], ["prob"], axis=1))
        nodes.append(helper.make_node("Identity", ["prob"], ["logits"]))
    out_elem = TensorProto.FLOAT16 if weight_dtype == np.float16 else F32
    inputs = [helper.make_tensor_value_info("image", elem, in_shape)]
    inputs += [helper.make_tensor_value_info(f"aux{i}", F32, [1]) for i in range(extra_inputs)]
    if init_as_input:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                   for t in inits]
    outputs = [helper.make_tensor_value_info("logits", out_elem, out_shape)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    # IR 8 (opset 17's): what ONNX Runtime reads; onnx.helper would write its newest IR.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8)
