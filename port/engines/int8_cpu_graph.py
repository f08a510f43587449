"""The CPU form of porter's symmetric INT8 graph: every activation Q/DQ pair as uint8.

Why: porter's INT8 file is the graph TensorRT builds (symmetric int8 activations, zero point 0,
one Q/DQ pair per consumer). ONNX Runtime's CPU provider folds a ReLU into the quantization only
when the zero point is the type's minimum (``ReluQuantFusion``: uint8 with zero point 0), and it
fuses DQ->Add->Q / DQ->Conv->Q only where a tensor has one QuantizeLinear. So the symmetric graph
keeps float ReLUs between dequantize and quantize steps and runs barely faster than FP32 on CPUs
without VNNI (issue 11). This module rewrites the graph, in memory, into the form those fusions
need, with the same calibration and the same scales:

- every QuantizeLinear of a tensor known to be >= 0 (the output of a ReLU, or of a max/average
  pool, flatten or reshape of such a tensor) becomes uint8 with zero point 0, its
  DequantizeLinear nodes likewise;
- every other symmetric QuantizeLinear (a tensor that may be negative) becomes uint8 with zero
  point 128: the same grid, value for value, so ORT's uint8 kernels run nets without ReLUs
  (EfficientNet, MobileNetV3) instead of their slower int8 path;
- the dedicated pairs of a tensor (one per consumer, identical scale) merge into one pair.

What stays the same, and what does not (``tests/engines/test_int8_cpu_graph.py`` checks both on
every representable value): for x >= 0 the int8 grid with zero point 0 and the uint8 grid with
zero point 0 round identically (``round(x / s)``, half to even, both >= 0), so every value in
[0, 127.5 s) dequantizes to the same number. They differ only above the int8 range: symmetric
int8 saturates at 127 s, uint8 at 255 s, so an activation beyond its calibrated range keeps up to
twice that range instead of being clipped. That only happens on inputs whose activations exceed
what calibration saw; ``porter evaluate`` records the rewrite in the row so the figure is
attributable. The file on disk is not touched: TensorRT still builds the symmetric graph.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import numpy as np

# Ops whose output is >= 0 whenever their (first) input is: a max or mean of non-negative values,
# or the same values rearranged.
_KEEPS_SIGN = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                         "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity"})


@dataclass(frozen=True)
class CpuGraph:
    """What :func:`rewrite_for_cpu` changed (goes into the evaluate row's ``int8_cpu``)."""

    rewritten_pairs: int  # QuantizeLinear nodes turned from int8 to uint8 (zero point 0)
    merged_pairs: int  # dedicated Q/DQ pairs removed by merging pairs of the same tensor
    removed_relus: int  # Q(s) -> DQ -> Relu -> Q(s) chains that became one uint8 Q (identity)
    seconds: float  # time the rewrite took (it happens when the session is created)
    # QuantizeLinear nodes of tensors of either sign turned into uint8 with zero point 128 (the
    # same grid, value for value)
    signed_pairs: int = 0

    @property
    def changed(self) -> bool:
        """Whether the graph differs from the file."""
        return bool(self.rewritten_pairs or self.signed_pairs)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for report.json."""
        return {"graph": "cpu rewrite" if self.changed else "as exported",
                "uint8_pairs": self.rewritten_pairs, "signed_uint8_pairs": self.signed_pairs,
                "merged_pairs": self.merged_pairs, "removed_relus": self.removed_relus,
                "rewrite_seconds": round(self.seconds, 3)}


def _scalar_zero_int8(tensor: Any) -> bool:
    from onnx import TensorProto, numpy_helper

    return (tensor is not None and tensor.data_type == TensorProto.INT8
            and not numpy_helper.to_array(tensor).any())


def rewrite_for_cpu(model: Any) -> CpuGraph:
    """Rewrite ``model`` (an ``onnx.ModelProto``, changed in place) into its ORT CPU form.

    Only QuantizeLinear nodes whose zero point is an int8 zero initializer and whose every
    consumer is a DequantizeLinear are touched; anything else (asymmetric graphs, uint8 graphs,
    float graphs) comes back unchanged with zero counts.
    """
    import time

    from onnx import numpy_helper

    t0 = time.perf_counter()
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[Any]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    graph_outputs = {o.name for o in graph.output}

    nonneg: set[str] = set()
    groups: dict[str, list[Any]] = {}  # non-negative tensor -> its rewritable Q nodes
    for node in graph.node:  # ONNX graphs are topologically sorted
        if (node.op_type == "Relu"
                # max/mean/reshape of values >= 0, or the dequantized rewritten (uint8) pair
                or ((node.op_type in _KEEPS_SIGN or node.op_type == "DequantizeLinear")
                and node.input and node.input[0] in nonneg)):
            nonneg.add(node.output[0])
        elif (node.op_type == "QuantizeLinear"
              and (node.input[0] in nonneg or _only_relus_read(node, consumers))
              and len(node.input) > 2 and _scalar_zero_int8(inits.get(node.input[2]))
              and node.output[0] not in graph_outputs
              and consumers[node.output[0]]
              and all(c.op_type == "DequantizeLinear" for c in consumers[node.output[0]])):
            groups.setdefault(node.input[0], []).append(node)
            nonneg.add(node.output[0])
    # Every other symmetric pair (a tensor that may be negative: SiLU, HardSwish, a residual
    # sum) becomes uint8 with zero point 128: the int8 grid with zero point 0 is that grid value
    # for value (u8 = q8 + 128, the same rounding and the same clamp), so this one is exact.
    # ORT's CPU kernels take uint8 activations (u8s8); signed int8 activations ran slower than
    # FP32 on nets without ReLUs (issue 23).
    in_groups = {id(q) for qs in groups.values() for q in qs}
    signed: dict[str, list[Any]] = {}
    for node in graph.node:
        if (node.op_type == "QuantizeLinear" and id(node) not in in_groups
                and len(node.input) > 2 and _scalar_zero_int8(inits.get(node.input[2]))
                and node.output[0] not in graph_outputs and consumers[node.output[0]]
                and all(c.op_type == "DequantizeLinear" for c in consumers[node.output[0]])):
            signed.setdefault(node.input[0], []).append(node)

    rewritten = merged = signed_pairs = 0
    dropped: set[int] = set()
    for tensor, qs, zero in ([(t, qs, 0) for t, qs in groups.items()]
                             + [(t, qs, 128) for t, qs in signed.items()]):
        count = 0  # pairs of this tensor rewritten
        keep = qs[0]
        zp_name = f"{tensor}_zero_point_uint8" + ("_128" if zero else "")
        shape = numpy_helper.to_array(inits[keep.input[2]]).shape
        graph.initializer.append(numpy_helper.from_array(np.full(shape, zero, np.uint8),
                                                         zp_name))
        keep.input[2] = zp_name
        scale = numpy_helper.to_array(inits[keep.input[1]])
        first_dq = consumers[keep.output[0]][0]
        for q in qs[1:]:
            other = numpy_helper.to_array(inits[q.input[1]]) if q.input[1] in inits else None
            if (other is None or other.shape != scale.shape or not np.array_equal(other, scale)
                    or any(dq.output[0] in graph_outputs for dq in consumers[q.output[0]])):
                # A different scale is a different grid: rewrite the pair, keep it separate.
                q.input[2] = zp_name
                for dq in consumers[q.output[0]]:
                    _set_zero_point(dq, zp_name)
                count += 1
                continue
            # Same tensor, same grid: its consumers read the first pair's dequantized output.
            for dq in consumers[q.output[0]]:
                for reader in consumers[dq.output[0]]:
                    for i, name in enumerate(reader.input):
                        if name == dq.output[0]:
                            reader.input[i] = first_dq.output[0]
                dropped.add(id(dq))
            dropped.add(id(q))
            merged += 1
        for dq in consumers[keep.output[0]]:
            _set_zero_point(dq, zp_name)
        count += 1
        # Counted apart: only the zero-point-0 pairs of tensors >= 0 change what saturates.
        if zero:
            signed_pairs += count
        else:
            rewritten += count
    # Shape inference may have typed the quantized tensors int8 (value_info): they are uint8
    # now, so those entries go (ORT refuses a graph whose value_info contradicts a node).
    retyped = {q.output[0] for qs in (*groups.values(), *signed.values()) for q in qs}
    stale = [v for v in graph.value_info if v.name in retyped]
    for v in stale:
        graph.value_info.remove(v)
    uint8_qs = {id(q) for qs in groups.values() for q in qs if id(q) not in dropped}
    collapsed = _collapse_relus(graph, inits, uint8_qs, dropped, graph_outputs)
    if dropped:
        kept = _topological([n for n in graph.node if id(n) not in dropped])
        del graph.node[:]
        graph.node.extend(kept)
        used = {name for n in graph.node for name in n.input}
        live = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(live)
    return CpuGraph(rewritten_pairs=rewritten, merged_pairs=merged, removed_relus=collapsed,
                    seconds=time.perf_counter() - t0, signed_pairs=signed_pairs)


def _collapse_relus(graph: Any, inits: dict[str, Any], uint8_qs: set[int], dropped: set[int],
                    graph_outputs: set[str]) -> int:
    """Remove ``Q1 -> DQ1 -> Relu -> Q2`` where both Qs are now uint8 with zero point 0 and the
    same scale: a value on that grid is already >= 0 and quantizes back to itself, so the chain
    is the identity and Q2's DequantizeLinear nodes may read Q1 directly. Exact, and it spares
    ONNX Runtime a requantization it does not remove by itself after a QLinearAdd."""
    from onnx import numpy_helper

    live = [n for n in graph.node if id(n) not in dropped]
    producer = {out: n for n in live for out in n.output}
    consumers: dict[str, list[Any]] = collections.defaultdict(list)
    for node in live:
        for name in node.input:
            consumers[name].append(node)

    def scale(q: Any) -> Any:
        return numpy_helper.to_array(inits[q.input[1]]) if q.input[1] in inits else None

    removed = 0
    for relu in live:
        if relu.op_type != "Relu" or relu.output[0] in graph_outputs:
            continue
        dq1 = producer.get(relu.input[0])
        q1 = producer.get(dq1.input[0]) if dq1 is not None else None
        q2s = consumers[relu.output[0]]
        if (dq1 is None or dq1.op_type != "DequantizeLinear" or q1 is None
                or id(q1) not in uint8_qs or len(consumers[dq1.output[0]]) != 1
                or dq1.output[0] in graph_outputs or len(q2s) != 1 or id(q2s[0]) not in uint8_qs):
            continue
        q2 = q2s[0]
        s1, s2 = scale(q1), scale(q2)
        if s1 is None or s2 is None or s1.shape != s2.shape or not np.array_equal(s1, s2):
            continue  # two grids: the requantization is real arithmetic, keep it
        for dq2 in consumers[q2.output[0]]:
            dq2.input[0] = q1.output[0]
            dq2.input[1] = q1.input[1]
            _set_zero_point(dq2, q1.input[2])
        dropped.update((id(dq1), id(relu), id(q2)))
        removed += 1
    return removed


def _only_relus_read(q: Any, consumers: dict[str, list[Any]]) -> bool:
    """Whether every value this QuantizeLinear produces goes through a ReLU before anything else
    reads it (Q -> DQ -> Relu): its negative values are then zeroed anyway, so the pair may
    clamp them at quantization instead (uint8, zero point 0), and ONNX Runtime drops the ReLU."""
    dqs = consumers[q.output[0]]
    return bool(dqs) and all(
        dq.op_type == "DequantizeLinear" and consumers[dq.output[0]]
        and all(r.op_type == "Relu" for r in consumers[dq.output[0]]) for dq in dqs)


def _topological(nodes: list[Any]) -> list[Any]:
    """``nodes`` in an order where each comes after the producers of its inputs (stable: the
    original order wherever it already is one; a merged pair's readers may now read a DQ that
    came later)."""
    produced_by = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    order: list[Any] = []
    state = [0] * len(nodes)  # 0 new, 1 on the stack, 2 placed

    def place(i: int) -> None:
        stack = [(i, iter(nodes[i].input))]
        state[i] = 1
        while stack:
            j, inputs = stack[-1]
            for name in inputs:
                k = produced_by.get(name)
                if k is not None and state[k] == 0:
                    state[k] = 1
                    stack.append((k, iter(nodes[k].input)))
                    break
            else:
                stack.pop()
                state[j] = 2
                order.append(nodes[j])

    for i in range(len(nodes)):
        if state[i] == 0:
            place(i)
    return order


def _set_zero_point(dq: Any, zp_name: str) -> None:
    while len(dq.input) < 3:
        dq.input.append("")
    dq.input[2] = zp_name


def cpu_form(model: str | bytes, what: str) -> tuple[str | bytes, dict[str, Any]]:
    """The model to hand ONNX Runtime's CPU provider, and what was done (for the row).

    ``model`` is a path (string) or serialised bytes. The rewritten graph goes to ORT as bytes;
    a graph with nothing to rewrite, or one porter cannot rewrite in memory (weights in external
    files), goes unchanged, and the record says so.
    """
    import onnx

    try:
        proto = onnx.load(model) if isinstance(model, str) else onnx.load_from_string(model)
    except Exception as exc:  # ORT reports an unreadable file with its own, clearer words
        return model, {"graph": "as exported",
                       "why": f"not rewritten: {type(exc).__name__} reading {what}"}
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        return model, {"graph": "as exported",
                       "why": "not rewritten: weights in external data files"}
    done = rewrite_for_cpu(proto)
    record = done.to_dict()
    if not done.changed:
        record["why"] = "no symmetric int8 Q/DQ pair to rewrite"
        return model, record
    parts = []
    if done.rewritten_pairs:
        parts.append(f"{done.rewritten_pairs} Q/DQ pairs of ReLU outputs as uint8 (zero point "
                     f"0, same scales), {done.removed_relus} ReLUs folded into them")
    if done.signed_pairs:
        parts.append(f"{done.signed_pairs} pairs of tensors of either sign as uint8 with zero "
                     "point 128 (the same values)")
    record["why"] = (f"ran the CPU form of the file: {'; '.join(parts)}; the file on disk, "
                     "which TensorRT builds, is unchanged")
    return proto.SerializeToString(), record
