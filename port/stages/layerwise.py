"""`porter evaluate --layerwise ARTIFACT`: compare a port with its reference layer by layer.

Resolves the reference (the run's PyTorch checkpoint, or an imported model's FP32 ONNX graph),
the artifact (an export's id, an ONNX file, or ``model`` for the reference itself) and the images
(validation images, or ``--against DIR``'s ``input.npy``), has
:mod:`port.evaluate.layerwise_job` compare every module's output, writes
``RUN/layerwise/<label>.json`` and ``.png`` and records them. ``--against DIR`` compares with
``.npy`` activations dumped elsewhere; ``--dump DIR`` writes the reference's activations in that
layout.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from port.evaluate.report import json_safe
from port.formats import FORMATS, Format, format_for_kind, resolve
from port.ground.errors import ModelError, UsageError
from port.ground.limits import MAX_IMAGES, check_float, check_int
from port.ground.vocab import REFERENCE_ID
from port.manifest import Manifest, Record, run_lock
from port.manifest.params import ReportParams
from port.stages.common import (
    check_classes,
    check_eval_numbers,
    open_run,
    reference,
    reference_card,
    run_data,
)

LAYERWISE_DIR = "layerwise"
ONNX = FORMATS["onnx"]


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
            ids = [r.id for r in manifest.records() if r.kind in _layerwise_kinds()]
            raise UsageError(f"--layerwise {text}: no artifact with that id in {manifest.run_dir} "
                             f"and no such file: pass one of {', '.join(ids) or 'model'} or an "
                             ".onnx file")
        same = next((r for r in manifest.records()
                     if manifest.abspath(r).resolve() == file.resolve()), None)
        if same is None:
            if file.suffix.lower() not in ONNX.suffixes:
                raise UsageError(f"--layerwise {file}: only ONNX files can be compared without a "
                                 "record (export engines with porter export)")
            return _label(file.stem), None, file
        record = same
    manifest.require_fresh(record.id)
    _layerwise_format(record.kind, f"--layerwise {text}: '{record.id}'")
    return record.id, record, manifest.abspath(record)


def _layerwise_kinds() -> list[str]:
    """The manifest kinds whose format can be compared layer by layer (the registry says)."""
    return [f.kind for f in FORMATS.values() if f.layerwise]


def _layerwise_format(kind: str, what: str) -> Format:
    """The format of ``kind`` if it can be compared layer by layer, else ``UsageError``."""
    fmt = format_for_kind(kind)
    if fmt is None or not fmt.layerwise:
        raise UsageError(f"{what} is of kind {kind}, which --layerwise cannot compare layer "
                         f"by layer: pass an artifact of kind "
                         f"{', '.join(_layerwise_kinds())} (e.g. onnx-fp16) or an .onnx file")
    return fmt


def _label(text: str) -> str:
    """A file/record-safe label."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:48]
    return clean or "artifact"


def _precision(record: Record | None, file: Path) -> str:
    """The artifact's precision: recorded, else the ONNX metadata's, else fp32."""
    if record is not None and record.stage == "export":
        return str(record.typed_params.precision or "fp32")
    if file.suffix.lower() in ONNX.suffixes:
        from port.models.card_codec import read_precision

        return read_precision(file) or "fp32"
    return "fp32"


def _side(label: str, record: Record | None, file: Path, card: Any, what: str,
          manifest: Manifest, precision: str) -> Any:
    """The side that runs the artifact, made by its format's layerwise entry
    (``port.formats.Format.layerwise``: a checkpoint in torch, an ONNX on ORT, an engine as a
    debug build of the ONNX it was made from)."""
    from port.evaluate.layerwise_job import SideInput

    fmt = _layerwise_format(record.kind if record is not None else ONNX.kind, what)
    return resolve(fmt.layerwise)(SideInput(label, record, file, card, what, manifest,
                                            precision, fmt.kind))


def _images(ref: Record, card: Any, req: LayerwiseRequest, against: Any
            ) -> tuple[Any, dict[str, Any], str | None]:
    """The batch (``--against``'s input.npy when it has one, else N validation images), how
    the report names it, and the data spec text (None for input.npy)."""
    from port.evaluate.layerwise_job import BATCH, checked_input

    images = against.input_batch() if against is not None else None
    if images is not None:
        images = checked_input(images, card, against.dir)
        return images, {"input": str(against.dir / against.INPUT), "images": len(images)}, None
    # torch/torchvision come in here, after every refusal that needs no data.
    from port.data.datasets import load_split, materialize
    from port.data.spec import parse_data_spec

    spec_text = run_data(ref, req.data, "the layerwise comparison")
    spec = parse_data_spec(spec_text, download=req.download)
    split = load_split(spec, "val", preprocess=card.preprocess, limit=req.images, seed=0)
    check_classes(card, split.classes, spec_text)
    check_eval_numbers(req.images, (BATCH,), card, len(split))
    images, _ = materialize(split)
    return images, {"spec": str(spec), "split": split.split, "images": len(images)}, spec_text


# -- the command ------------------------------------------------------------------------------
def _layerwise_locked(run: Path, manifest: Manifest, req: LayerwiseRequest, *,
                      console: Console) -> dict[str, Any]:
    from port.evaluate.layerwise import NpySource
    from port.evaluate.layerwise_job import compare_sides, default_tolerance, dump_reference
    from port.evaluate.layerwise_report import print_layerwise

    ref = reference(manifest)
    card = reference_card(manifest, ref)
    label, art_record, art_file = _resolve(manifest, ref, req.artifact)
    is_reference = art_record is not None and art_record.id == ref.id
    if is_reference and req.against is None and req.dump is None:
        raise UsageError(f"--layerwise {req.artifact} is the reference itself: pass an export "
                         "(e.g. onnx-fp16), or add --against DIR / --dump DIR")
    against = NpySource(req.against) if req.against is not None else None
    images, dataset, spec_text = _images(ref, card, req, against)

    ref_side = _side(ref.id, ref, manifest.abspath(ref), card, "the reference", manifest, "fp32")
    art_side = ref_side if is_reference else _side(
        label, art_record, art_file, card, f"--layerwise {label}", manifest,
        _precision(art_record, art_file))
    # With --against, the artifact (or the reference) is what the dump is checked against.
    base, cand = (art_side, None) if against is not None else (ref_side, art_side)
    # The artifact's precision sets the default tolerance, whichever side the dump is on.
    precision = art_side.precision
    tolerance = req.tolerance if req.tolerance is not None else default_tolerance(precision)

    if is_reference and against is None:  # --layerwise model --dump DIR: nothing to compare
        assert req.dump is not None
        dumped = dump_reference(base, images, req.dump)
        console.print(f"dumped input.npy and {len(dumped)} layer(s) of {ref.id} "
                      f"({len(images)} images) to {req.dump}/", highlight=False)
        return {"first_divergence": None, "dumped": str(req.dump), "layers": dumped}
    result, unmatched, dumped = compare_sides(base, cand, against, images, req.dump, tolerance)
    if result["compared"] == 0:  # no verdict: "no layer over the tolerance" would be a lie
        raise ModelError(_nothing_compared(label, result["layers"]))
    name = label if against is None else f"{label}-against-{_label(against.dir.name)}"
    payload = {
        "artifact": label, "artifact_path": str(art_file), "precision": precision,
        "reference": {"id": base.label if against is not None else ref.id, "kind": base.kind},
        "against": str(against.dir) if against is not None else None,
        "dataset": dataset,
        "metric": "rel_error = ||candidate - reference||_2 / ||reference||_2 over the batch",
        "tolerance_default": req.tolerance is None,
        **result,
        "unmatched": unmatched,
        "dumped": str(req.dump) if req.dump is not None else None,
    }
    _record(manifest, run, payload, name, ref, art_record, art_file, spec_text, dumped)
    if req.as_json:
        import sys

        sys.stdout.write(json.dumps(json_safe(payload), indent=2) + "\n")
    else:
        print_layerwise(console, payload, run / LAYERWISE_DIR / name, dumped, req.dump)
    return payload


def _nothing_compared(label: str, layers: list[dict[str, Any]]) -> str:
    """The one line for a comparison in which no layer had a counterpart."""
    from collections import Counter

    why = Counter(str(e.get("note") or "no counterpart") for e in layers).most_common(2)
    said = "; ".join(f"{n} x {note[:80]}" for note, n in why)
    return (f"--layerwise {label}: compared 0 of {len(layers)} reference layers ({said}): none "
            "of its tensors could be matched to a layer of the reference, so there is no "
            "verdict; compare a graph that keeps the exporter's node names or metadata (the FP32 "
            "ONNX), or write the port's layers under the reference's names (see --dump DIR) and "
            "use --against DIR")


# -- output -----------------------------------------------------------------------------------
def _record(manifest: Manifest, run: Path, payload: dict[str, Any], name: str, ref: Record,
            art_record: Record | None, art_file: Path, spec_text: str | None,
            dumped: list[str]) -> None:
    """Write the JSON and the plot atomically and record them (parents: reference, artifact)."""
    from port.evaluate.layerwise_report import plot_layerwise
    from port.ground.atomic import atomic_write_text
    from port.ground.digest import sha256_file

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
