"""`porter evaluate --layerwise ARTIFACT`: compare a port with its reference layer by layer.

Resolves the reference (the run's PyTorch checkpoint, or an imported model's FP32 ONNX graph)
and the artifact (an export's id, an ONNX file, or ``model`` for the reference itself), runs
both on the same validation images, compares every module's output
(:mod:`port.evaluate.layerwise`), writes ``RUN/layerwise/<label>.json`` and ``.png`` and records
them. ``--against DIR`` compares with ``.npy`` activations dumped elsewhere; ``--dump DIR``
writes the reference's activations in that layout.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from port.errors import BackendUnavailable, ModelError, UsageError
from port.evaluate.report import json_safe
from port.limits import MAX_IMAGES, check_float, check_int
from port.manifest import Manifest, Record, run_lock
from port.manifest_params import ReportParams
from port.stages.common import (
    REFERENCE_ID,
    check_classes,
    check_eval_numbers,
    open_run,
    reference,
    reference_card,
    run_data,
)

LAYERWISE_DIR = "layerwise"
BATCH = 16  # images per forward: memory holds one batch of every layer's output, both sides


@dataclass
class LayerwiseRequest:
    """Flags of `porter evaluate --layerwise`."""

    artifact: str
    images: int = 32
    against: Path | None = None
    dump: Path | None = None
    tolerance: float | None = None
    data: str | None = None
    as_json: bool = False
    download: bool = False


@dataclass
class _Side:
    """One side of the comparison: what it is and how it runs."""

    label: str  # artifact id, file name, or the --against directory
    record: Record | None
    precision: str
    source: Any  # TorchSource | OnnxSource | NpySource


def run_layerwise(run: Path, req: LayerwiseRequest, *, console: Console) -> dict[str, Any]:
    """Compare, write ``RUN/layerwise/``, record; returns the result dict (see the JSON)."""
    check_int("--images", req.images, 1, MAX_IMAGES)
    check_float("--tolerance", req.tolerance, lo=0.0)
    manifest = open_run(run)
    with run_lock(run, "evaluate"):
        return _layerwise_locked(run, manifest, req, console=console)


# -- resolving --------------------------------------------------------------------------------
def _resolve(manifest: Manifest, ref: Record, text: str) -> tuple[str, Record | None, Path]:
    """``(label, record or None, file)`` for ``--layerwise TEXT``: an id, or an ONNX file."""
    if text in (REFERENCE_ID, ref.id):
        return ref.id, ref, manifest.abspath(ref)
    record = manifest.get(text)
    if record is None:
        path = Path(text)
        candidates = [path, manifest.run_dir / path]
        file = next((p for p in candidates if p.is_file()), None)
        if file is None:
            ids = [r.id for r in manifest.records() if r.kind in ("onnx", "engine", "checkpoint")]
            raise UsageError(f"--layerwise {text}: no artifact with that id in {manifest.run_dir} "
                             f"and no such file: pass one of {', '.join(ids) or 'model'} or an "
                             ".onnx file")
        same = next((r for r in manifest.records()
                     if manifest.abspath(r).resolve() == file.resolve()), None)
        if same is None:
            if file.suffix.lower() != ".onnx":
                raise UsageError(f"--layerwise {file}: only ONNX files can be compared without a "
                                 "record (export engines with porter export)")
            return _label(file.stem), None, file
        record = same
    manifest.require_fresh(record.id)
    if record.kind not in ("onnx", "engine", "checkpoint"):
        raise UsageError(f"--layerwise {text}: '{record.id}' is a {record.kind}, not a model: "
                         "pass an export id (e.g. onnx-fp16) or an .onnx file")
    return record.id, record, manifest.abspath(record)


def _label(text: str) -> str:
    """A file/record-safe label."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:48]
    return clean or "artifact"


def _precision(record: Record | None, file: Path) -> str:
    """The artifact's precision: recorded, else the ONNX metadata's, else fp32."""
    if record is not None and record.stage == "export":
        return str(record.typed_params.precision or "fp32")
    if file.suffix.lower() == ".onnx":
        from port.export.metadata import read_precision

        return read_precision(file) or "fp32"
    return "fp32"


def _load_onnx(file: Path) -> Any:
    """The ONNX model (with external data), or a ModelError naming the file."""
    import onnx

    try:
        return onnx.load(str(file))
    except Exception as exc:  # protobuf DecodeError, missing external data ...
        raise ModelError(f"{file} is not a readable ONNX model ({str(exc)[:120]}): "
                         "re-export it (porter export --to onnx)") from None


def _source(record: Record | None, file: Path, card: Any, what: str,
            manifest: Manifest) -> Any:
    """TorchSource for a checkpoint, OnnxSource for an ONNX file; engines need TensorRT."""
    from port.evaluate.layerwise import OnnxSource, TorchSource

    if record is not None and record.kind == "checkpoint":
        from port.models.checkpoint import load_model

        model, _, _ = load_model(file)
        return TorchSource(model)
    if (record is not None and record.kind == "engine") or file.suffix in (".engine", ".plan"):
        return _engine_source(record, file, card, manifest)
    return OnnxSource(_load_onnx(file), card, what=what)


def _engine_source(record: Record | None, file: Path, card: Any, manifest: Manifest) -> Any:
    """An engine is compared through a debug build of the ONNX it was made from (GPU)."""
    from port.engines.trt_debug import debug_tensors_supported
    from port.evaluate.layerwise import TrtDebugSource

    why = debug_tensors_supported()
    if why:
        raise BackendUnavailable(f"--layerwise {file.name}: TensorRT engines are compared "
                                 f"through their debug tensors, and {why}: compare the ONNX it "
                                 "was built from instead")
    parents = [manifest.get(p["id"]) for p in record.parents] if record is not None else []
    parent = next((p for p in parents if p is not None and p.kind == "onnx"), None)
    if parent is None:
        raise UsageError(f"--layerwise {file.name}: no recorded ONNX this engine was built from: "
                         "pass the engine's export id (porter export --to trt records it)")
    manifest.require_fresh(parent.id)
    return TrtDebugSource(manifest.abspath(parent), card)


# -- the command ------------------------------------------------------------------------------
def _layerwise_locked(run: Path, manifest: Manifest, req: LayerwiseRequest, *,
                      console: Console) -> dict[str, Any]:
    from port.evaluate.layerwise import DEFAULT_TOLERANCE, NpySource, write_dump

    ref = reference(manifest)
    card = reference_card(manifest, ref)
    label, art_record, art_file = _resolve(manifest, ref, req.artifact)
    is_reference = art_record is not None and art_record.id == ref.id
    if is_reference and req.against is None and req.dump is None:
        raise UsageError(f"--layerwise {req.artifact} is the reference itself: pass an export "
                         "(e.g. onnx-fp16), or add --against DIR / --dump DIR")
    against = NpySource(req.against) if req.against is not None else None

    # The batch: --against's input.npy when it has one, else N validation images.
    images = against.input_batch() if against is not None else None
    spec_text = None
    if images is not None:
        images = _checked_input(images, card, against.dir)  # type: ignore[union-attr]
        dataset = {"input": str(against.dir / NpySource.INPUT),  # type: ignore[union-attr]
                   "images": len(images)}
    else:
        # torch/torchvision come in here, after every refusal that needs no data.
        from port.data.datasets import load_split, materialize
        from port.data.spec import parse_data_spec

        spec_text = run_data(ref, req.data, "the layerwise comparison")
        spec = parse_data_spec(spec_text, download=req.download)
        split = load_split(spec, "val", preprocess=card.preprocess, limit=req.images, seed=0)
        check_classes(card, split.classes, spec_text)
        check_eval_numbers(req.images, (BATCH,), card, len(split))
        images, _ = materialize(split)
        dataset = {"spec": str(spec), "split": split.split, "images": len(images)}

    ref_side = _Side(ref.id, ref, "fp32", _source(ref, manifest.abspath(ref), card,
                                                    "the reference", manifest))
    art_side = ref_side if is_reference else _Side(
        label, art_record, _precision(art_record, art_file),
        _source(art_record, art_file, card, f"--layerwise {label}", manifest))
    # With --against, the artifact (or the reference) is what the dump is checked against.
    base, cand = (art_side, None) if against is not None else (ref_side, art_side)
    # The artifact's precision sets the default tolerance, whichever side the dump is on.
    precision = art_side.precision
    tolerance = req.tolerance if req.tolerance is not None else DEFAULT_TOLERANCE.get(
        precision, DEFAULT_TOLERANCE["fp32"])

    if is_reference and against is None:  # --layerwise model --dump DIR: nothing to compare
        assert req.dump is not None
        dumped = write_dump(req.dump, _base_batches(base, images), len(images))
        console.print(f"dumped input.npy and {len(dumped)} layer(s) of {ref.id} "
                      f"({len(images)} images) to {req.dump}/", highlight=False)
        return {"first_divergence": None, "dumped": str(req.dump), "layers": dumped}
    if hasattr(base.source, "prepare"):  # a TensorRT debug build runs the batch in one go
        base.source.prepare(images)
    if cand is not None and hasattr(cand.source, "prepare"):
        cand.source.prepare(images)
    comparison, unmatched, dumped = _compare(base, cand, against, images, req.dump)
    result = comparison.result(tolerance)
    _annotate(result, against, art_side if cand is not None else None)
    name = label if against is None else f"{label}-against-{_label(against.dir.name)}"
    payload = {
        "artifact": label, "artifact_path": str(art_file), "precision": precision,
        "reference": {"id": base.label if against is not None else ref.id,
                      "kind": (base.record.kind if base.record is not None else "onnx")},
        "against": str(against.dir) if against is not None else None,
        "dataset": dataset,
        "metric": "rel_error = ||candidate - reference||_2 / ||reference||_2 over the batch",
        "tolerance_default": req.tolerance is None,
        **result,
        "unmatched": unmatched,
        "dumped": str(req.dump) if req.dump is not None else None,
    }
    _record(manifest, run, payload, name, ref, art_record, art_file, spec_text, req, dumped)
    if req.as_json:
        import sys

        sys.stdout.write(json.dumps(json_safe(payload), indent=2) + "\n")
    else:
        _print(console, payload, name, run, dumped, req.dump)
    return payload


def _checked_input(images: Any, card: Any, directory: Path) -> Any:
    """``input.npy`` must be a canonical NCHW float batch of the model's size."""
    import numpy as np

    from port.errors import DataError

    size = card.preprocess.crop
    want = (card.channels, size, size)
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise DataError(f"{directory / 'input.npy'} has shape {list(images.shape)} but the model "
                        f"takes [N, {want[0]}, {size}, {size}] (NCHW, preprocessed): dump the "
                        "batch porter writes with --dump, or remove input.npy to use the "
                        "validation images")
    return np.array(images, dtype=np.float32)  # a writable copy (torch wants one), not the map


def _compare(base: _Side, cand: _Side | None, against: Any, images: Any,
             dump: Path | None) -> tuple[Any, list[dict[str, str]], list[str]]:
    """Run both sides batch by batch; returns the comparison, unmatched tensors, dumped keys."""
    from port.evaluate.layerwise import LayerComparison, write_dump

    comparison: LayerComparison | None = None
    order: list[str] = []

    def compared() -> Any:
        nonlocal comparison, order
        for start, chunk, acts in _base_batches(base, images):
            if comparison is None:  # a TorchSource knows its order after the first forward
                order = list(base.source.order)
                tensors, notes = _candidate_tensors(order, cand, against, len(images))
                comparison = LayerComparison(order, tensors, notes=notes, source_tensors=(
                    cand.source.source_tensors if cand is not None else None))
            if cand is not None:
                cand_acts = cand.source.run(chunk)
            else:
                cand_acts = against.slice(start, start + len(chunk))
            comparison.add(acts, cand_acts)
            yield start, chunk, acts

    dumped: list[str] = []
    if dump is not None:
        dumped = write_dump(dump, compared(), len(images))
    else:
        for _ in compared():
            pass
    assert comparison is not None  # images is never empty (--images >= 1)
    return comparison, _unmatched(order, cand, against), dumped


def _base_batches(base: _Side, images: Any) -> Any:
    """``(start, images, {module key: activation})`` of the reference side, batch by batch."""
    from port.evaluate.layerwise import OnnxSource

    src = base.source
    if isinstance(src, OnnxSource):
        for start in range(0, len(images), BATCH):
            chunk = images[start:start + BATCH]
            yield start, chunk, src.keyed(src.run(chunk))
    else:
        for i, (chunk, acts) in enumerate(src.batches(images, BATCH)):
            yield i * BATCH, chunk, acts


def _candidate_tensors(order: list[str], cand: _Side | None, against: Any, n: int
                       ) -> tuple[dict[str, str | None], dict[str, str]]:
    """For each reference key the candidate's tensor (None: none) and why not."""
    tensors: dict[str, str | None] = {}
    notes: dict[str, str] = {}
    if cand is not None:
        for key in order:
            tensors[key] = cand.source.tensors.get(key)
        return tensors, notes
    for key in order:
        array = against.arrays.get(key)
        if array is None:
            tensors[key] = None
            notes[key] = f"missing: no {key}.npy in {against.dir}"
        elif array.ndim == 0 or len(array) < n:
            tensors[key] = None
            notes[key] = (f"misshaped: {key}.npy holds {0 if array.ndim == 0 else len(array)} "
                          f"images, the batch has {n}")
        else:
            tensors[key] = key
    return tensors, notes


def _unmatched(order: list[str], cand: _Side | None, against: Any) -> list[dict[str, str]]:
    """Candidate tensors/files that no reference layer took, each with the reason."""
    known = set(order)
    if cand is not None:
        out = [{"tensor": t, "module": k, "reason": "module output with no reference hook"}
               for k, t in cand.source.tensors.items() if k not in known]
        return out + list(cand.source.map.unmatched)
    return [{"tensor": f"{k}.npy", "reason": "extra: no layer of that name on porter's side "
             "(misnamed, or a module the exporter folded away)"}
            for k in against.arrays if k not in known]


def _annotate(result: dict[str, Any], against: Any, cand: _Side | None) -> None:
    """Say where a module with no tensor of its own went (folded into the next row)."""
    folded_into = {m: e["module"] for e in result["layers"] for m in e.get("folded", [])}
    for entry in result["layers"]:
        if entry.get("note") == "no counterpart":
            target = folded_into.get(entry["module"])
            if cand is not None:
                entry["note"] = (f"no tensor of its own: folded into {target}" if target
                                 else "no tensor of its own in the graph")


# -- output -----------------------------------------------------------------------------------
def _record(manifest: Manifest, run: Path, payload: dict[str, Any], name: str, ref: Record,
            art_record: Record | None, art_file: Path, spec_text: str | None,
            req: LayerwiseRequest, dumped: list[str]) -> None:
    """Write the JSON and the plot atomically and record them (parents: reference, artifact)."""
    from port.atomic import atomic_write_text
    from port.digest import sha256_file
    from port.evaluate.layerwise_report import plot_layerwise

    out_dir = run / LAYERWISE_DIR
    out_dir.mkdir(exist_ok=True)
    json_path = out_dir / f"{name}.json"
    png_path = out_dir / f"{name}.png"
    atomic_write_text(json_path, json.dumps(json_safe(payload), indent=2) + "\n")
    plot_layerwise(payload, png_path)
    parents = [ref] + ([art_record] if art_record is not None and art_record.id != ref.id
                       else [])
    extra: dict[str, Any] = {"layerwise": payload["artifact"], "tolerance": payload["tolerance"],
                             "against": payload["against"], "dump": payload["dumped"],
                             "dumped_layers": len(dumped)}
    if art_record is None:  # an unrecorded ONNX: say which file, by content
        extra["artifact_path"] = str(art_file)
        extra["artifact_sha256"] = sha256_file(art_file)
    manifest.record(
        "evaluate", "layerwise", json_path, id=f"layerwise-{name}"[:64], parents=parents,
        companions=[png_path],
        params=ReportParams(data=spec_text, limit=payload["dataset"]["images"], extra=extra),
        metrics={"first_divergence": payload["first_divergence"],
                 "compared": payload["compared"], "not_compared": payload["not_compared"]},
    )


def _print(console: Console, payload: dict[str, Any], name: str, run: Path,
           dumped: list[str], dump: Path | None) -> None:
    from port.evaluate.layerwise_report import render_layerwise

    console.print(render_layerwise(payload))
    if payload["unmatched"]:
        reasons: dict[str, int] = {}
        for u in payload["unmatched"]:
            reasons[u["reason"]] = reasons.get(u["reason"], 0) + 1
        console.print(f"{len(payload['unmatched'])} tensor(s)/file(s) with no reference "
                      "layer: " + "; ".join(f"{n} x {r}" for r, n in reasons.items()),
                      highlight=False, markup=False)
    first = payload["first_divergence"]
    if first is None:
        console.print(f"[green]no layer over the tolerance[/green] "
                      f"({payload['tolerance']:g}, relative L2 error)")
    else:
        entry = next(e for e in payload["layers"] if e["module"] == first)
        folded = f" (with {', '.join(entry['folded'])} folded into it)" if entry.get(
            "folded") else ""
        console.print(f"[red]first divergence: {first}[/red]{folded}: relative error "
                      f"{_fmt(entry['rel_error'])} > {payload['tolerance']:g}", highlight=False)
    if payload["top_growth"]:
        console.print("most error added by: " + ", ".join(payload["top_growth"]),
                      highlight=False)
    if dump is not None:
        console.print(f"dumped input.npy and {len(dumped)} layer(s) to {dump}/", highlight=False)
    console.print(f"written {run / LAYERWISE_DIR / name}.json and .png", highlight=False)


def _fmt(value: float | None) -> str:
    return "inf" if value is None or not math.isfinite(value) else f"{value:.3g}"
