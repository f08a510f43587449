"""Which ONNX tensor holds which PyTorch module's output, read from the exporter's node metadata.

torch's dynamo exporter writes ``pkg.torch.onnx.name_scopes`` on every node it emits: the module
paths from the root to the innermost module that ran the op, then the op's own name, e.g.
``['', 'layer1', 'layer1.0', 'layer1.0.1', '_native_batch_norm_legit_no_training_1']``. A
module's *output* is then a tensor produced inside its scope and read outside it (or a graph
output). This survives the exporter's own rewrites: a Conv with its BatchNorm folded in carries
the BatchNorm's scope, so its output is the BatchNorm module's output, and the Conv module is left
with no tensor (it is reported as folded into the next row, never dropped).

FP16 and INT8 graphs made from that export keep the node metadata and the float tensor names;
the nodes they add (Cast, QuantizeLinear, DequantizeLinear) carry none. Those are treated as
*adapters*, transparent for scopes, and a module's compared tensor is the one its readers
actually see after them: for INT8 the DequantizeLinear output after the layer's QuantizeLinear
(so a row includes the activation's quantization error), for FP16 the tensor after a graph-output
Cast. ``source_tensor`` keeps the name of the node's own output.

Graphs without that metadata (torchscript exports, models made elsewhere) get no module paths:
each float node output is its own key (its tensor name), which is how an imported ONNX is
compared with its own FP16/INT8 conversions (converters keep tensor names).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass, field

import onnx

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
ROOT = "(model)"  # the model itself (torch's empty module path): its output is the logits
ADAPTER_OPS = frozenset({"Cast", "QuantizeLinear", "DequantizeLinear"})


@dataclass(frozen=True)
class ModuleTensor:
    """One module output in a graph: the tensor to compare and the node that computed it."""

    key: str  # module path (``#k`` added for the k-th call of a module run more than once)
    tensor: str  # what the module's readers see (after Q/DQ or Cast adapters)
    source_tensor: str  # the output of the node inside the module's scope
    node: str
    op_type: str
    order: int  # position of ``source_tensor``'s node in the graph


@dataclass
class ModuleMap:
    """Module outputs of one graph, in graph order, and the float tensors that are none."""

    outputs: list[ModuleTensor] = field(default_factory=list)
    unmatched: list[dict[str, str]] = field(default_factory=list)  # {"tensor", "reason"}
    has_metadata: bool = False

    def by_key(self) -> dict[str, ModuleTensor]:
        """``{key: ModuleTensor}``."""
        return {m.key: m for m in self.outputs}


def node_scopes(node: onnx.NodeProto) -> list[str] | None:
    """The module paths enclosing ``node`` (root first, ``''`` = root), or None without metadata."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            if isinstance(scopes, list) and len(scopes) >= 2 and all(
                    isinstance(s, str) for s in scopes):
                return scopes[:-1]  # the last entry is the op's own (fx node) name
            return None
    return None


def module_key(path: str, call: int, calls: int) -> str:
    """The key of one call of a module: its path, ``#k`` added when it ran ``calls`` > 1 times."""
    name = path or ROOT
    return name if calls <= 1 else f"{name}#{call}"


class _Graph:
    """Producers and readers of the main graph's tensors."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.nodes = list(model.graph.node)
        self.readers: dict[str, list[int]] = defaultdict(list)
        self.producer: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for name in node.input:
                if name:
                    self.readers[name].append(i)
            for name in node.output:
                if name:
                    self.producer[name] = i
        self.graph_outputs = {o.name for o in model.graph.output}
        self.scopes = [node_scopes(n) for n in self.nodes]

    def is_adapter(self, i: int) -> bool:
        return self.scopes[i] is None and self.nodes[i].op_type in ADAPTER_OPS

    def seen_as(self, tensor: str) -> str:
        """The tensor readers see: followed through a chain of single-reader adapters."""
        current, hops = tensor, 0
        while hops < 4:  # Q -> DQ, or one Cast: a longer chain is not an adapter pattern
            readers = self.readers.get(current, [])
            if not readers or current in self.graph_outputs:
                return current
            adapters = [i for i in readers if self.is_adapter(i)]
            if len(adapters) != len(readers):
                return current  # some reader takes the tensor itself
            nexts = {self.nodes[i].output[0] for i in adapters}
            if self.nodes[adapters[0]].op_type == "QuantizeLinear":
                # Q's readers are the DQ copies (ORT may make one per consumer): all equal.
                q_out = self.nodes[adapters[0]].output[0]
                dqs = [i for i in self.readers.get(q_out, []) if self.is_adapter(i)]
                if not dqs:
                    return current
                current = self.nodes[dqs[0]].output[0]
                hops += 2
                continue
            if len(nexts) != 1:
                return current
            current = nexts.pop()
            hops += 1
        return current

    def effective_readers(self, tensor: str) -> list[int]:
        """Nodes (with scopes) that read ``tensor``, looking through adapters."""
        found: list[int] = []
        stack, seen = [tensor], set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            for i in self.readers.get(name, []):
                if self.is_adapter(i):
                    stack.extend(o for o in self.nodes[i].output if o)
                else:
                    found.append(i)
        return found

    def reaches_output(self, tensor: str) -> bool:
        """Whether ``tensor`` is a graph output, directly or through adapters."""
        stack, seen = [tensor], set()
        while stack:
            name = stack.pop()
            if name in self.graph_outputs:
                return True
            if name in seen:
                continue
            seen.add(name)
            for i in self.readers.get(name, []):
                if self.is_adapter(i):
                    stack.extend(o for o in self.nodes[i].output if o)
        return False


def map_modules(model: onnx.ModelProto, float_names: set[str] | None = None) -> ModuleMap:
    """The module outputs of ``model`` (see the module docstring) and every unmatched float tensor.

    ``float_names`` are the graph's float node outputs (``activations.float_tensors``); when
    given, each one that is no module's output is listed in ``unmatched`` with the reason.
    """
    g = _Graph(model)
    result = ModuleMap(has_metadata=any(s is not None for s in g.scopes))
    if not result.has_metadata:
        return _by_tensor_name(g, float_names)

    # Tensors produced in each module's scope (graph order), then those read outside it.
    produced: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for i, node in enumerate(g.nodes):
        scopes = g.scopes[i]
        if scopes is None:
            continue
        for name in node.output:
            if name:
                for path in scopes:
                    produced[path].append((i, name))
    found: list[tuple[int, str, str]] = []  # (order, path, tensor)
    for path, tensors in produced.items():
        for i, name in tensors:
            outside = any(path not in (g.scopes[r] or []) for r in g.effective_readers(name))
            if outside or g.reaches_output(name):
                found.append((i, path, name))
    calls: dict[str, int] = defaultdict(int)
    for _, path, _ in found:
        calls[path] += 1
    seen_call: dict[str, int] = defaultdict(int)
    used: set[str] = set()
    for i, path, name in sorted(found):
        seen_call[path] += 1
        node = g.nodes[i]
        seen = g.seen_as(name)
        result.outputs.append(ModuleTensor(
            key=module_key(path, seen_call[path], calls[path]), tensor=seen,
            source_tensor=name, node=node.name, op_type=node.op_type, order=i))
        used.update({seen, name})
    # Within one scope outputs come in graph order; across nested scopes the inner one first
    # (as forward hooks fire), which sorting by (node order, depth) gives.
    result.outputs.sort(key=lambda m: (m.order, -_depth(m.key)))
    if float_names is not None:
        for name in sorted(float_names - used, key=lambda n: g.producer.get(n, -1)):
            result.unmatched.append({"tensor": name, "reason": _why_unmatched(g, name)})
    return result


def _depth(key: str) -> int:
    path = key.split("#")[0]
    return -1 if path == ROOT else path.count(".")


def _why_unmatched(g: _Graph, name: str) -> str:
    """Why a float tensor is no module's output (for the report's list)."""
    i = g.producer.get(name)
    if i is None:
        return "not produced by a node"
    node = g.nodes[i]
    if g.scopes[i] is None:
        if node.op_type == "DequantizeLinear" and node.input[0] not in g.producer:
            return "dequantized constant (weights, biases)"
        if node.op_type in ADAPTER_OPS:
            return f"{node.op_type} inserted by the FP16/INT8 conversion (no module scope)"
        return f"{node.op_type} node without module metadata"
    scopes = g.scopes[i] or [""]
    return f"internal to module {scopes[-1] or ROOT} (not read outside it)"


def _by_tensor_name(g: _Graph, float_names: set[str] | None) -> ModuleMap:
    """Without module metadata every float node output is its own key."""
    result = ModuleMap(has_metadata=False)
    names = float_names if float_names is not None else {
        o for n in g.nodes for o in n.output if o}
    used: set[str] = set()
    for i, node in enumerate(g.nodes):
        if g.is_adapter(i):  # Cast/Q/DQ: their output is compared as the tensor before them
            continue
        for name in node.output:
            if name in names:
                seen = g.seen_as(name)
                result.outputs.append(ModuleTensor(key=name, tensor=seen, source_tensor=name,
                                                   node=node.name, op_type=node.op_type,
                                                   order=i))
                used.update({name, seen})
    if float_names is not None:
        for name in sorted(float_names - used, key=lambda n: g.producer.get(n, -1)):
            result.unmatched.append({"tensor": name, "reason": _why_unmatched(g, name)})
    return result
