"""Give a foreign ONNX graph what porter's later stages rely on, without changing what it computes.

Exporters other than porter's leave nodes without names (keras2onnx, some tf2onnx and
hand-built graphs: ``ConstantOfShape``, ``Shape`` and ``Cast`` nodes most often) and a few write
nodes out of topological order, which the ONNX checker refuses. ``--keep-fp32 NODE``, the FP16
pre-flight's suggestions, autofix and layerwise all name nodes, so on import:

- every unnamed node gets a stable name: ``<op_type>_<first output>`` (output names are unique
  in an ONNX graph, so the same file always gets the same names and the name says which tensor
  the node makes), made unique with a counter only if a node already has that name;
- nodes are sorted topologically where they are not, keeping the file's own order wherever it
  is already valid (Kahn's algorithm, always taking the earliest ready node), so a sorted graph
  is left exactly as it is.

Subgraphs (``If``/``Loop``/``Scan`` bodies) are handled alike; a body's references to the outer
scope count as inputs of the node that holds it. Initializers, weights and external data
locations are untouched. A graph with a cycle or an input nothing produces is left as it is:
the ONNX checker then says what is wrong.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Normalised:
    """What :func:`normalise_graph` changed: how many nodes it named, whether it reordered."""

    named: int
    sorted: bool

    @property
    def changed(self) -> bool:
        """Whether the graph differs from the file."""
        return bool(self.named or self.sorted)

    def describe(self) -> str:
        """One clause for the import's console line, e.g. ``named 39 unnamed nodes``."""
        parts = []
        if self.named:
            parts.append(f"named {self.named} unnamed node{'s' if self.named != 1 else ''}")
        if self.sorted:
            parts.append("sorted its nodes topologically")
        return " and ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The record's form."""
        return {"named_nodes": self.named, "sorted": self.sorted}


def normalise_graph(graph: Any) -> Normalised:
    """Name and sort the nodes of ``graph`` (an ``onnx.GraphProto``, changed in place)."""
    named = _name_nodes(graph, _taken_names(graph))
    reordered = _sort_graph(graph, outer=frozenset())
    return Normalised(named, reordered)


def _subgraphs(node: Any) -> list[Any]:
    """The graphs held in ``node``'s attributes (``If`` branches, ``Loop``/``Scan`` bodies)."""
    out = []
    for attr in node.attribute:
        if attr.HasField("g"):
            out.append(attr.g)
        out.extend(attr.graphs)
    return out


def _taken_names(graph: Any) -> set[str]:
    names = set()
    for node in graph.node:
        if node.name:
            names.add(node.name)
        for sub in _subgraphs(node):
            names |= _taken_names(sub)
    return names


def _name_nodes(graph: Any, taken: set[str]) -> int:
    count = 0
    for index, node in enumerate(graph.node):
        for sub in _subgraphs(node):
            count += _name_nodes(sub, taken)
        if node.name:
            continue
        first = next((o for o in node.output if o), f"node{index}")
        base = f"{node.op_type}_{first}"
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        node.name = name
        taken.add(name)
        count += 1
    return count


def _needed(node: Any) -> set[str]:
    """The tensors ``node`` reads, its subgraphs' reads from the outer scope included."""
    needs = {i for i in node.input if i}
    for sub in _subgraphs(node):
        needs |= _outer_reads(sub)
    return needs


def _outer_reads(graph: Any) -> set[str]:
    """Names a subgraph reads that it does not define itself."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.name for t in graph.sparse_initializer}
    reads: set[str] = set()
    for node in graph.node:
        reads |= {i for i in _needed(node) if i not in defined}
        defined |= set(node.output)
    return reads


def _in_order(nodes: list[Any], needs: list[set[str]], available: set[str]) -> bool:
    """Whether every node reads only what is available before it (one pass)."""
    ready = set(available)
    for node, need in zip(nodes, needs, strict=True):
        if not need <= ready:
            return False
        ready |= {o for o in node.output if o}
    return True


def _sort_graph(graph: Any, outer: frozenset[str]) -> bool:
    """Reorder ``graph.node`` topologically if it is not; True when it changed anything."""
    available = set(outer) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    available |= {t.name for t in graph.sparse_initializer}
    changed = False
    nodes = list(graph.node)
    holders = [n for n in nodes if _subgraphs(n)]
    if holders:  # bodies first: their own order, with every name of this scope visible
        scope = frozenset(available | {o for n in nodes for o in n.output})
        for node in holders:
            for sub in _subgraphs(node):
                changed |= _sort_graph(sub, scope)
    needs = [_needed(n) for n in nodes]
    if _in_order(nodes, needs, available):
        return changed
    produced_here = {o for n in nodes for o in n.output if o}
    # Inputs no node and no scope provides: not ours to judge; the checker names them.
    if any(need - available - produced_here for need in needs):
        return changed
    # Kahn's algorithm over node indices, always taking the earliest ready node (a heap), so
    # the file's order survives wherever it is valid.
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    users: list[list[int]] = [[] for _ in nodes]
    waiting = [0] * len(nodes)
    for i, need in enumerate(needs):
        for j in {producer[t] for t in need - available if t in producer}:
            users[j].append(i)
            waiting[i] += 1
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for k in users[i]:
            waiting[k] -= 1
            if waiting[k] == 0:
                heapq.heappush(ready, k)
    if len(order) < len(nodes):
        return changed  # a cycle: leave it for the checker
    if order == list(range(len(nodes))):
        return changed
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
    return True
