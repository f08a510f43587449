"""``porter export --to trt``: a TensorRT engine (plus its JSON sidecar) from an ONNX graph.

One exporter serves every precision: the build plan (:func:`port.export.trt_options.plan_build`)
decides which ONNX graph the engine is built from (strongly typed builds need the precision in
the graph) and whether the classic INT8 calibrator runs. The source graph is exported first when
the run has none fresh, so the engine's parent is an ONNX artifact ``evaluate`` checks as well.
"""

from __future__ import annotations

import time
from typing import Any

from port.export.context import ONNX, ExportContext
from port.export.onnx_job import ensure_fp32_onnx, export_onnx_fp16, export_onnx_int8
from port.formats import Format
from port.manifest import Record


def trt_int8_source(ctx: ExportContext) -> tuple[Record, str]:
    """The QDQ ONNX a TensorRT INT8 engine is built from, and which quantizer made it.

    ``choose_quantizer`` decides once and says why (printed here); the artifact is named after
    the quantizer that ran. modelopt's graph is its own ONNX artifact (``onnx-int8-modelopt``,
    so evaluate checks that exact graph on the CPU); ONNX Runtime's is the run's INT8 ONNX
    (symmetric int8 activations, full-range weights), or a copy of it in that form.
    """
    from port.export.tensorrt import choose_quantizer, quantize_with_modelopt

    method = ctx.options.get("calib_method", "minmax")
    choice = choose_quantizer(method)
    ctx.console.print(f"INT8 scales for TensorRT from {choice.name}: {choice.why}")
    if choice.name == "modelopt":
        fp32 = ensure_fp32_onnx(ctx)
        images, calib = ctx.calibration()
        out = ctx.run_dir / ONNX.file_name("int8", choice.name)
        ctx.claim(out, f"{ONNX.artifact_id('int8')}-{choice.name}")
        quantize_with_modelopt(ctx.run_dir / fp32.path, out, images, method=method,
                               card=ctx.card)
        params = {"calibration": calib, "calib_method": method, "quantizer": choice.name,
                  "why": choice.why}
        record = ctx.record(ONNX, "int8", out, art_id=f"{ONNX.artifact_id('int8')}-"
                            f"{choice.name}", parents=[fp32], params=params, metrics=None)
        return record, choice.name
    onnx_ctx = ctx.with_options(ctx.onnx_options())
    existing = ctx.fresh(ONNX.artifact_id("int8"))
    if existing is None:
        existing = export_onnx_int8(onnx_ctx, ONNX, "int8")
    made = existing.typed_params
    cpu_forms = []  # what makes the run's INT8 ONNX an ONNX Runtime CPU form, not TensorRT's
    if made.int8_activations != "int8":
        cpu_forms.append("uint8 activations")  # TensorRT cannot build them
    if made.int8_weights != "full":
        cpu_forms.append("7-bit weights")  # a bit of weight precision lost for no GPU reason
    if not made.tensorrt_form():
        # Make the symmetric, full-range QDQ graph as an artifact of its own, so `evaluate
        # --compare` checks exactly what the engine is built from.
        ctx.console.print(f"the run's INT8 ONNX has {' and '.join(cpu_forms)} (an ONNX Runtime "
                          "CPU form): quantizing a symmetric full-range int8 copy for TensorRT")
        onnx_ctx.options.update(int8_activations="int8", int8_weights="full")
        existing = (ctx.fresh(f"{ONNX.artifact_id('int8')}-sym")
                    or export_onnx_int8(onnx_ctx, ONNX, "int8", variant="sym"))
    return existing, choice.name


def _source(ctx: ExportContext, onnx_precision: str) -> tuple[Record, str | None]:
    """The ONNX record the engine is built from (the plan's graph precision) and, for INT8
    QDQ graphs, the quantizer that made it."""
    if onnx_precision == "fp32":
        return ensure_fp32_onnx(ctx), None
    if onnx_precision == "int8":
        return trt_int8_source(ctx)
    fp16 = ctx.fresh(ONNX.artifact_id("fp16")) or export_onnx_fp16(
        ctx.with_options(ctx.onnx_options()), ONNX, "fp16")
    return fp16, None


def export_trt(ctx: ExportContext, fmt: Format, precision: str) -> Record:
    """``--to trt``: a TensorRT engine (plus JSON sidecar) from the matching ONNX graph."""
    from port.engines.trt_sidecar import sidecar_path
    from port.export.tensorrt import build_engine, installed_trt_major
    from port.export.trt_options import options_from_flags, plan_build

    # The options are checked as they are made: flag conflicts come first, before "TensorRT is
    # not installed"; plan_build adds what the installed TensorRT cannot do.
    build_options = options_from_flags(precision, ctx.options)
    trt_major = installed_trt_major()  # BackendUnavailable when TensorRT/pycuda/GPU are missing
    plan = plan_build(build_options, trt_major)
    # Strongly typed builds need the precision in the graph: build from the FP16/QDQ ONNX.
    source, quantizer = _source(ctx, plan.onnx_precision)
    calib_images = None
    params: dict[str, Any] = {"plan": plan.to_dict(), "quantizer": quantizer}
    if plan.needs_calibrator:
        calib_images, calib = ctx.calibration()
        params["calibration"] = calib
    out = ctx.run_dir / fmt.file_name(precision)
    ctx.claim(out, fmt.artifact_id(precision))
    start = time.perf_counter()
    metrics = build_engine(ctx.run_dir / source.path, out, build_options, ctx.card,
                           calib_images=calib_images, log_path=out.with_suffix(".build.log"),
                           quantizer=quantizer)
    metrics.setdefault("build_seconds", time.perf_counter() - start)
    auto = (source.metrics or {}).get("autofix")
    if auto is not None:  # the engine is built from a searched graph: carry the verdict, so a
        # search that missed the gate fails `porter export --to trt` too (cli: exit 1)
        metrics["autofix"] = {**auto, "graph": source.id}
    params.update(build_options.to_dict())
    # The sidecar apps read and the build log are covered by the engine's record.
    record = ctx.record(fmt, precision, out, art_id=fmt.artifact_id(precision),
                        parents=[source], params=params, metrics=metrics,
                        companions=(sidecar_path(out), out.with_suffix(".build.log")))
    ctx.console.print(f"[green]built[/green] {record.path} ({precision}, "
                      f"{metrics['build_seconds']:.1f} s)")
    return record
