"""Which layers of a converted (FP16 or INT8) graph add the most error, measured on real images.

The FP32 graph and the converted graph run side by side on the same images with their
intermediate tensors exposed (``port.engines.activations.IntermediateRunner``: ORT CPU, fusions
off). Both converters keep the FP32 graph's node names and, for most tensors, its tensor names
(``quantize_static`` inserts Q/DQ pairs beside the original tensors; the FP16 converter inserts
Casts at the graph's edges), so each layer of the FP32 graph is found again in the converted one.

For each candidate layer the measure is the error it *adds*: the relative error of what its
consumers read (its output, after the Q/DQ pair or Cast that follows it) minus the largest
relative error of its activation inputs (before their Q/DQ pair, so the input quantization that
keeping the layer in FP32 removes counts as the layer's own). Relative error is
``||converted - fp32|| / ||fp32||`` over all images, one number per tensor. One pass of each
graph ranks every layer; the brute-force alternative (convert once per layer with only that layer
kept in FP32, re-measure the logits) costs one conversion per layer and is what
``bench/autofix_sensitivity.py`` compares this ranking against.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

# Layers whose FP32 copy changes what INT8 computes: ONNX Runtime's QDQ quantizer quantizes the
# inputs and weights of these (the rest follow their neighbours' Q/DQ pairs).
INT8_CANDIDATE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops that compute nothing FP16 can round differently from its input (or no float at all):
# keeping them in FP32 cannot help, so they are never FP16 candidates.
FP16_EXACT_OPS = frozenset({
    "Cast", "Identity", "Constant", "Shape", "Reshape", "Flatten", "Transpose", "Squeeze",
    "Unsqueeze", "Concat", "Split", "Slice", "Gather", "Relu", "MaxPool", "Pad", "Expand",
    "QuantizeLinear", "DequantizeLinear",
})
# The ops that follow a layer's output in a converted graph and are part of that layer's cost.
_FOLLOWERS = ("QuantizeLinear", "DequantizeLinear", "Cast")


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer's contribution to the error of a converted graph."""

    node: str  # node name (shared by the FP32 and the converted graph)
    op_type: str
    output_error: float  # relative error of what the layer's consumers read
    input_error: float  # largest relative error of its activation inputs
    added: float  # output_error - input_error: what keeping this layer in FP32 can remove

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (rounded; an overflow's infinite error as the string "inf", which
        strict JSON readers accept) for the manifest."""

        def number(v: Any) -> Any:
            if not isinstance(v, float):
                return v
            return round(v, 6) if np.isfinite(v) else str(v)

        return {k: number(v) for k, v in asdict(self).items()}


def candidate_nodes(model: onnx.ModelProto, precision: str,
                    exclude: Iterable[str] = ()) -> list[str]:
    """Nodes of the FP32 graph that can be kept in FP32 to help ``precision``, in graph order.

    INT8: the quantized compute layers (Conv, ConvTranspose, Gemm, MatMul). FP16: every named node
    that computes floats FP16 can round (not casts, reshapes, ReLU or max-pooling).
    ``exclude`` (already kept) is left out.
    """
    skip = set(exclude)
    if precision == "int8":
        return [n.name for n in model.graph.node
                if n.name and n.name not in skip and n.op_type in INT8_CANDIDATE_OPS]
    if precision == "fp16":
        return [n.name for n in model.graph.node
                if n.name and n.name not in skip and n.op_type not in FP16_EXACT_OPS]
    raise ValueError(f"no FP32 fallback candidates for precision {precision!r}")


# Ops that pass a tensor on without weights: ONNX Runtime's QDQ quantizer gives their output the
# Q/DQ pair of their input, so a layer reads FP32 input only when these in front of it stay FP32.
PASS_THROUGH_OPS = frozenset({
    "Relu", "Clip", "LeakyRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten",
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity",
})


def fp32_unit(model: onnx.ModelProto, node_name: str, precision: str) -> list[str]:
    """The nodes to keep in FP32 so that layer ``node_name`` computes in FP32, in graph order.

    FP16: the node itself. INT8: the node plus the chain of pass-through ops (ReLU, pooling,
    reshapes) that feed only it: ONNX Runtime's ``nodes_to_exclude`` leaves a layer's weights and
    output FP32 but still quantizes its input when the op in front of it is quantized, so
    without the chain the "FP32" layer would read INT8 activations.
    """
    if precision != "int8":
        return [node_name]
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers = _consumers(model)
    by_name = {n.name: n for n in model.graph.node if n.name}
    unit = [node_name]
    frontier = [t for t in by_name[node_name].input if t in producer]
    while frontier:
        tensor = frontier.pop()
        up = producer[tensor]
        if (up.op_type in PASS_THROUGH_OPS and up.name and up.name not in unit
                and len(consumers.get(tensor, [])) == 1):
            unit.append(up.name)
            frontier.extend(t for t in up.input if t in producer)
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    return sorted(unit, key=order.__getitem__)


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _read_side(model: onnx.ModelProto, tensor: str,
               consumers: dict[str, list[onnx.NodeProto]]) -> str:
    """The tensor the next layer reads in place of ``tensor``: past a Q->DQ pair or a Cast.

    Followed only while the chain is unique (one consumer of each link), so the tensor named is
    what every reader of ``tensor`` sees.
    """
    seen = {tensor}
    while True:
        users = consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type not in _FOLLOWERS or not users[0].output:
            return tensor
        nxt = users[0].output[0]
        if nxt in seen:
            return tensor
        seen.add(nxt)
        tensor = nxt


@dataclass(frozen=True)
class _Probe:
    node: str
    op_type: str
    ref_out: str  # FP32 graph tensor
    conv_out: str  # converted graph tensor compared with it
    inputs: tuple[tuple[str, str], ...]  # (FP32 tensor, converted tensor) activation inputs


def _probes(fp32: onnx.ModelProto, converted: onnx.ModelProto, candidates: Sequence[str],
            precision: str) -> list[_Probe]:
    """Pair each candidate's output and its FP32 unit's activation inputs across the graphs."""
    ref_nodes = {n.name: n for n in fp32.graph.node if n.name}
    conv_nodes = {n.name: n for n in converted.graph.node if n.name}
    initializers = {t.name for t in fp32.graph.initializer}
    graph_inputs = {i.name for i in fp32.graph.input}
    conv_tensors = {o for n in converted.graph.node for o in n.output}
    consumers = _consumers(converted)
    probes = []
    for name in candidates:
        ref, conv = ref_nodes.get(name), conv_nodes.get(name)
        if ref is None or conv is None or not ref.output or not conv.output:
            continue  # the converter rewrote this node away: nothing to measure or to keep
        unit = [ref_nodes[n] for n in fp32_unit(fp32, name, precision)]
        made = {o for n in unit for o in n.output}
        inputs = tuple((t, t) for n in unit for t in n.input
                       if t and t not in made and t not in initializers and t not in graph_inputs
                       and t in conv_tensors)
        probes.append(_Probe(name, ref.op_type, ref.output[0],
                             _read_side(converted, conv.output[0], consumers), inputs))
    return probes


def rank_layers(fp32_onnx: Path, converted_onnx: Path, images: np.ndarray,
                candidates: Sequence[str], precision: str, *,
                batch_size: int = 16) -> list[LayerSensitivity]:
    """Rank ``candidates`` by the error each adds in ``converted_onnx``, worst first.

    A layer's inputs are those of its FP32 unit (:func:`fp32_unit`): keeping the unit in FP32
    removes the quantization of what enters it, which is the layer's to claim.

    ``images`` are real preprocessed images (float32 NCHW, the graph's input). Candidates the
    converted graph no longer has (rewritten away) are left out. A graph input has no error
    (both graphs read the same float32 images).
    """
    from port.engines.activations import IntermediateRunner

    fp32 = onnx.load(str(fp32_onnx))
    converted = onnx.load(str(converted_onnx))
    probes = _probes(fp32, converted, candidates, precision)
    pairs = {(p.ref_out, p.conv_out) for p in probes} | {pair for p in probes for pair in p.inputs}
    ref_runner = IntermediateRunner(fp32, sorted({r for r, _ in pairs}),
                                    what="the FP32 graph (sensitivity)")
    conv_runner = IntermediateRunner(converted, sorted({c for _, c in pairs}),
                                     what="the converted graph (sensitivity)")
    diff = dict.fromkeys(pairs, 0.0)
    norm = dict.fromkeys(pairs, 0.0)
    # Fed in the graph's own form (layout, dtype, fixed batch: port.engines.adapter).
    from port.engines.adapter import GraphIO

    io = GraphIO.for_onnx(fp32)
    batches = ((ref_runner.run({io.input_name: b}), conv_runner.run({io.input_name: b}))
               for b in io.graph_batches(images, batch_size))
    for ref_out, conv_out in batches:
        for r, c in pairs:
            if r not in ref_out or c not in conv_out:
                continue
            a, b = ref_out[r], conv_out[c]
            if a.shape != b.shape:
                continue  # not the same tensor after all: leave it unmeasured (error 0)
            d = b.astype(np.float64) - a
            # inf/nan (an FP16 overflow) counts as the largest error there is.
            diff[(r, c)] += float(np.sum(d * d)) if np.all(np.isfinite(d)) else float("inf")
            norm[(r, c)] += float(np.sum(a.astype(np.float64) ** 2))

    def rel(pair: tuple[str, str]) -> float:
        if diff[pair] == float("inf"):
            return float("inf")
        return float(np.sqrt(diff[pair] / norm[pair])) if norm[pair] > 0 else 0.0

    ranked = []
    for p in probes:
        out_err = rel((p.ref_out, p.conv_out))
        in_err = max((rel(pair) for pair in p.inputs), default=0.0)
        if np.isfinite(out_err):
            added = out_err - in_err if np.isfinite(in_err) else 0.0
        else:  # an overflow starts here (inf) or was inherited from an input (nothing added)
            added = float("inf") if np.isfinite(in_err) else 0.0
        ranked.append(LayerSensitivity(p.node, p.op_type, out_err, in_err, float(added)))
    return sorted(ranked, key=lambda s: s.added, reverse=True)
