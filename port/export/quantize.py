"""INT8 as explicit QuantizeLinear/DequantizeLinear (QDQ) nodes, calibrated with ONNX Runtime.

The INT8 artifact is an ONNX file, not an engine: ONNX Runtime's CPU provider runs it here, so its
accuracy is checked on exactly the graph TensorRT will later build (TensorRT 11 only accepts
explicit quantization; see DESIGN.md "Formats and precisions").

Choices, and why:

- ``quantize_static`` with ``QuantFormat.QDQ``: ONNX Runtime's recommended format since 1.11 and the
  one TensorRT consumes (onnxruntime.ai/docs/performance/model-optimizations/quantization.html).
- Weights: signed INT8, symmetric, per output channel (per-channel is what TensorRT supports for
  weights and recovers most of the accuracy per-tensor loses on ResNet convolutions).
- Activations: signed INT8, symmetric (zero point 0) by default. TensorRT only implements
  symmetric signed INT8 for QDQ; an asymmetric UINT8 model cannot be built there. ONNX Runtime's
  x86 CPU kernels are U8S8 (VNNI ``vpdpbusd`` multiplies unsigned by signed bytes): ORT rewrites
  S8 activations to U8 with zero point 128 (``QDQS8ToU8Transformer``) before fusing DQ->Conv->Q
  into QLinearConv, so the symmetric graph still runs on those kernels once every Q has its own
  DQ (``DedicatedQDQPair`` + ``_unshare_q_params``). What symmetric activations cost on the CPU:
  ReLU cannot be folded into the quantization (ORT folds it only when the zero point is the
  type's minimum), so it runs as its own op between Q/DQ. ``bench/int8_vs_fp32.py`` measures
  both forms; ``activation_type="uint8"`` writes the asymmetric, ORT-CPU-only form (ReLU folded,
  the fastest on this CPU) for users who never build a TensorRT engine from it.
- Weights use the full [-127, 127] range by default: that is what TensorRT expects and what a
  GPU or a VNNI CPU computes exactly. ``weight_range="7bit"`` (ORT's ``reduce_range``) writes
  |w| <= 64 instead, for apps that run the file on ONNX Runtime's fast kernels on an x86 CPU
  without VNNI, where full-range weights saturate 16-bit pair sums (``port.engines.int8_cpu``;
  porter's own checks run such a CPU's exact kernels instead, so the default graph is judged
  as TensorRT will compute it).
- ``quant_pre_process`` first (symbolic shape inference + ORT basic optimisations), as the ORT docs
  recommend: a tensor whose shape is unknown cannot be quantized.
- Calibration runs one batch at a time (``CalibStridedMinMax`` = 1 batch, which ORT applies to every
  method): ranges and histograms are merged batch by batch, so memory stays bounded by one batch's
  activations however many images calibrate (all activations of 500 ResNet-50 images would not fit).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from port.export.onnx_files import (
    add_card,
    check_images,
    count_qdq,
    load_onnx,
    onnx_graph_io,
    read_props,
    save_onnx_atomic,
    without_initializer_inputs,
)
from port.formats import option_choices
from port.ground.errors import ModelError, UsageError, first_line
from port.models.card_codec import PRECISION_KEY, set_metadata

# --calib-method choices -> onnxruntime.quantization.CalibrationMethod member names.
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# --int8-activations: int8 is symmetric (TensorRT), uint8 asymmetric (ORT CPU only).
ACTIVATION_TYPES = option_choices("int8_activations")
# --int8-weights: full = [-127, 127] (TensorRT, GPUs, VNNI CPUs), 7bit = [-64, 64].
WEIGHT_RANGES = option_choices("int8_weights")
QUANTIZATION_KEY = "porter.quantization"  # JSON: how this INT8 graph was made


def _make_reader(images: np.ndarray, feed: Any, batch_size: int,
                 on_batch: Callable[[int], None]) -> Any:
    """A ``CalibrationDataReader`` over ``images`` that ORT can drive one batch at a time.

    ``feed`` (:class:`port.engines.adapter.GraphIO`) turns porter's canonical batch into what
    the graph takes: its layout and dtype, its fixed batch (the batch size then; a short last
    batch is padded by repeating a real image, so every range calibrated is a real image's).

    ``__len__`` and ``set_range`` are the interface ``quantize_static`` uses with
    ``CalibStridedMinMax``: it restricts the reader to a range of items, collects, and moves on.
    """
    from onnxruntime.quantization import CalibrationDataReader

    size = feed.batch or batch_size

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = list(range(0, len(images), size))
            self.set_range(0, len(self.starts))

        def __len__(self) -> int:
            return len(self.starts)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.pending = iter(self.starts[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.pending, None)
            if start is None:
                return None
            chunk, real = next(feed.chunks(images[start:start + size], size))
            on_batch(real)
            return {feed.input_name: feed.to_graph(chunk)}

    return _Reader()


def _progress_bar(enabled: bool) -> Any:
    """A rich progress bar with throughput (images/s); ``disable`` makes it a silent no-op."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    # stderr: stdout stays clean for machine-readable output (and ORT's prints are muted there).
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]} img/s"), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)


def quantize_int8(
    fp32_onnx: Path,
    out_path: Path,
    calib_images: np.ndarray,
    *,
    method: str = "minmax",
    per_channel: bool = True,
    activation_type: str = "int8",
    weight_range: str = "full",
    batch_size: int = 16,
    progress: bool = True,
    exclude_nodes: Sequence[str] = (),
    card: Any = None,
) -> dict[str, Any]:
    """Quantize an FP32 ONNX classifier to INT8 QDQ, calibrated on ``calib_images``.

    ``card``: the model card, which says how to feed the graph porter's canonical batch
    (layout, dtype, fixed batch; else the card in its metadata, else its signature); an
    imported ONNX without porter metadata gets it written into the INT8 graph.

    ``calib_images`` are preprocessed float32 NCHW images (the evaluation preprocessing). The
    output keeps the input's ``metadata_props``, with ``porter.precision`` set to ``int8`` and
    ``porter.quantization`` describing how it was made; it is written atomically. Returns metrics
    for the manifest: method, per_channel, activation type, weight range (and the bits the
    written weights need), QDQ node counts, seconds, bytes, and a check of the INT8 graph
    against FP32 on the first calibration images (ORT CPU, on the kernels ``porter evaluate``
    would choose on this CPU). ``exclude_nodes`` names nodes left unquantized (FP32).
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if method not in CALIBRATION_METHODS:
        raise UsageError(f"unknown calibration method {method!r}: choose one of "
                         f"{', '.join(CALIBRATION_METHODS)}")
    if activation_type not in ACTIVATION_TYPES:
        raise UsageError(f"unknown activation type {activation_type!r}: choose one of "
                         f"{', '.join(ACTIVATION_TYPES)}")
    if weight_range not in WEIGHT_RANGES:
        raise UsageError(f"unknown INT8 weight range {weight_range!r}: choose one of "
                         f"{', '.join(WEIGHT_RANGES)}")
    if batch_size < 1:
        raise UsageError(f"calibration batch size must be at least 1 (got {batch_size})")
    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    source = load_onnx(fp32_onnx)
    props = read_props(source)
    if props.get(PRECISION_KEY, "fp32") != "fp32" or any(
            n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in source.graph.node):
        raise UsageError(f"{fp32_onnx} is not an FP32 model (precision "
                         f"{props.get(PRECISION_KEY, 'quantized')}): quantize from the FP32 ONNX")
    feed = onnx_graph_io(source, card)
    images = check_images(calib_images, source, "calibration images", io=feed)
    unknown = sorted(set(exclude_nodes) - {n.name for n in source.graph.node})
    if unknown:
        raise UsageError(f"cannot keep {', '.join(unknown[:5])} in FP32: no node of "
                         f"{fp32_onnx.name} has that name (use ONNX node names of the FP32 graph)")
    symmetric = activation_type == "int8"
    extra_options = {
        "WeightSymmetric": True,  # zero point 0: what TensorRT and ORT's S8 kernels require
        "ActivationSymmetric": symmetric,
        "CalibStridedMinMax": 1,  # collect per reader item (= one batch): bounded memory
        # One Q/DQ pair per consumer of a tensor: TensorRT cannot share a pair between nodes
        # (ORT's own note on this option), and ORT's x86 CPU provider only fuses a Conv with S8
        # input into QLinearConv when its input Q feeds a single DQ (see _unshare_q_params).
        "DedicatedQDQPair": symmetric,
        # Biases stay FP32: TensorRT's parser refuses DequantizeLinear of an INT32 bias ("only
        # activation types allowed as input", onnx/onnx-tensorrt#850) and quantizes biases itself;
        # ORT still fuses DQ->Conv(float bias)->Q into QLinearConv (checked in the tests).
        "QuantizeBias": not symmetric,
    }
    # 1-D weights of normalisation layers (LayerNorm's gamma) have no channel axis: ORT would
    # try axis 1, warn "Axis 1 is out-of-range for weight" once per layer and fall back to one
    # scale. Asking for that one scale up front gives the same graph without the warnings.
    flat = _one_dimensional_weights(source) if per_channel else []
    if flat:
        extra_options["TensorQuantOverrides"] = {name: [{}] for name in flat}
    n_batches = math.ceil(len(images) / (feed.batch or batch_size))
    t0 = time.perf_counter()
    # Intermediate graphs beside the output (the run directory), not in the system's /tmp: the
    # run lock's sweep removes what a killed export leaves (port.manifest.lock).
    scratch = tempfile.TemporaryDirectory(dir=Path(out_path).parent, prefix=".porter-int8-")
    with scratch as tmp, _progress_bar(progress) as bar:
        task = bar.add_task(f"Calibrating INT8 ({method})", total=len(images), rate="-")
        done = [0, 0]  # images finished, images handed to ORT and still running

        def on_batch(n: int) -> None:
            # ORT asks for the next batch once the previous one has run: count that one as done.
            done[0] += done[1]
            done[1] = n
            elapsed = time.perf_counter() - t0
            bar.update(task, completed=done[0],
                       rate=f"{done[0] / elapsed:.0f}" if done[0] and elapsed > 0 else "-")

        pre = Path(tmp) / "preprocessed.onnx"
        quantized = Path(tmp) / "int8.onnx"
        plain = _quantizable(source)
        if plain is not source:  # IR 3 / old opsets: see _quantizable
            save_onnx_atomic(plain, Path(tmp) / "source.onnx")
        quant_pre_process(str(fp32_onnx if plain is source else Path(tmp) / "source.onnx"),
                          str(pre))
        reader = _make_reader(images, feed, batch_size, on_batch)
        # ORT's histogram calibrators print() their progress; the bar above already shows it.
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(pre), str(quantized), reader,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=weight_range == "7bit",
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
                extra_options=extra_options,
                nodes_to_exclude=list(exclude_nodes),
            )
        bar.update(task, completed=len(images))
        model = onnx.load(str(quantized))
    seconds = time.perf_counter() - t0
    restored = _restore_node_metadata(model, source)

    float_outputs = _float_graph_outputs(model)
    tied = 0
    if symmetric:
        tied = _tie_relu_input_scales(model)
        _unshare_q_params(model)
    n_q, n_dq = count_qdq(model)
    settings = {
        "quantizer": _quantizer_name(),
        "format": "QDQ",
        "method": method,
        "per_channel": per_channel,
        "weights": "int8 symmetric" + (" 7-bit" if weight_range == "7bit" else ""),
        "activations": "int8 symmetric" if symmetric else "uint8 asymmetric",
        "bias": "fp32" if symmetric else "int32",
        "reduce_range": weight_range == "7bit",
        "weight_range": weight_range,
        "calibration_images": len(images),
        "excluded_nodes": list(exclude_nodes),
        "per_tensor_weights": len(flat),  # 1-D weights (LayerNorm scales): one scale each
        "metadata_restored": restored,  # nodes given back the exporter's metadata (layerwise)
        "float_outputs": float_outputs,
        "relu_input_scales_tied": tied,
    }
    add_card(props, card, "int8")
    props[PRECISION_KEY] = "int8"
    props[QUANTIZATION_KEY] = json.dumps(settings, sort_keys=True)
    set_metadata(model, props)
    onnx.checker.check_model(model)
    size = save_onnx_atomic(model, out_path)
    metrics: dict[str, Any] = dict(settings)
    metrics.update({
        "quantize_linear_nodes": n_q,
        "dequantize_linear_nodes": n_dq,
        "calibration_batches": n_batches,
        "seconds": round(seconds, 3),
        "bytes": size,
        "fp32_bytes": fp32_onnx.stat().st_size,
    })
    from port.engines.int8_cpu import int8_weight_bits

    metrics["weight_bits"] = int8_weight_bits(out_path)
    metrics.update(_spot_check(fp32_onnx, out_path, images[:8], feed))
    return metrics


# Ops that may sit between a classifier's last layer and its output (a logit scale, a reshape, a
# softmax): the activation Q/DQ pairs on that tail are removed too, so the logits stay float.
_OUTPUT_TAIL_OPS = frozenset({"Mul", "Div", "Add", "Sub", "Reshape", "Flatten", "Squeeze",
                              "Unsqueeze", "Transpose", "Identity", "Softmax", "LogSoftmax"})


def _restore_node_metadata(model: onnx.ModelProto, source: onnx.ModelProto) -> int:
    """Give each node of ``model`` the ``metadata_props`` of the source node of the same name.

    The exporter's per-node metadata (module path, class hierarchy) is what layerwise maps
    tensors to modules with; ORT's pre-processing and quantizer drop it on some graphs (a
    torchvision MobileNetV3: all 122 nodes had it, none of the INT8 graph's), and layerwise then
    compared nothing. Nodes keep their names through quantization, so the name finds it."""
    by_name = {n.name: n for n in source.graph.node if n.name and n.metadata_props}
    restored = 0
    for node in model.graph.node:
        found = by_name.get(node.name)
        if found is not None and not node.metadata_props:
            node.metadata_props.extend(found.metadata_props)
            restored += 1
    return restored


# Ops whose weight ORT's QDQ quantizer quantizes per channel along axis 1 (their default),
# and the inputs it treats as that weight.
_AXIS1_WEIGHT_INPUTS = {"LayerNormalization": (1,), "InstanceNormalization": (1,),
                        "BatchNormalization": (1,), "MatMul": (0, 1)}


def _one_dimensional_weights(model: onnx.ModelProto) -> list[str]:
    """Initializers of rank 1 that ORT would try to quantize per channel on a missing axis 1."""
    rank = {t.name: len(t.dims) for t in model.graph.initializer}
    out: list[str] = []
    for node in model.graph.node:
        for i in _AXIS1_WEIGHT_INPUTS.get(node.op_type, ()):
            if i < len(node.input) and rank.get(node.input[i]) == 1 and node.input[i] not in out:
                out.append(node.input[i])
    return out


def _float_graph_outputs(model: onnx.ModelProto) -> list[str]:
    """Drop the activation Q/DQ pairs between the last layer and each graph output.

    Why: a quantized output snaps the logits to an 8-bit grid, so classes tie exactly (issue 9)
    and the softmax sees steps of one scale. From each output this walks back through the tail
    ops (``_OUTPUT_TAIL_OPS``, e.g. the ``Mul`` of a logit scale) to the first other node (the
    last Gemm/MatMul/Conv) and removes every ``x -> Q -> DQ`` pair on an activation on the way;
    constants keep their DequantizeLinear. The last layer still reads quantized inputs and
    weights and writes float: ORT fuses DQ->Gemm into QGemm with a float output (or runs the
    small Gemm in float), TensorRT runs it in INT8 and writes float. Returns the outputs freed.
    """
    inits = {t.name for t in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in model.graph.output}

    def pair(tensor: str) -> tuple[Any, Any] | None:
        """The ``Q -> DQ`` pair that makes ``tensor`` from an activation, if private to it."""
        dq = producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
            return None
        q = producer.get(dq.input[0])
        if (q is None or q.op_type != "QuantizeLinear" or readers.get(q.output[0], 0) != 1
                or q.input[0] not in producer or q.input[0] in outputs):
            return None
        return q, dq

    dropped: set[int] = set()
    renames: dict[str, str] = {}  # a removed DQ's output -> the float tensor that replaces it
    freed = []
    for output in model.graph.output:
        frontier, touched = [output.name], False
        while frontier:
            tensor = frontier.pop()
            found = pair(tensor)
            if found is not None:
                q, dq = found
                dropped.update((id(q), id(dq)))
                renames[dq.output[0]] = q.input[0]
                touched = True
                tensor = q.input[0]
            node = producer.get(tensor)
            if node is not None and node.op_type in _OUTPUT_TAIL_OPS:
                frontier.extend(i for i in node.input if i and i not in inits)
        if touched:
            freed.append(output.name)
    if not dropped:
        return []
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    for name, source in renames.items():
        if name in outputs:  # the layer writes the graph output itself
            producer[source].output[list(producer[source].output).index(source)] = name
            for node in model.graph.node:
                for i, inp in enumerate(node.input):
                    if inp == source:
                        node.input[i] = name
    nodes = [n for n in model.graph.node if id(n) not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unused_initializers(model)
    return freed


def _tie_relu_input_scales(model: onnx.ModelProto) -> int:
    """Give ``X -> Q1 -> DQ1 -> Relu -> Q2`` one scale: Q1 takes Q2's; return how many tied.

    ``quantize_static`` with symmetric activations keeps each ReLU and calibrates its input and
    its output separately, so the positive values are rounded twice, on two grids (the input's
    range also covers the negative values the ReLU discards). With Q2's scale on Q1 they are
    rounded once, on the grid the next layer reads: closer to FP32, still symmetric INT8 for
    TensorRT, and on ONNX Runtime's CPU provider the ReLU and the second rounding vanish exactly
    (``port.engines.int8_cpu_graph``). Only Q1 whose single reader is the ReLU's DQ is tied,
    and only when every Q2 of the ReLU has the same scale.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    tied = 0
    for relu in model.graph.node:
        if relu.op_type != "Relu":
            continue
        dq1 = producer.get(relu.input[0])
        q1 = producer.get(dq1.input[0]) if dq1 is not None else None
        q2s = readers.get(relu.output[0], [])
        if (dq1 is None or dq1.op_type != "DequantizeLinear" or q1 is None
                or q1.op_type != "QuantizeLinear" or len(readers.get(dq1.output[0], [])) != 1
                or len(readers.get(q1.output[0], [])) != 1 or not q2s
                or any(q.op_type != "QuantizeLinear" or q.input[1] not in inits for q in q2s)):
            continue
        scales = [numpy_helper.to_array(inits[q.input[1]]) for q in q2s]
        if any(s.shape != scales[0].shape or not np.array_equal(s, scales[0]) for s in scales):
            continue
        name = f"{relu.input[0]}_scale_tied"
        model.graph.initializer.append(numpy_helper.from_array(scales[0].copy(), name))
        q1.input[1] = dq1.input[1] = name
        tied += 1
    if tied:
        _drop_unused_initializers(model)
    return tied


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for n in model.graph.node for name in n.input}
    live = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(live)


def _unshare_q_params(model: onnx.ModelProto) -> int:
    """Give every QuantizeLinear its own scale/zero-point initializers; return how many copied.

    Why: on x86 ONNX Runtime has no fast S8S8 kernels, so it rewrites S8 Q/DQ pairs to U8
    (``QDQS8ToU8Transformer``) before fusing DQ->Conv->Q into QLinearConv, and that rewrite
    needs a Q with a single DQ consumer. ``DedicatedQDQPair`` creates exactly that, but ORT's
    common-subexpression elimination merges Q nodes with identical inputs back into one. Distinct
    initializer names (same values, so the graph computes the same) keep them apart. Measured on
    ResNet-18: 9 of 20 convolutions fused without this, 20 of 20 with it (bench/int8_vs_fp32.py).
    """
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    copies = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        for i in range(1, min(len(node.input), 3)):
            name = node.input[i]
            uses[name] = uses.get(name, 0) + 1
            if uses[name] > 1 and name in inits:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}_q{uses[name]}"
                copies.append(copy)
                node.input[i] = copy.name
    model.graph.initializer.extend(copies)
    return len(copies)


def _quantizable(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` in a form ``quantize_static`` quantizes fully (the model itself if it is).

    Old exporters' graphs (IR 3) list weights as graph inputs, which the quantizer would leave
    in FP32, and use opsets below 13, where QuantizeLinear has no per-channel ``axis``: the
    weights are unlisted and the graph is converted to opset 13 (what TensorRT needs anyway).
    """
    from onnx import version_converter

    plain = without_initializer_inputs(model)
    opset = next((o.version for o in plain.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:
        try:
            plain = version_converter.convert_version(plain, 13)
        except Exception as exc:  # the converter raises bare RuntimeErrors per op
            raise ModelError(f"the FP32 graph (opset {opset}) cannot be converted to opset 13 "
                             f"for INT8 quantization ({first_line(exc)}): re-export the model "
                             "with opset 13 or later") from None
    return plain


def _quantizer_name() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__} quantize_static"


def _spot_check(fp32_onnx: Path, int8_onnx: Path, images: np.ndarray,
                feed: Any) -> dict[str, Any]:
    """Run FP32 and INT8 on a few images with ORT CPU: proves the INT8 graph loads and runs.

    The INT8 graph runs through porter's ONNX Runtime runner, so on a CPU without VNNI it uses
    the same exact kernels ``porter evaluate`` would (``check_int8_kernels`` says which).
    Accuracy is judged by ``porter evaluate`` on the evaluation split; this is only a smoke check
    that catches a broken graph at export time.
    """
    from port.engines.adapter import AdaptedRunner
    from port.engines.onnxrt import OnnxRuntimeRunner

    outs, int8 = [], None
    for path in (fp32_onnx, int8_onnx):
        inner = OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"])
        with AdaptedRunner(inner, io=feed) as runner:  # canonical batch in, [N, C] out
            outs.append(runner.infer({feed.input_name: images})[runner.logits_output()])
            int8 = inner.int8 or int8
    ref, q = outs
    return {
        "check_images": len(images),
        "check_top1_agreement": float(np.mean(ref.argmax(1) == q.argmax(1))),
        "check_max_abs_diff": float(np.max(np.abs(ref - q))),
        "check_int8_kernels": int8.kernels if int8 else None,
    }
