"""Intermediate tensors of an ONNX graph: expose them as outputs and run them in ONNX Runtime.

Layer-by-layer checks (``porter evaluate --layerwise``), sensitivity ranking for the automatic
FP32 fallbacks of FP16/INT8 exports, and the FP16 pre-flight all need the same thing: every
activation a graph computes, on real images, with ONNX Runtime's graph fusions switched off so
that each exposed tensor is the one the node computes (a fused Conv+ReLU would otherwise hide the
Conv's output, and an exposed tensor would block the fusion anyway).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from port.engines.ort_session import create_session

# Element types whose tensors are activations worth comparing (integer tensors are shapes,
# indices and quantized codes; their float meaning lives in the DequantizeLinear after them).
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16)


@dataclass(frozen=True)
class Tensor:
    """One node output of the graph: its name, the node that makes it, its element type."""

    name: str
    node: str  # producing node's name ("" when the exporter left it unnamed)
    op_type: str
    elem_type: int
    order: int  # position of the producing node in the graph (ONNX graphs are topological)


def float_tensors(model: onnx.ModelProto) -> list[Tensor]:
    """Every float node output of the main graph, in execution (graph) order.

    Types come from ONNX shape inference; a tensor whose type cannot be inferred is kept as
    FLOAT when its producer is a float-only op would be a guess, so it is left out.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.output]}
    found = []
    for order, node in enumerate(model.graph.node):
        for name in node.output:
            if name and types.get(name) in FLOAT_TYPES:
                found.append(Tensor(name, node.name, node.op_type, types[name], order))
    return found


def expose(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also include ``names`` (existing outputs kept)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            # No type or shape: ORT takes both from the producing node.
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
            existing.add(name)
    return probe


class IntermediateRunner:
    """Run a graph with chosen intermediate tensors exposed, fusions off, on ORT's CPU provider.

    ``run(feed)`` returns ``{tensor name: float32 array}`` for every watched tensor; FP16/FP64
    tensors are converted to float32 so both sides of a comparison share one type.
    """

    def __init__(self, model: onnx.ModelProto, names: Sequence[str] | None = None, *,
                 what: str = "the graph", elem_types: Iterable[int] = FLOAT_TYPES) -> None:
        """Watch ``names`` (default: every float node output) of the types ``elem_types``."""
        types = set(elem_types)
        self.tensors = [t for t in float_tensors(model) if t.elem_type in types]
        wanted = set(names) if names is not None else None
        if wanted is not None:
            self.tensors = [t for t in self.tensors if t.name in wanted]
        self.names = [t.name for t in self.tensors]
        self.input_names = [i.name for i in model.graph.input
                            if i.name not in {init.name for init in model.graph.initializer}]
        self._session = create_session(expose(model, self.names).SerializeToString(),
                                       what=what, optimize=False)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The watched tensors for one batch."""
        outs = self._session.run(self.names, feed)
        return {name: np.asarray(value, dtype=np.float32)
                for name, value in zip(self.names, outs, strict=True)}

    def batches(self, images: np.ndarray, batch_size: int,
                input_name: str | None = None) -> Iterator[dict[str, np.ndarray]]:
        """:meth:`run` over ``images`` in batches (fed under the graph's first input)."""
        name = input_name or self.input_names[0]
        for start in range(0, len(images), batch_size):
            yield self.run({name: images[start:start + batch_size]})
