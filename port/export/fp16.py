"""FP16 as an ONNX graph with FP32 inputs/outputs, after a pre-flight that finds what FP16 breaks.

FP16 holds magnitudes up to 65504 and flushes non-zero values below 2^-24 to zero (below 2^-14 it
keeps fewer mantissa bits). A graph converted blindly can therefore turn a large activation into
``inf`` or a tiny weight into 0. ``preflight_fp16`` runs the FP32 model on the CPU with every
intermediate tensor exposed as an output, inspects the weights, and names the nodes whose tensors
leave that range; ``convert_fp16`` refuses to write a graph that would overflow unless those
nodes are kept in FP32 (``--keep-fp32 NAME,...``).

The conversion itself is ONNX Runtime's ``onnxruntime.transformers.float16
.convert_float_to_float16`` (it ships with onnxruntime; onnxconverter_common's copy is not a
porter dependency), with ``keep_io_types=True`` so apps keep feeding float32 images.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from port.engines.ort_session import create_session
from port.export.onnx_files import (
    add_card,
    check_images,
    load_onnx,
    onnx_graph_io,
    read_props,
    save_onnx_atomic,
    without_initializer_inputs,
)
from port.ground.errors import ModelError, UsageError, first_line
from port.models.card_codec import PRECISION_KEY, set_metadata

FP16_MAX = 65504.0  # largest finite float16
FP16_MIN_SUBNORMAL = 2.0**-24  # ~5.96e-8: non-zero values below this flush to 0 (or round up)
FP16_MIN_NORMAL = 2.0**-14  # ~6.10e-5: below this float16 keeps fewer than 10 mantissa bits
# "Material" fractions of the non-zero values of one tensor. Trained CNN weights keep a few tenths
# of a percent below 2^-14, which FP16 handles; a layer with this much mass there has been scaled
# into trouble (or its activations vanish), which is worth naming.
UNDERFLOW_FRACTION = 0.01
SUBNORMAL_FRACTION = 0.05
FP16_KEY = "porter.fp16"  # JSON: how this FP16 graph was made
_CAST_PREFIX = "InsertedPrecisionFreeCast_"  # ORT's name for casts it adds around FP32 kernels


@dataclass(frozen=True)
class Fp16Finding:
    """One tensor that FP16 cannot represent faithfully."""

    kind: str  # "overflow" (|x| > 65504 -> inf), "underflow" (-> 0), "subnormal" (precision loss)
    where: str  # "activation" or "weight"
    tensor: str
    node: str  # the producing node (activation) or the first node reading the weight
    op_type: str
    keep: tuple[str, ...]  # nodes that must all stay FP32 for this tensor to stay FP32
    max_abs: float  # largest |value| seen
    fraction: float  # of the tensor's non-zero values affected
    kept_fp32: bool  # True when every node in ``keep`` is kept in FP32

    def describe(self) -> str:
        """One line for people: what, where, how much."""
        what = {"overflow": f"exceeds FP16's max {FP16_MAX:g}",
                "underflow": "flushes to zero in FP16",
                "subnormal": "loses precision (FP16 subnormal)"}[self.kind]
        state = " [kept FP32]" if self.kept_fp32 else ""
        return (f"{self.where} {self.tensor!r} of {self.op_type} node {self.node!r} {what}: "
                f"max |x| {self.max_abs:.4g}, {self.fraction:.2%} of non-zero values{state}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for the manifest."""
        d = asdict(self)
        d["keep"] = list(self.keep)
        return d


@dataclass
class _Stats:
    """Running range statistics of one tensor over all sample batches."""

    max_abs: float = 0.0
    over: int = 0
    nonzero: int = 0
    under: int = 0
    subnormal: int = 0

    def add(self, x: np.ndarray) -> None:
        a = np.abs(x.astype(np.float32, copy=False)).ravel()
        if a.size == 0:
            return
        self.max_abs = max(self.max_abs, float(a.max()))
        self.over += int(np.count_nonzero(a > FP16_MAX))
        nz = a[a > 0]
        self.nonzero += nz.size
        self.under += int(np.count_nonzero(nz < FP16_MIN_SUBNORMAL))
        self.subnormal += int(np.count_nonzero((nz >= FP16_MIN_SUBNORMAL) & (nz < FP16_MIN_NORMAL)))


def node_names(model: onnx.ModelProto) -> list[str]:
    """Names of the main graph's nodes, in graph order (what ``--keep-fp32`` accepts)."""
    return [n.name for n in model.graph.node if n.name]


def _check_keep(model: onnx.ModelProto, keep_fp32: Iterable[str]) -> list[str]:
    keep = list(dict.fromkeys(k.strip() for k in keep_fp32 if k.strip()))
    valid = node_names(model)
    unknown = [k for k in keep if k not in set(valid)]
    if unknown:
        sample = ", ".join(valid[:4]) + (", ..." if len(valid) > 4 else "")
        raise UsageError(f"--keep-fp32 names unknown node(s) {', '.join(unknown)}: use ONNX node "
                         f"names such as {sample} ({len(valid)} nodes; see them in Netron)")
    unnamed = sum(1 for n in model.graph.node if not n.name)
    if keep and unnamed:
        raise ModelError(f"{unnamed} nodes of this ONNX have no name, so --keep-fp32 cannot pick "
                         "them: import the file again into a new --run (porter import names "
                         "every unnamed node) or re-export it with porter")
    return keep


def _finding(kind: str, where: str, tensor: str, node: onnx.NodeProto, keep: Sequence[str],
             stats: _Stats, count: int, kept: set[str]) -> Fp16Finding:
    total = stats.nonzero if kind != "overflow" else max(stats.nonzero, 1)
    return Fp16Finding(kind=kind, where=where, tensor=tensor, node=node.name, op_type=node.op_type,
                       keep=tuple(keep), max_abs=stats.max_abs,
                       fraction=count / total if total else 0.0,
                       kept_fp32=bool(keep) and set(keep) <= kept)


def _judge(stats: _Stats) -> list[tuple[str, int]]:
    """Which kinds of trouble a tensor's statistics show, with the count of values affected."""
    out = []
    if stats.over:
        out.append(("overflow", stats.over))
    if stats.nonzero and stats.under / stats.nonzero >= UNDERFLOW_FRACTION:
        out.append(("underflow", stats.under))
    if stats.nonzero and stats.subnormal / stats.nonzero >= SUBNORMAL_FRACTION:
        out.append(("subnormal", stats.subnormal))
    return out


def _weight_findings(model: onnx.ModelProto, kept: set[str]) -> list[Fp16Finding]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    findings = []
    for init in model.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or init.name not in consumers:
            continue
        stats = _Stats()
        stats.add(onnx.numpy_helper.to_array(init))
        users = consumers[init.name]
        for kind, count in _judge(stats):
            findings.append(_finding(kind, "weight", init.name, users[0],
                                     [u.name for u in users], stats, count, kept))
    return findings


def _activation_findings(model: onnx.ModelProto, images: np.ndarray, batch_size: int,
                         kept: set[str], io: Any) -> list[Fp16Finding]:
    """Run the FP32 model with every FP32 node output exposed; judge each tensor's range."""
    from port.engines.activations import IntermediateRunner

    producer: dict[str, onnx.NodeProto] = {}
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.output:
            producer[name] = node
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    # Fusions off (engines.activations): every tensor judged is the one the FP32 graph computes.
    runner = IntermediateRunner(model, what="the FP32 graph (FP16 pre-flight)",
                                elem_types=[onnx.TensorProto.FLOAT])
    watched = runner.names
    stats = {name: _Stats() for name in watched}
    # Fed as the graph takes them (layout, dtype, fixed batch: port.engines.adapter); a padded
    # last batch repeats a real image, so every range seen is a real image's.
    for batch in io.graph_batches(images, batch_size):
        for name, value in runner.run({io.input_name: batch}).items():
            stats[name].add(value)

    findings = []
    for name in watched:
        node = producer[name]
        keep = [node.name, *consumers.get(name, [])]
        for kind, count in _judge(stats[name]):
            findings.append(_finding(kind, "activation", name, node, keep, stats[name], count,
                                     kept))
    return findings


def preflight_fp16(
    fp32_onnx: Path,
    sample_images: np.ndarray | None,
    *,
    keep_fp32: Iterable[str] = (),
    batch_size: int = 8,
    card: Any = None,
) -> list[Fp16Finding]:
    """Find the weights and activations of an FP32 ONNX model that FP16 cannot hold.

    Activations are measured by running the model with ONNX Runtime (CPU) on ``sample_images``
    (preprocessed float32 NCHW); with ``None`` only weights are inspected. Each finding names the
    tensor, its node and op type, and the nodes to keep in FP32 to avoid it (an activation stays
    FP32 only if the node producing it and every node reading it do). ``kept_fp32`` says whether
    ``keep_fp32`` already covers it. Overflows are listed first. ``card``: the model card, for a
    graph that takes another form than porter's canonical batch (else the one in its metadata).
    """
    model = without_initializer_inputs(load_onnx(Path(fp32_onnx)))
    kept = set(_check_keep(model, keep_fp32))
    findings = _weight_findings(model, kept)
    if sample_images is not None:
        io = onnx_graph_io(model, card)
        images = check_images(sample_images, model, "FP16 pre-flight images", io=io)
        findings += _activation_findings(model, images, max(1, batch_size), kept, io)
    order = {"overflow": 0, "underflow": 1, "subnormal": 2}
    return sorted(findings, key=lambda f: order[f.kind])


def _is_converter_cast_to_fp16(node: onnx.NodeProto) -> bool:
    """A Cast to FP16 that ``convert_float_to_float16`` inserted (its input is FP32)."""
    return (node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16
                                           for a in node.attribute)
            and (node.name.endswith("_cast_to_fp16_node")
                 or node.name.startswith("graph_input_cast")))


def _drop_cast_round_trips(model: onnx.ModelProto, keep: set[str]) -> int:
    """Let tensors between FP32-kept nodes stay FP32; return how many FP16 hops were removed.

    ``convert_float_to_float16`` casts the output of every kept node to FP16 and casts it back
    for the next kept node (Cast(FP32->FP16) -> Cast(FP16->FP32)), so two adjacent kept nodes
    would still pass their tensor through FP16 and overflow anyway; and it feeds a kept first node
    the FP16 copy of the graph input. Only casts the converter made are touched (by its names).
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}

    def cast_to(node: onnx.NodeProto) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    def rename(old: str, new: str) -> None:
        for n in graph.node:
            for i, name in enumerate(n.input):
                if name == old:
                    n.input[i] = new
            for i, name in enumerate(n.output):
                if name == old:
                    n.output[i] = new

    removed = 0
    touched: set[str] = set()
    for node in list(graph.node):
        up = producer.get(node.input[0]) if node.input else None
        converter_cast_to_fp32 = cast_to(node) == onnx.TensorProto.FLOAT and (
            node.name.endswith("_cast_to_fp32_node") or node.name.startswith("graph_output_cast"))
        if not converter_cast_to_fp32 or up is None or not _is_converter_cast_to_fp16(up):
            continue
        source = up.input[0]  # the FP32 tensor (a kept node's output, or the graph input)
        touched.update((source, up.output[0], node.output[0]))
        if node.output[0] in outputs:
            # Keep the graph output's name: the FP32 tensor goes straight through an Identity.
            node.op_type = "Identity"
            del node.attribute[:]
            node.input[0] = source
        else:
            rename(node.output[0], source)
            graph.node.remove(node)
        removed += 1
    # A kept node may also read a converter-made FP16 cast directly (the converter misses the
    # graph-input cast): give it the FP32 source.
    for node in graph.node:
        if node.name not in keep:
            continue
        for i, name in enumerate(node.input):
            up = producer.get(name)
            if up is not None and _is_converter_cast_to_fp16(up):
                touched.update((name, up.input[0]))
                node.input[i] = up.input[0]
                removed += 1
    # Casts to FP16 that nobody reads any more. The kept node's FP32 output then takes back the
    # original tensor name (the converter had renamed it "<name>_cast_to_fp16").
    inputs = {i.name for i in graph.input}
    used = {i for n in graph.node for i in n.input} | outputs
    for node in list(graph.node):
        if _is_converter_cast_to_fp16(node) and node.output[0] not in used:
            graph.node.remove(node)
            if node.input[0] not in inputs | outputs:
                rename(node.input[0], node.output[0])
    # The converter's value_info typed these tensors FP16; they are FP32 now. value_info is
    # optional (checkers and runtimes infer it), so drop the stale entries.
    stale = [v for v in graph.value_info if v.name in touched]
    for v in stale:
        graph.value_info.remove(v)
    return removed


def convert_fp16(
    fp32_onnx: Path,
    out_path: Path,
    *,
    keep_fp32: Iterable[str] = (),
    sample_images: np.ndarray | None = None,
    batch_size: int = 8,
    card: Any = None,
) -> dict[str, Any]:
    """Convert an FP32 ONNX classifier to FP16 (FP32 inputs/outputs) after a pre-flight.

    ``keep_fp32`` names nodes that stay FP32; unknown names are a ``UsageError`` listing valid
    ones. The pre-flight (activations when ``sample_images`` is given, weights always) must find
    no overflow outside the kept nodes, else a ``UsageError`` names the layers and the
    ``--keep-fp32`` value that avoids them. The result is checked with ``onnx.checker`` and run
    on ONNX Runtime's CPU provider; metrics say how it ran (this CPU provider has FP16 kernels for
    few ops and computes the rest in FP32 through inserted casts) or why it could not run.
    Metadata is kept, with ``porter.precision`` = ``fp16``; a source without porter's card (an
    imported ONNX) gets ``card``'s. ``card`` also says how to feed ``sample_images`` (porter's
    canonical NCHW float32 batch) to a graph that takes NHWC, float64 or a fixed batch. The
    graph's input keeps its dtype and shape. Written atomically.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    # IR 3 files list weights as inputs: unlisted, the converter converts them like any weight.
    source = without_initializer_inputs(load_onnx(fp32_onnx))
    props = read_props(source)
    if props.get(PRECISION_KEY, "fp32") != "fp32":
        raise UsageError(f"{fp32_onnx} is already {props[PRECISION_KEY].upper()}: convert the "
                         "FP32 ONNX to FP16 (import the FP32 model)")
    keep = _check_keep(source, keep_fp32)
    io = onnx_graph_io(source, card)
    images = None
    if sample_images is not None:
        images = check_images(sample_images, source, "FP16 pre-flight images", io=io)
    t0 = time.perf_counter()
    findings = preflight_fp16(fp32_onnx, images, keep_fp32=keep, batch_size=batch_size,
                              card=card)
    blocking = [f for f in findings if f.kind == "overflow" and not f.kept_fp32]
    if blocking:
        layers = ", ".join(dict.fromkeys(f"{f.node} ({f.op_type}, max |x| {f.max_abs:.3g})"
                                         for f in blocking))
        needed = list(dict.fromkeys([*keep, *(n for f in blocking for n in f.keep)]))
        raise UsageError(f"FP16 would overflow (|x| > {FP16_MAX:g} -> inf) in {layers}: keep them "
                         f"in FP32 with --keep-fp32 {','.join(needed)}")

    model = convert_float_to_float16(_copy(source), keep_io_types=True, node_block_list=keep)
    round_trips = _drop_cast_round_trips(model, set(keep))
    # The converter appends its Cast nodes at the end of the node list; ONNX wants graph order.
    OnnxModel.graph_topological_sort(model.graph, is_deterministic=True)
    settings = {
        "converter": "onnxruntime.transformers.float16.convert_float_to_float16",
        "keep_io_types": True,
        "keep_fp32": keep,
        "preflight": "weights+activations" if images is not None else "weights only",
        "preflight_images": 0 if images is None else len(images),
    }
    add_card(props, card, "fp16")
    props[PRECISION_KEY] = "fp16"
    props[FP16_KEY] = json.dumps(settings, sort_keys=True)
    set_metadata(model, props)
    try:
        # full_check adds strict type inference: catches an FP16 tensor fed to an FP32 node.
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelError(f"the FP16 graph fails onnx.checker ({first_line(exc)}): try "
                         "--keep-fp32 on the node it names, or report the model") from exc
    size = save_onnx_atomic(model, out_path)
    metrics: dict[str, Any] = dict(settings)
    metrics.update({
        "findings": [f.to_dict() for f in findings],
        "overflow_findings": sum(f.kind == "overflow" for f in findings),
        "removed_cast_round_trips": round_trips,
        "seconds": round(time.perf_counter() - t0, 3),
        "bytes": size,
        "fp32_bytes": fp32_onnx.stat().st_size,
    })
    metrics["ort_cpu"] = _ort_cpu_check(fp32_onnx, out_path, model, images, set(keep), io)
    return metrics


def _ort_cpu_check(fp32_onnx: Path, fp16_onnx: Path, model: onnx.ModelProto,
                   images: np.ndarray | None, keep: set[str], io: Any) -> dict[str, Any]:
    """Can ONNX Runtime's CPU provider run the FP16 graph, and does it compute in FP16?

    ORT inserts Cast nodes (named ``InsertedPrecisionFreeCast_*``) around ops that have no FP16
    CPU kernel and runs them in FP32; we read the session's graph to count them, because an
    evaluate row must say whether "FP16 on CPU" really computed in FP16.
    """
    compute = {n.name for n in model.graph.node if n.op_type not in ("Cast", "Identity")} - keep
    # Scratch beside the output, never /tmp: a killed run leaves nothing outside its run folder,
    # and the run lock's sweep removes `.porter-*` leftovers.
    with tempfile.TemporaryDirectory(dir=Path(fp16_onnx).parent, prefix=".porter-fp16-") as tmp:
        seen_path = Path(tmp) / "session.onnx"
        # Level 0 keeps node names, so the casts ORT must insert can be attributed to nodes.
        try:
            session = create_session(fp16_onnx, what="the FP16 graph", optimize=False,
                                     save_optimized_to=seen_path)
        except ModelError as exc:
            return {"ran": False, "provider": "CPUExecutionProvider", "why": str(exc)}
        seen = onnx.load(str(seen_path))
    fallback = sorted(n.name for n in seen.graph.node if n.name in compute
                      and any(i.startswith(_CAST_PREFIX) for i in n.input))
    result: dict[str, Any] = {
        "ran": True,
        "provider": "CPUExecutionProvider",
        "fp16_compute_nodes": len(compute) - len(fallback),
        "fp32_fallback_nodes": len(fallback),
    }
    if fallback and len(fallback) == len(compute):
        result["how"] = ("ONNX Runtime CPU has no FP16 kernels for these ops: FP16 weights, "
                         "FP32 arithmetic (FP16 activation overflow cannot show here)")
    elif fallback:
        result["how"] = (f"ONNX Runtime CPU: {len(fallback)} of {len(compute)} nodes computed in "
                         "FP32 through inserted casts, the rest in FP16")
    else:
        result["how"] = "ONNX Runtime CPU: all converted nodes computed in FP16"
    if images is not None:
        check = images[:8]
        got = _first_output(session, io, check)
        ref = _first_output(create_session(fp32_onnx, what="the FP32 graph"), io, check)
        result.update({
            "check_images": len(check),
            "finite": bool(np.all(np.isfinite(got))),
            "check_top1_agreement": float(np.mean(got.argmax(1) == ref.argmax(1))),
            "check_max_abs_diff": float(np.max(np.abs(got.astype(np.float32) - ref))),
        })
    return result


def _first_output(session: Any, io: Any, images: np.ndarray) -> np.ndarray:
    """The first output of ``session`` for a canonical batch, in porter's form."""
    names = [o.name for o in session.get_outputs()]
    outs = io.run(lambda feed: dict(zip(names, session.run(names, feed), strict=True)), images)
    return outs[names[0]]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
