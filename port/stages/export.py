"""`porter export`: turn the run's reference into a deployable artifact and record it.

The format registry (``port.export.formats``) decides which ``--to``/``--precision`` pairs exist;
this module checks the flags against the chosen format (a flag that does not apply is refused,
never ignored), resolves inputs from the manifest and records the result with its parents.
FP16 and INT8 ONNX files are made from the FP32 ONNX, which is exported first when the run has
none yet (and recorded too), so every artifact's lineage is explicit.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from port.errors import ManifestError, UsageError
from port.manifest import Manifest, Record
from port.stages.common import (
    check_classes,
    open_run,
    reference,
    reference_card,
    run_data,
)

# Which flags each format understands; anything else given with --to X is refused.
ONNX_OPTIONS = {"opset", "exporter", "data", "calib_data", "calib_images", "calib_method",
                "calib_seed", "keep_fp32", "int8_activations", "int8_weights"}
TRT_OPTIONS = {"data", "calib_data", "calib_images", "calib_method", "calib_seed", "min_batch",
               "opt_batch", "max_batch", "workspace", "timing_cache", "builder_opt_level",
               "version_compatible", "hardware_compatibility", "calibrator", "calib_cache",
               "keep_fp32"}  # keep_fp32: a TensorRT FP16 engine is built from the FP16 ONNX
FORMAT_OPTIONS = {"onnx": ONNX_OPTIONS, "trt": TRT_OPTIONS}
# Options that only make sense for one precision.
PRECISION_OPTIONS = {
    "calib_data": {"int8"}, "calib_images": {"int8"}, "calib_method": {"int8"},
    "calib_seed": {"int8"}, "calibrator": {"int8"}, "calib_cache": {"int8"},
    "int8_activations": {"int8"}, "int8_weights": {"int8"}, "keep_fp32": {"fp16"},
}
DEFAULT_CALIB_IMAGES = 500  # a few hundred images settle min/max and histogram ranges
PARITY_BATCH = 32  # images in the post-export parity check


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate_options(to: str, precision: str, options: dict[str, Any]) -> None:
    """Refuse flags the chosen format or precision does not use (never ignore them silently)."""
    allowed = FORMAT_OPTIONS[to]
    for name in options:
        if name not in allowed:
            users = sorted(f for f, names in FORMAT_OPTIONS.items() if name in names)
            raise UsageError(f"{_flag(name)} does not apply to --to {to} (only to --to "
                             f"{', '.join(users)}): remove it")
        wanted = PRECISION_OPTIONS.get(name)
        if wanted and precision not in wanted:
            raise UsageError(f"{_flag(name)} applies to --precision {'/'.join(sorted(wanted))}, "
                             f"not {precision}: remove it or change --precision")


def artifact_path(run: Path, to: str, precision: str) -> tuple[str, Path]:
    """Stable id and file of an export, e.g. ('onnx-int8', RUN/model.int8.onnx)."""
    from port.export.formats import get_format

    fmt = get_format(to)
    return f"{to}-{precision}", run / f"model.{precision}{fmt.suffix}"


def _load_images(spec_text: str, card: Any, split: str, count: int | None,
                 seed: int) -> tuple[np.ndarray, np.ndarray, Any]:
    """Preprocessed images of a split (a seeded subset of ``count`` images, or all)."""
    from port.data.datasets import load_split, materialize
    from port.data.spec import parse_data_spec

    spec = parse_data_spec(spec_text)
    data = load_split(spec, split, preprocess=card.preprocess, limit=count, seed=seed)
    check_classes(card, data.classes, spec_text)
    images, labels = materialize(data)
    return images, labels, data


def _parity_sample(record: Record, card: Any, options: dict[str, Any]) -> np.ndarray:
    """A real batch of validation images for the export's parity check."""
    spec_text = run_data(record, options.get("data"), "the parity check (a real batch)")
    images, _, _ = _load_images(spec_text, card, "val", PARITY_BATCH, seed=0)
    return images


def _ensure_fp32_onnx(manifest: Manifest, ref: Record, card: Any, options: dict[str, Any],
                      console: Console) -> Record:
    """The run's FP32 ONNX record, exporting it first when absent or out of date."""
    onnx_id, _ = artifact_path(manifest.run_dir, "onnx", "fp32")
    if ref.kind == "onnx":
        return ref  # an imported ONNX is the FP32 graph
    existing = _fresh(manifest, onnx_id)
    if existing is not None:
        return existing
    console.print("exporting the FP32 ONNX model first (FP16/INT8/TensorRT are built from it)")
    return _export_onnx_fp32(manifest, ref, card, options, console)


def _export_onnx_fp32(manifest: Manifest, ref: Record, card: Any, options: dict[str, Any],
                      console: Console) -> Record:
    from port.export.onnx import export_onnx
    from port.models.checkpoint import load_model

    if ref.kind == "onnx":
        raise UsageError("the run's reference is already an ONNX model: export --precision "
                         "fp16/int8 or --to trt from it instead")
    model, _, _ = load_model(manifest.run_dir / ref.path)
    sample = _parity_sample(ref, card, options)
    onnx_id, out = artifact_path(manifest.run_dir, "onnx", "fp32")
    kwargs = {k: options[k] for k in ("opset", "exporter") if k in options}
    metrics = export_onnx(model, card, out, sample=sample, source_sha256=ref.sha256, **kwargs)
    params = {"to": "onnx", "precision": "fp32", **kwargs, "card": card.to_dict()}
    record = manifest.record("export", "onnx", out, id=onnx_id, parents=[ref.id], params=params,
                             metrics=metrics)
    console.print(f"[green]exported[/green] {record.path} (parity max |diff| "
                  f"{metrics.get('max_abs_diff', float('nan')):.2e})")
    return record


def _calibration(manifest: Manifest, ref: Record, card: Any, options: dict[str, Any]
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """Calibration images (training split, evaluation preprocessing) and their record."""
    from port.export.calibration import calibration_record, select_calibration

    spec_text = options.get("calib_data") or (ref.params or {}).get("data")
    if not spec_text:
        raise UsageError("INT8 calibration needs images: pass --calib-data DATA "
                         "(the run has no training data set recorded)")
    seed = int(options.get("calib_seed", 0))
    from port.data.datasets import load_split, materialize, subset
    from port.data.spec import parse_data_spec

    # The training split (calibrating on the evaluation images would flatter the INT8 model),
    # loaded once: its size decides the selection, then the chosen images are preprocessed.
    split_name = "train"
    full = load_split(parse_data_spec(spec_text), split_name, preprocess=card.preprocess)
    check_classes(card, full.classes, spec_text)
    # An explicit --calib-images larger than the split is refused by select_calibration; the
    # default simply takes the whole split when it is smaller.
    count = int(options.get("calib_images", min(DEFAULT_CALIB_IMAGES, len(full))))
    chosen = select_calibration(len(full), count, seed)
    images, _ = materialize(subset(full, list(chosen.indices)))
    record = calibration_record(spec_text, chosen)
    record["split"] = split_name
    return images, record


def _export_onnx_lowp(manifest: Manifest, ref: Record, card: Any, precision: str,
                      options: dict[str, Any], console: Console, *,
                      art_id: str | None = None) -> Record:
    """FP16 or INT8 (QDQ) ONNX made from the FP32 ONNX (``art_id`` names a variant)."""
    fp32 = _ensure_fp32_onnx(manifest, ref, card, options, console)
    src = manifest.run_dir / fp32.path
    default_id, out = artifact_path(manifest.run_dir, "onnx", precision)
    if art_id is not None:
        out = manifest.run_dir / f"model.{art_id.removeprefix('onnx-')}.onnx"
    art_id = art_id or default_id
    params: dict[str, Any] = {"to": "onnx", "precision": precision, "card": card.to_dict()}
    if precision == "int8":
        from port.export.quantize import quantize_int8

        images, calib = _calibration(manifest, ref, card, options)
        method = options.get("calib_method", "minmax")
        # Symmetric int8 activations by default: the graph TensorRT builds is the graph ONNX
        # Runtime checks here. uint8 runs faster on ORT's CPU kernels but TensorRT refuses it.
        activations = options.get("int8_activations", "int8")
        # Full-range weights by default: the graph TensorRT builds. 7-bit weights are for apps
        # on ONNX Runtime's fast kernels on x86 CPUs without VNNI (see port.engines.int8_cpu).
        weights = options.get("int8_weights", "full")
        metrics = quantize_int8(src, out, images, method=method, activation_type=activations,
                                weight_range=weights)
        params.update(calib_method=method, calibration=calib, quantizer="onnxruntime",
                      int8_activations=activations, int8_weights=weights)
    else:
        from port.export.fp16 import convert_fp16

        keep = list(options.get("keep_fp32", []))
        sample = _parity_sample(ref, card, options)
        metrics = convert_fp16(src, out, keep_fp32=keep, sample_images=sample)
        params.update(keep_fp32=keep)
    record = manifest.record("export", "onnx", out, id=art_id, parents=[fp32.id], params=params,
                             metrics=metrics)
    console.print(f"[green]exported[/green] {record.path} ({precision})")
    return record


def _fresh(manifest: Manifest, art_id: str) -> Record | None:
    """The record ``art_id`` when it exists and is fresh, else None."""
    record = manifest.get(art_id)
    return record if record is not None and manifest.state(art_id).name == "fresh" else None


def _trt_int8_source(manifest: Manifest, ref: Record, card: Any, options: dict[str, Any],
                     console: Console) -> tuple[Record, str]:
    """The QDQ ONNX a TensorRT INT8 engine is built from, and which quantizer made it.

    ``choose_quantizer`` decides once and says why (printed here); the artifact is named after
    the quantizer that ran. modelopt's graph is its own ONNX artifact (``onnx-int8-modelopt``,
    so evaluate checks that exact graph on the CPU); ONNX Runtime's is the run's INT8 ONNX
    (symmetric int8 activations), or a symmetric copy of it.
    """
    from port.export.tensorrt import choose_quantizer, quantize_with_modelopt

    method = options.get("calib_method", "minmax")
    choice = choose_quantizer(method)
    console.print(f"INT8 scales for TensorRT from {choice.name}: {choice.why}")
    if choice.name == "modelopt":
        fp32 = _ensure_fp32_onnx(manifest, ref, card, options, console)
        images, calib = _calibration(manifest, ref, card, options)
        art_id = f"onnx-int8-{choice.name}"
        out = manifest.run_dir / f"model.int8-{choice.name}.onnx"
        quantize_with_modelopt(manifest.run_dir / fp32.path, out, images, method=method)
        params = {"to": "onnx", "precision": "int8", "card": card.to_dict(),
                  "calibration": calib, "calib_method": method, "quantizer": choice.name,
                  "why": choice.why}
        record = manifest.record("export", "onnx", out, id=art_id, parents=[fp32.id],
                                 params=params)
        return record, choice.name
    existing = _fresh(manifest, "onnx-int8")
    lowp = {k: v for k, v in options.items() if k in ONNX_OPTIONS}
    if existing is None:
        existing = _export_onnx_lowp(manifest, ref, card, "int8", lowp, console)
    cpu_forms = []  # what makes the run's INT8 ONNX an ONNX Runtime CPU form, not TensorRT's
    if existing.params.get("int8_activations", "int8") != "int8":
        cpu_forms.append("uint8 activations")  # TensorRT cannot build them
    if existing.params.get("int8_weights", "full") != "full":
        cpu_forms.append("7-bit weights")  # a bit of weight precision lost for no GPU reason
    if cpu_forms:
        # Make the symmetric, full-range QDQ graph as an artifact of its own, so `evaluate
        # --compare` checks exactly what the engine is built from.
        console.print(f"the run's INT8 ONNX has {' and '.join(cpu_forms)} (an ONNX Runtime CPU "
                      f"form): quantizing a symmetric full-range int8 copy for TensorRT")
        existing = _fresh(manifest, "onnx-int8-sym") or _export_onnx_lowp(
            manifest, ref, card, "int8",
            {**lowp, "int8_activations": "int8", "int8_weights": "full"}, console,
            art_id="onnx-int8-sym")
    return existing, choice.name


def _export_trt(manifest: Manifest, ref: Record, card: Any, precision: str,
                options: dict[str, Any], console: Console) -> Record:
    """A TensorRT engine (plus JSON sidecar) from the matching ONNX graph."""
    from port.export.tensorrt import build_engine, installed_trt_major
    from port.export.trt_options import options_from_flags, plan_build

    # The options are checked as they are made: flag conflicts come first, before "TensorRT is
    # not installed"; plan_build adds what the installed TensorRT cannot do.
    build_options = options_from_flags(precision, options)
    trt_major = installed_trt_major()  # BackendUnavailable when TensorRT/pycuda/GPU are missing
    plan = plan_build(build_options, trt_major)
    quantizer = None
    # Strongly typed builds need the precision in the graph: build from the FP16/QDQ ONNX.
    if plan.onnx_precision == "fp32":
        source = _ensure_fp32_onnx(manifest, ref, card, options, console)
    elif plan.onnx_precision == "int8":
        source, quantizer = _trt_int8_source(manifest, ref, card, options, console)
    else:
        source = _fresh(manifest, "onnx-fp16")
        if source is None:
            lowp = {k: v for k, v in options.items() if k in ONNX_OPTIONS}
            source = _export_onnx_lowp(manifest, ref, card, "fp16", lowp, console)
    calib_images = None
    params: dict[str, Any] = {"to": "trt", "precision": precision, "card": card.to_dict(),
                              "plan": plan.to_dict(), "quantizer": quantizer}
    if plan.needs_calibrator:
        calib_images, calib = _calibration(manifest, ref, card, options)
        params["calibration"] = calib
    art_id, out = artifact_path(manifest.run_dir, "trt", precision)
    start = time.perf_counter()
    metrics = build_engine(manifest.run_dir / source.path, out, build_options, card,
                           calib_images=calib_images, log_path=out.with_suffix(".build.log"),
                           quantizer=quantizer)
    metrics.setdefault("build_seconds", time.perf_counter() - start)
    params.update(build_options.to_dict())
    record = manifest.record("export", "engine", out, id=art_id, parents=[source.id],
                             params=params, metrics=metrics)
    console.print(f"[green]built[/green] {record.path} ({precision}, "
                  f"{metrics['build_seconds']:.1f} s)")
    return record


def run_export(run: Path, *, to: str, precision: str | None, options: dict[str, Any],
               console: Console) -> Record:
    """Export the reference of ``run`` to ``to``/``precision`` and record it."""
    from port.export.formats import get_format, validate_precision

    fmt = get_format(to)
    precision = precision or "fp32"
    validate_precision(fmt, precision)
    validate_options(to, precision, options)
    manifest = open_run(run)
    ref = reference(manifest)
    card = reference_card(manifest, ref)
    if to == "onnx" and precision == "fp32":
        return _export_onnx_fp32(manifest, ref, card, options, console)
    if to == "onnx":
        return _export_onnx_lowp(manifest, ref, card, precision, options, console)
    if to == "trt":
        return _export_trt(manifest, ref, card, precision, options, console)
    raise ManifestError(f"no exporter wired for --to {to}")  # registry and stages out of sync
