"""`porter export`: turn the run's reference into a deployable artifact and record it.

The registry (``port.formats``) decides everything about formats: the CLI normalises ``--to``,
``--precision`` and the flags against it (:func:`port.formats.normalize_options` refuses a flag
the format or precision does not use), and :func:`run_export` calls the exporter the registry
names for that format and precision. Every exporter here has the same shape,
``(ctx, fmt, precision) -> Record``. FP16 and INT8 ONNX files are made from the FP32 ONNX, which
is exported first when the run has none yet (and recorded too), so every artifact's lineage is
explicit; before anything is recorded, the file's own content must carry the precision the
record will claim.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from port.errors import ManifestError, UsageError
from port.formats import FORMATS, Format, normalize_format, normalize_options, normalize_precision
from port.manifest import Manifest, Record, run_lock
from port.manifest_params import ExportParams
from port.stages.common import (
    check_classes,
    check_export_numbers,
    open_run,
    reference,
    reference_card,
    run_data,
)

# A few hundred images settle min/max and histogram ranges. Measured on real CIFAR-10
# (bench/int8_calibration.py, README "INT8 defaults, measured"): minmax/entropy/percentile
# with 256, 500 or 1024 images all keep >= 99.8% of FP32 top-1; minmax with 500 is as
# accurate as any and among the cheapest, hence the defaults (method minmax, per-channel).
DEFAULT_CALIB_IMAGES = 500
PARITY_BATCH = 32  # images in the post-export parity check
ONNX = FORMATS["onnx"]


@dataclass(frozen=True)
class ExportRequest:
    """What `porter export` was asked for, already normalised against the registry."""

    fmt: Format
    precision: str
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_flags(cls, to: str, precision: str | None,
                   options: dict[str, Any] | None = None) -> ExportRequest:
        """Normalise the user's spelling once (any letter case; unknown names and flags that
        do not apply are ``UsageError``s listing the valid choices)."""
        fmt = normalize_format(to)
        canonical = normalize_precision(fmt, precision)
        return cls(fmt, canonical, normalize_options(fmt, canonical, options or {}))


@dataclass
class ExportContext:
    """What every exporter works from: the run, its reference and card, the flags."""

    manifest: Manifest
    ref: Record
    card: Any
    options: dict[str, Any]
    console: Console

    def onnx_options(self) -> dict[str, Any]:
        """The flags that also mean something to the ONNX exporters (FP32/FP16/INT8 sources)."""
        names = {o.name for o in ONNX.options}
        return {k: v for k, v in self.options.items() if k in names}


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


def _parity_sample(ctx: ExportContext) -> np.ndarray:
    """A real batch of validation images for the export's parity check."""
    spec_text = run_data(ctx.ref, ctx.options.get("data"), "the parity check (a real batch)")
    images, _, _ = _load_images(spec_text, ctx.card, "val", PARITY_BATCH, seed=0)
    return images


def _fresh(manifest: Manifest, art_id: str) -> Record | None:
    """The record ``art_id`` when it exists and is fresh, else None."""
    record = manifest.get(art_id)
    return record if record is not None and manifest.state(art_id).name == "fresh" else None


def _claim(ctx: ExportContext, out: Path, art_id: str) -> None:
    """Refuse to write ``out`` over a file the manifest does not vouch for.

    A file that is not recorded as ``art_id`` (someone else's work), or that was edited since it
    was recorded, is refused as an edited checkpoint is: porter never silently replaces it. A
    missing or stale artifact is re-made. Every exporter calls this before writing.
    """
    if not out.exists():
        return
    rel = out.relative_to(ctx.manifest.run_dir).as_posix()
    record = ctx.manifest.get(art_id)
    if record is None or record.path != rel:
        raise ManifestError(f"{out} exists but is not recorded in {ctx.manifest.path}: porter "
                            "will not overwrite it; move it away, then export again")
    state = ctx.manifest.state(art_id)
    if state.name == "modified":
        raise ManifestError(f"artifact '{art_id}' ({rel}) is modified: {state.reason}; porter "
                            "will not overwrite an edited file: move it away (or restore it), "
                            "then export again")


def _record(ctx: ExportContext, fmt: Format, precision: str, out: Path, *, art_id: str,
            parents: list[Record], params: dict[str, Any], metrics: dict[str, Any] | None,
            companions: tuple[Path, ...] = ()) -> Record:
    """Record an export after proving the file carries the precision the record will claim.

    A mismatch is a porter bug (the wrong converter ran), never something to record: the file
    is left for inspection and nothing in the manifest changes. ``parents`` are the records the
    export read: the manifest refuses the record if one was re-made meanwhile.
    """
    found = fmt.read_precision(out)
    if found is not None and found != precision:
        raise ManifestError(f"{out.name} holds a {found} graph but was exported as {precision}: "
                            "not recorded; this is a porter bug, please report it")
    typed = ExportParams.from_dict({**params, "to": fmt.name, "precision": precision,
                                    "card": ctx.card.to_dict()})
    return ctx.manifest.record("export", fmt.kind, out, id=art_id, parents=parents,
                               params=typed, metrics=metrics,
                               companions=[p for p in companions if p.is_file()])


def _ensure_fp32_onnx(ctx: ExportContext) -> Record:
    """The run's FP32 ONNX record, exporting it first when absent or out of date."""
    if ctx.ref.kind == ONNX.kind:
        return ctx.ref  # an imported ONNX is the FP32 graph
    existing = _fresh(ctx.manifest, ONNX.artifact_id("fp32"))
    if existing is not None:
        return existing
    ctx.console.print("exporting the FP32 ONNX model first (FP16/INT8/TensorRT are built from "
                      "it)")
    return export_onnx_fp32(ctx, ONNX, "fp32")


def _refuse_reduced_reference(ctx: ExportContext) -> None:
    """An imported FP16/INT8 ONNX reference: no ONNX precision can be made from it (FP16 and
    INT8 are made from an FP32 graph); said before any data is asked for or loaded."""
    precision = (ctx.ref.params or {}).get("precision") or "fp32"
    if ctx.ref.kind == ONNX.kind and precision != "fp32":
        raise UsageError(f"the run's reference is already an ONNX model ({precision}): "
                         "evaluate it as it is, or build an engine from it with --to trt; "
                         "import the FP32 model to export other precisions")


def export_onnx_fp32(ctx: ExportContext, fmt: Format, precision: str) -> Record:
    """``--to onnx --precision fp32``: torch.onnx export of the checkpoint, parity-checked."""
    from port.export.onnx import export_onnx
    from port.models.checkpoint import load_model

    if ctx.ref.kind == ONNX.kind:
        _refuse_reduced_reference(ctx)
        raise UsageError("the run's reference is already an ONNX model: export --precision "
                         "fp16/int8 or --to trt from it instead")
    model, _, _ = load_model(ctx.manifest.run_dir / ctx.ref.path)
    sample = _parity_sample(ctx)
    out = ctx.manifest.run_dir / fmt.file_name(precision)
    _claim(ctx, out, fmt.artifact_id(precision))
    kwargs = {k: ctx.options[k] for k in ("opset", "exporter") if k in ctx.options}
    metrics = export_onnx(model, ctx.card, out, sample=sample, source_sha256=ctx.ref.sha256,
                          **kwargs)
    record = _record(ctx, fmt, precision, out, art_id=fmt.artifact_id(precision),
                     parents=[ctx.ref], params=kwargs, metrics=metrics)
    ctx.console.print(f"[green]exported[/green] {record.path} (parity max |diff| "
                      f"{metrics.get('max_abs_diff', float('nan')):.2e})")
    return record


def _calibration(ctx: ExportContext) -> tuple[np.ndarray, dict[str, Any]]:
    """Calibration images (training split, evaluation preprocessing) and their record."""
    from port.data.datasets import load_split, materialize, subset
    from port.data.spec import parse_data_spec
    from port.export.calibration import calibration_record, select_calibration

    spec_text = ctx.options.get("calib_data") or ctx.ref.typed_params.data
    if not spec_text:
        raise UsageError("INT8 calibration needs images: pass --calib-data DATA "
                         "(the run has no training data set recorded)")
    seed = int(ctx.options.get("calib_seed", 0))
    # The training split (calibrating on the evaluation images would flatter the INT8 model),
    # loaded once: its size decides the selection, then the chosen images are preprocessed.
    split_name = "train"
    full = load_split(parse_data_spec(spec_text), split_name, preprocess=ctx.card.preprocess)
    check_classes(ctx.card, full.classes, spec_text)
    # An explicit --calib-images larger than the split is refused by select_calibration; the
    # default simply takes the whole split when it is smaller.
    count = int(ctx.options.get("calib_images", min(DEFAULT_CALIB_IMAGES, len(full))))
    chosen = select_calibration(len(full), count, seed)
    images, _ = materialize(subset(full, list(chosen.indices)))
    record = calibration_record(spec_text, chosen)
    record["split"] = split_name
    return images, record


def export_onnx_lowp(ctx: ExportContext, fmt: Format, precision: str, *,
                     variant: str | None = None) -> Record:
    """``--to onnx --precision fp16|int8``: FP16 graph or INT8 QDQ graph from the FP32 ONNX
    (``variant`` names a second graph of the same precision, e.g. ``sym``)."""
    from port.export.autofix import parse_request

    _refuse_reduced_reference(ctx)
    # --keep-fp32/--exclude [auto] and --max-fp32-layers are checked before anything is made.
    fallback = parse_request(precision, ctx.options)
    fp32 = _ensure_fp32_onnx(ctx)
    src = ctx.manifest.run_dir / fp32.path
    out = ctx.manifest.run_dir / fmt.file_name(precision, variant)
    art_id = fmt.artifact_id(precision) + (f"-{variant}" if variant else "")
    _claim(ctx, out, art_id)
    _check_fallback_names(src, fallback)
    params: dict[str, Any] = {}
    if precision == "int8":
        from port.export.quantize import quantize_int8

        images, calib = _calibration(ctx)
        method = ctx.options.get("calib_method", "minmax")
        # Symmetric int8 activations by default: the graph TensorRT builds is the graph ONNX
        # Runtime checks here. uint8 runs faster on ORT's CPU kernels but TensorRT refuses it.
        activations = ctx.options.get("int8_activations", "int8")
        # Full-range weights by default: the graph TensorRT builds. 7-bit weights are for apps
        # on ONNX Runtime's fast kernels on x86 CPUs without VNNI (see port.engines.int8_cpu).
        weights = ctx.options.get("int8_weights", "full")

        def quantize(nodes: Sequence[str], path: Path) -> dict[str, Any]:
            return quantize_int8(src, path, images, method=method, activation_type=activations,
                                 weight_range=weights, exclude_nodes=list(nodes),
                                 progress=not fallback.auto, card=ctx.card)

        metrics = _convert_with_fallback(ctx, fallback, src, out, quantize, images)
        params.update(calib_method=method, calibration=calib, quantizer="onnxruntime",
                      int8_activations=activations, int8_weights=weights,
                      exclude=_fp32_nodes(fallback, metrics))
    elif precision == "fp16":
        from port.export.fp16 import convert_fp16

        sample = _parity_sample(ctx)

        def to_fp16(nodes: Sequence[str], path: Path) -> dict[str, Any]:
            return convert_fp16(src, path, keep_fp32=list(nodes), sample_images=sample,
                                card=ctx.card)

        metrics = _convert_with_fallback(ctx, fallback, src, out, to_fp16, None, sample=sample)
        params.update(keep_fp32=_fp32_nodes(fallback, metrics))
    else:  # the registry routes only fp16/int8 here
        raise ManifestError(f"export_onnx_lowp cannot make {precision}: the format registry "
                            "and the export stage disagree (a porter bug)")
    record = _record(ctx, fmt, precision, out, art_id=art_id, parents=[fp32], params=params,
                     metrics=metrics)
    ctx.console.print(f"[green]exported[/green] {record.path} ({precision})")
    return record


def _check_fallback_names(src: Path, fallback: Any) -> None:
    """Refuse unknown --keep-fp32/--exclude node names before calibrating or converting."""
    if fallback.named:
        import onnx

        from port.export.autofix import FLAGS, check_node_names

        check_node_names(onnx.load(str(src), load_external_data=False), fallback.named,
                         FLAGS[fallback.precision])


def _fp32_nodes(fallback: Any, metrics: dict[str, Any]) -> list[str]:
    """The nodes the written graph keeps in FP32: those named, or those the search chose."""
    auto = metrics.get("autofix")
    return list(auto["chosen"]) if auto else list(fallback.named)


def _convert_with_fallback(ctx: ExportContext, fallback: Any, src: Path, out: Path,
                           convert: Any, sensitivity_images: np.ndarray | None, *,
                           sample: np.ndarray | None = None) -> dict[str, Any]:
    """Convert with the named layers in FP32, or search for them (``auto``,
    ``port.export.autofix``): ranked on training images, judged on held-out validation images.
    With ``auto`` the metrics carry ``autofix`` (chosen layers, every step, the stop reason)."""
    if not fallback.auto:
        return convert(fallback.named, out)
    from port.export.autofix import (
        FLAGS,
        HELDOUT_IMAGES,
        SENSITIVITY_IMAGES,
        HeldoutCheck,
        fp16_required,
        run_autofix,
    )

    flag = FLAGS[fallback.precision]
    spec_text = run_data(ctx.ref, ctx.options.get("data"), f"{flag} auto (held-out images)")
    images, labels, _ = _load_images(spec_text, ctx.card, "val", HELDOUT_IMAGES, seed=0)
    if sensitivity_images is None:
        sensitivity_images, _, _ = _load_images(spec_text, ctx.card, "train",
                                                SENSITIVITY_IMAGES, seed=0)
    start = list(fallback.named)
    if fallback.precision == "fp16":
        # Layers the pre-flight says would overflow come first: without them FP16 computes inf.
        start += [n for n in fp16_required(src, sample, start) if n not in start]
    ctx.console.print(f"{flag} auto: {len(start)} layer(s) in FP32 to start, up to "
                      f"{fallback.max_layers} step(s), gate judged on {len(images)} held-out "
                      "validation images", soft_wrap=True)
    result = run_autofix(fallback, src, out, convert, start=start,
                         sensitivity_images=sensitivity_images[:SENSITIVITY_IMAGES],
                         heldout=HeldoutCheck(src, images, labels), console=ctx.console)
    if not result.passed:
        ctx.console.print(f"[red]{flag} auto did not reach the {fallback.precision} gate[/red] "
                          f"({result.stop_reason}); wrote the best model found "
                          f"({len(result.chosen)} FP32 layer(s)): exit 1", soft_wrap=True)
    metrics = dict(result.convert_metrics)
    metrics["autofix"] = result.to_dict()
    return metrics


def _trt_int8_source(ctx: ExportContext) -> tuple[Record, str]:
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
        fp32 = _ensure_fp32_onnx(ctx)
        images, calib = _calibration(ctx)
        out = ctx.manifest.run_dir / ONNX.file_name("int8", choice.name)
        _claim(ctx, out, f"{ONNX.artifact_id('int8')}-{choice.name}")
        quantize_with_modelopt(ctx.manifest.run_dir / fp32.path, out, images, method=method,
                               card=ctx.card)
        params = {"calibration": calib, "calib_method": method, "quantizer": choice.name,
                  "why": choice.why}
        record = _record(ctx, ONNX, "int8", out, art_id=f"{ONNX.artifact_id('int8')}-"
                         f"{choice.name}", parents=[fp32], params=params, metrics=None)
        return record, choice.name
    onnx_ctx = ExportContext(ctx.manifest, ctx.ref, ctx.card, ctx.onnx_options(), ctx.console)
    existing = _fresh(ctx.manifest, ONNX.artifact_id("int8"))
    if existing is None:
        existing = export_onnx_lowp(onnx_ctx, ONNX, "int8")
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
        existing = (_fresh(ctx.manifest, f"{ONNX.artifact_id('int8')}-sym")
                    or export_onnx_lowp(onnx_ctx, ONNX, "int8", variant="sym"))
    return existing, choice.name


def export_trt(ctx: ExportContext, fmt: Format, precision: str) -> Record:
    """``--to trt``: a TensorRT engine (plus JSON sidecar) from the matching ONNX graph."""
    from port.export.tensorrt import build_engine, installed_trt_major
    from port.export.trt_options import options_from_flags, plan_build

    # The options are checked as they are made: flag conflicts come first, before "TensorRT is
    # not installed"; plan_build adds what the installed TensorRT cannot do.
    build_options = options_from_flags(precision, ctx.options)
    trt_major = installed_trt_major()  # BackendUnavailable when TensorRT/pycuda/GPU are missing
    plan = plan_build(build_options, trt_major)
    quantizer = None
    # Strongly typed builds need the precision in the graph: build from the FP16/QDQ ONNX.
    if plan.onnx_precision == "fp32":
        source = _ensure_fp32_onnx(ctx)
    elif plan.onnx_precision == "int8":
        source, quantizer = _trt_int8_source(ctx)
    else:
        source = _fresh(ctx.manifest, ONNX.artifact_id("fp16")) or export_onnx_lowp(
            ExportContext(ctx.manifest, ctx.ref, ctx.card, ctx.onnx_options(), ctx.console),
            ONNX, "fp16")
    calib_images = None
    params: dict[str, Any] = {"plan": plan.to_dict(), "quantizer": quantizer}
    if plan.needs_calibrator:
        calib_images, calib = _calibration(ctx)
        params["calibration"] = calib
    out = ctx.manifest.run_dir / fmt.file_name(precision)
    _claim(ctx, out, fmt.artifact_id(precision))
    start = time.perf_counter()
    metrics = build_engine(ctx.manifest.run_dir / source.path, out, build_options, ctx.card,
                           calib_images=calib_images, log_path=out.with_suffix(".build.log"),
                           quantizer=quantizer)
    metrics.setdefault("build_seconds", time.perf_counter() - start)
    auto = (source.metrics or {}).get("autofix")
    if auto is not None:  # the engine is built from a searched graph: carry the verdict, so a
        # search that missed the gate fails `porter export --to trt` too (cli: exit 1)
        metrics["autofix"] = {**auto, "graph": source.id}
    params.update(build_options.to_dict())
    from port.engines.trt_sidecar import sidecar_path

    # The sidecar apps read and the build log are covered by the engine's record.
    record = _record(ctx, fmt, precision, out, art_id=fmt.artifact_id(precision),
                     parents=[source], params=params, metrics=metrics,
                     companions=(sidecar_path(out), out.with_suffix(".build.log")))
    ctx.console.print(f"[green]built[/green] {record.path} ({precision}, "
                      f"{metrics['build_seconds']:.1f} s)")
    return record


def _triton_sources(ctx: ExportContext, precision: str) -> list[Record]:
    """The fresh ONNX files and engines of the run at ``precision``, in manifest order.

    The ONNX graph of that precision is exported first when the run has none yet (an engine is
    never built here: that needs a GPU, ``porter export --to trt``).
    """
    from port.export.triton import PLATFORMS

    if precision == "fp32":
        _ensure_fp32_onnx(ctx)
    elif _fresh(ctx.manifest, ONNX.artifact_id(precision)) is None:
        ctx.console.print(f"exporting the {precision.upper()} ONNX model first")
        export_onnx_lowp(ExportContext(ctx.manifest, ctx.ref, ctx.card, {}, ctx.console),
                         ONNX, precision)
    chosen = []
    for record in ctx.manifest.records():
        if record.kind not in PLATFORMS or _fresh(ctx.manifest, record.id) is None:
            continue
        # An imported ONNX reference is the FP32 graph; exports say their precision.
        carried = "fp32" if record.id == ctx.ref.id else record.typed_params.precision
        if carried == precision:
            chosen.append(record)
    return chosen


def export_triton(ctx: ExportContext, fmt: Format, precision: str) -> Record:
    """``--to triton --model-repo DIR``: a Triton model repository of every fresh ONNX file and
    engine of the run at ``precision`` (one model each), indexed by ``model.<p>.triton.json``.

    The repository's files are the record's companions (keyed by absolute path when the
    repository is outside the run), so an edited ``config.pbtxt`` makes the record ``modified``
    and a re-export refuses to overwrite it. Model folders an earlier export of this record
    wrote and that are unchanged are replaced; anything else in the repository is left alone,
    and a model folder porter did not write is refused.
    """
    import json

    from port.atomic import atomic_write_text
    from port.engines.trt_sidecar import read_sidecar, sidecar_path
    from port.export import triton
    from port.limits import check_int

    if ctx.options.get("model_repo") is None:
        raise UsageError("--to triton needs --model-repo DIR: the folder to write the Triton "
                         "model repository to")
    instances = check_int("--instances", ctx.options.get("instances"), 1, 64) or 1
    run = ctx.manifest.run_dir
    repo = triton.check_repository(Path(ctx.options["model_repo"]), run)
    art_id = fmt.artifact_id(precision)
    out = run / fmt.file_name(precision)
    _claim(ctx, out, art_id)
    previous = ctx.manifest.get(art_id)
    # The files an earlier export of this record wrote, if they are still as it wrote them.
    owned = set()
    # (a fresh or stale record: its companions were checked; a missing index vouches for none)
    if previous is not None and ctx.manifest.state(art_id).name in ("fresh", "stale"):
        owned = {(run / key).resolve() for key in (previous.metrics or {}).get("files", {})}
    sources = _triton_sources(ctx, precision)
    if not sources:
        raise UsageError(f"the run has no fresh {precision} ONNX file or engine for Triton: "
                         f"export one with `porter export --to onnx --precision {precision}`")
    specs = []
    for record in sources:
        path = run / record.path
        name = triton.model_name(run, record.id)
        if record.kind == "engine":
            spec = triton.engine_model(name, path, read_sidecar(sidecar_path(path)),
                                       instances=instances)
        else:
            spec = triton.onnx_model(name, path, instances=instances)
        folder = repo / spec.name
        theirs = [f for f in folder.rglob("*") if f.is_file() and f.resolve() not in owned]
        if theirs:
            raise ManifestError(f"{folder} holds files porter did not write for '{art_id}' (or "
                                f"they were edited since, e.g. {theirs[0].name}): move the "
                                "folder away, then export again")
        specs.append(spec)
    # Replace this record's earlier models: unchanged files only (checked above).
    triton.remove_files(sorted(f for f in owned if f.is_file() and repo in f.parents), repo)
    written: list[Path] = []
    for spec in specs:
        written += triton.write_model(repo, spec)
    index = {
        "format": "porter.triton-repository/1",
        "repository": str(repo),
        "precision": precision,
        "models": [{"name": s.name, "platform": s.platform, "artifact": r.id,
                    "source": r.path, "source_sha256": r.sha256,
                    "files": triton.relative_to_repo(triton.model_files(repo, s), repo)}
                   for s, r in zip(specs, sources, strict=True)],
    }
    atomic_write_text(out, json.dumps(index, indent=2) + "\n")
    record = _record(ctx, fmt, precision, out, art_id=art_id, parents=sources,
                     params={"model_repo": str(repo), "instances": instances},
                     metrics={"models": [s.name for s in specs]}, companions=tuple(written))
    ctx.console.print(f"[green]wrote[/green] Triton model repository {repo} "
                      f"({', '.join(s.name for s in specs)}); serve it with `tritonserver "
                      f"--model-repository {repo}`")
    return record


def run_export(run: Path, request: ExportRequest, *, console: Console) -> Record:
    """Export the reference of ``run`` as ``request`` asks, through the registry's exporter."""
    fmt, precision = request.fmt, request.precision
    if precision not in fmt.precisions:  # ExportRequest.from_flags guarantees this
        raise UsageError(f"--to {fmt.name} does not support precision '{precision}'")
    manifest = open_run(run)
    # Held from the first read to the last record: parents are what this export read, and a
    # second writer of the run is refused (port.manifest_lock).
    with run_lock(run, "export"):
        ref = reference(manifest)
        card = reference_card(manifest, ref)
        check_export_numbers(request.options, card)  # before anything is allocated
        ctx = ExportContext(manifest, ref, card, dict(request.options), console)
        return fmt.exporter(precision)(ctx, fmt, precision)
