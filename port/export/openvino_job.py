"""``porter export --to openvino``: an OpenVINO IR (``.xml`` + ``.bin``) of the run's ONNX graph
at the same precision, with porter's card in the IR's rt_info.

The IR is made from the ONNX artifact of the precision asked for (exported first when the run
has none fresh, and recorded too), so its parent is a graph ``evaluate`` checks on ONNX Runtime
as well. Weights are kept as they are (``compress_to_fp16=False``, :mod:`port.export.openvino_ir`):
an FP32 IR is FP32, and the record proves it (:func:`port.export.openvino_ir.ir_precision`).

After writing, the IR runs on OpenVINO (``f32`` inference hint, so a bf16-capable CPU does not
quietly round it) next to its source ONNX on ONNX Runtime, on a real batch of validation
images: the logits' max |difference| and the top-1 agreement are recorded with the artifact.
They are evidence, not a gate: ``porter evaluate --compare`` gates every row on the whole set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from port.export.context import ONNX, ExportContext
from port.export.onnx_job import ensure_fp32_onnx, export_onnx_fp16, export_onnx_int8
from port.formats import Format
from port.manifest import Record

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np


def _onnx_source(ctx: ExportContext, precision: str) -> Record:
    """The run's ONNX graph at ``precision``, exported first when absent or out of date."""
    if precision == "fp32":
        return ensure_fp32_onnx(ctx)
    existing = ctx.fresh(ONNX.artifact_id(precision))
    if existing is not None:
        return existing
    ctx.console.print(f"exporting the {precision.upper()} ONNX model first (the IR is "
                      "converted from it)")
    make = export_onnx_fp16 if precision == "fp16" else export_onnx_int8
    return make(ctx.with_options(ctx.onnx_options()), ONNX, precision)


def _parity(ir: Path, onnx_path: Path, sample: np.ndarray) -> dict[str, Any]:
    """The IR on OpenVINO (f32 hint) against its ONNX source on ONNX Runtime, one real batch."""
    import numpy as np

    from port.engines.onnxrt import OnnxRuntimeRunner
    from port.engines.openvino import OpenVinoRunner

    ir_runner = OpenVinoRunner(str(ir), inference_precision="f32")
    ort_runner = OnnxRuntimeRunner(str(onnx_path))
    with ir_runner, ort_runner:
        name = ir_runner.input_metadata()[0].name
        got = next(iter(ir_runner.infer({name: sample}).values())).astype(np.float64)
        want = next(iter(ort_runner.infer({ort_runner.input_metadata()[0].name: sample})
                         .values())).astype(np.float64)
        compute = ir_runner.compute_precision()
    diff = np.abs(got - want)
    return {
        "against": "onnxruntime",
        "parity_images": int(sample.shape[0]),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "agreement": float(np.mean(got.argmax(axis=1) == want.argmax(axis=1))),
        "compute_precision": compute,
    }


def export_openvino(ctx: ExportContext, fmt: Format, precision: str) -> Record:
    """``--to openvino``: the run's ONNX at ``precision`` as an OpenVINO IR, parity-checked."""
    from port.export.openvino_ir import convert_to_ir, ir_files
    from port.models.card_codec import card_metadata

    source = _onnx_source(ctx, precision)
    sample = ctx.parity_sample()  # before converting: a data problem refuses with nothing made
    art_id = fmt.artifact_id(precision)
    out = ctx.run_dir / fmt.file_name(precision)
    ctx.claim(out, art_id)
    src_path = ctx.run_dir / source.path
    # The card comes from the run (an imported ONNX may carry no porter metadata of its own).
    meta = card_metadata(ctx.card, precision=precision, source_sha256=source.sha256,
                         extra={"source_artifact": source.id})
    metrics = convert_to_ir(src_path, out, card_metadata=meta)
    metrics["parity"] = _parity(out, src_path, sample)
    _, weights = ir_files(out)
    record = ctx.record(fmt, precision, out, art_id=art_id, parents=[source],
                        # external_data: the weights beside the graph, named as an imported
                        # ONNX's are (evaluate's size column counts them with the .xml).
                        params={"source": source.id, "compress_to_fp16": False,
                                "external_data": [weights.name]},
                        metrics=metrics, companions=(weights,))
    parity = metrics["parity"]
    ctx.console.print(f"[green]exported[/green] {record.path} + {weights.name} ({precision}; "
                      f"OpenVINO vs ONNX Runtime on {parity['parity_images']} images: max "
                      f"|diff| {parity['max_abs_diff']:.2e}, top-1 agreement "
                      f"{parity['agreement']:.1%})")
    return record
