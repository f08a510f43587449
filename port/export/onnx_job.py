"""``porter export --to onnx``: one exporter per precision (the registry names each).

FP32 is torch.onnx's export of the checkpoint; FP16 and INT8 graphs are made from the run's FP32
ONNX, which is exported first when the run has none yet (and recorded too), so every artifact's
lineage is explicit. Layers named with ``--keep-fp32``/``--exclude`` (or searched for with
``auto``, :mod:`port.export.fallback_job`) stay in FP32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from port.export.context import ONNX, ExportContext
from port.export.fallback_job import check_fallback_names, convert_with_fallback, fp32_nodes
from port.formats import Format
from port.ground.errors import UsageError
from port.manifest import Record


def refuse_reduced_reference(ctx: ExportContext) -> None:
    """An imported FP16/INT8 ONNX reference: no ONNX precision can be made from it (FP16 and
    INT8 are made from an FP32 graph); said before any data is asked for or loaded."""
    precision = (ctx.ref.params or {}).get("precision") or "fp32"
    if ctx.ref.kind == ONNX.kind and precision != "fp32":
        raise UsageError(f"the run's reference is already an ONNX model ({precision}): "
                         "evaluate it as it is, or build an engine from it with --to trt; "
                         "import the FP32 model to export other precisions")


def ensure_fp32_onnx(ctx: ExportContext) -> Record:
    """The run's FP32 ONNX record, exporting it first when absent or out of date."""
    if ctx.ref.kind == ONNX.kind:
        return ctx.ref  # an imported ONNX is the FP32 graph
    existing = ctx.fresh(ONNX.artifact_id("fp32"))
    if existing is not None:
        return existing
    ctx.console.print("exporting the FP32 ONNX model first (FP16/INT8/TensorRT are built from "
                      "it)")
    return export_onnx_fp32(ctx, ONNX, "fp32")


def export_onnx_fp32(ctx: ExportContext, fmt: Format, precision: str) -> Record:
    """``--to onnx --precision fp32``: torch.onnx export of the checkpoint, parity-checked."""
    from port.export.onnx import export_onnx
    from port.models.checkpoint import load_model

    if ctx.ref.kind == ONNX.kind:
        refuse_reduced_reference(ctx)
        raise UsageError("the run's reference is already an ONNX model: export --precision "
                         "fp16/int8 or --to trt from it instead")
    model, _, _ = load_model(ctx.run_dir / ctx.ref.path)
    sample = ctx.parity_sample()
    out = ctx.run_dir / fmt.file_name(precision)
    ctx.claim(out, fmt.artifact_id(precision))
    kwargs = {k: ctx.options[k] for k in ("opset", "exporter") if k in ctx.options}
    metrics = export_onnx(model, ctx.card, out, sample=sample, source_sha256=ctx.ref.sha256,
                          **kwargs)
    record = ctx.record(fmt, precision, out, art_id=fmt.artifact_id(precision),
                        parents=[ctx.ref], params=kwargs, metrics=metrics)
    ctx.console.print(f"[green]exported[/green] {record.path} (parity max |diff| "
                      f"{metrics.get('max_abs_diff', float('nan')):.2e})")
    return record


@dataclass(frozen=True)
class _Target:
    """A reduced-precision graph about to be made: its FP32 source and where it goes."""

    fallback: Any  # port.export.autofix.AutoRequest: the layers kept in FP32 (or ``auto``)
    fp32: Record
    src: Path
    out: Path
    art_id: str


def _target(ctx: ExportContext, fmt: Format, precision: str, variant: str | None) -> _Target:
    """Every refusal an FP16/INT8 export can make before converting anything, in the order
    users meet them: reduced reference, fallback flags, the FP32 source, the output file,
    unknown node names."""
    from port.export.autofix import parse_request

    refuse_reduced_reference(ctx)
    # --keep-fp32/--exclude [auto] and --max-fp32-layers are checked before anything is made.
    fallback = parse_request(precision, ctx.options)
    fp32 = ensure_fp32_onnx(ctx)
    src = ctx.run_dir / fp32.path
    out = ctx.run_dir / fmt.file_name(precision, variant)
    art_id = fmt.artifact_id(precision) + (f"-{variant}" if variant else "")
    ctx.claim(out, art_id)
    check_fallback_names(src, fallback)
    return _Target(fallback, fp32, src, out, art_id)


def _finish(ctx: ExportContext, fmt: Format, precision: str, target: _Target,
            params: dict[str, Any], metrics: dict[str, Any]) -> Record:
    """Record the converted graph (parent: the FP32 ONNX) and say so."""
    record = ctx.record(fmt, precision, target.out, art_id=target.art_id, parents=[target.fp32],
                        params=params, metrics=metrics)
    ctx.console.print(f"[green]exported[/green] {record.path} ({precision})")
    return record


def export_onnx_fp16(ctx: ExportContext, fmt: Format, precision: str) -> Record:
    """``--to onnx --precision fp16``: an FP16 graph (FP32 inputs/outputs) from the FP32 ONNX."""
    from port.export.fp16 import convert_fp16

    target = _target(ctx, fmt, precision, None)
    sample = ctx.parity_sample()

    def to_fp16(nodes: Sequence[str], path: Path) -> dict[str, Any]:
        return convert_fp16(target.src, path, keep_fp32=list(nodes), sample_images=sample,
                            card=ctx.card)

    metrics = convert_with_fallback(ctx, target.fallback, target.src, target.out, to_fp16, None,
                                    sample=sample)
    params = {"keep_fp32": fp32_nodes(target.fallback, metrics)}
    return _finish(ctx, fmt, precision, target, params, metrics)


def export_onnx_int8(ctx: ExportContext, fmt: Format, precision: str, *,
                     variant: str | None = None) -> Record:
    """``--to onnx --precision int8``: a QDQ graph from the FP32 ONNX and calibration images
    (``variant`` names a second graph of the same precision, e.g. ``sym``)."""
    from port.export.quantize import quantize_int8

    target = _target(ctx, fmt, precision, variant)
    images, calib = ctx.calibration()
    method = ctx.options.get("calib_method", "minmax")
    # Symmetric int8 activations by default: the graph TensorRT builds is the graph ONNX
    # Runtime checks here. uint8 runs faster on ORT's CPU kernels but TensorRT refuses it.
    activations = ctx.options.get("int8_activations", "int8")
    # Full-range weights by default: the graph TensorRT builds. 7-bit weights are for apps
    # on ONNX Runtime's fast kernels on x86 CPUs without VNNI (see port.engines.int8_cpu).
    weights = ctx.options.get("int8_weights", "full")

    def quantize(nodes: Sequence[str], path: Path) -> dict[str, Any]:
        return quantize_int8(target.src, path, images, method=method, activation_type=activations,
                             weight_range=weights, exclude_nodes=list(nodes),
                             progress=not target.fallback.auto, card=ctx.card)

    metrics = convert_with_fallback(ctx, target.fallback, target.src, target.out, quantize,
                                    images)
    params = {"calib_method": method, "calibration": calib, "quantizer": "onnxruntime",
              "int8_activations": activations, "int8_weights": weights,
              "exclude": fp32_nodes(target.fallback, metrics)}
    return _finish(ctx, fmt, precision, target, params, metrics)
