"""`porter evaluate --layerwise`'s comparison run: two sides over one batch of images.

A *side* is one implementation of the model (the reference checkpoint or graph, an export, an
engine's debug build) with its activation source (:mod:`port.evaluate.layerwise`); the other
side is a second one, or ``.npy`` activations dumped elsewhere (``--against DIR``). The stage
(``port.stages.layerwise``) resolves which artifacts and images to compare from the manifest,
calls :func:`compare_sides` (or :func:`dump_reference`) and records the result.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from port.evaluate.layerwise import (
    DEFAULT_TOLERANCE,
    LayerComparison,
    NpySource,
    OnnxSource,
    TorchSource,
    write_dump,
)
from port.ground.errors import BackendUnavailable, DataError, ModelError

BATCH = 16  # images per forward: memory holds one batch of every layer's output, both sides


@dataclass
class Side:
    """One side of the comparison: what it is and how it runs."""

    label: str  # artifact id, file name, or the --against directory
    kind: str  # the artifact kind: checkpoint | onnx | engine
    precision: str
    source: Any  # TorchSource | OnnxSource | TrtDebugSource


@dataclass(frozen=True)
class SideInput:
    """What a format's side maker gets (``port.formats.Format.layerwise``): the artifact as the
    stage resolved it."""

    label: str
    record: Any  # port.manifest.Record, or None for an unrecorded ONNX file
    file: Path
    card: Any  # the run's ModelCard
    what: str  # how errors name it ("the reference", "--layerwise onnx-fp16")
    manifest: Any  # port.manifest.Manifest: engines look up the ONNX they were built from
    precision: str
    kind: str  # the manifest kind (the format's)


def checkpoint_side(art: SideInput) -> Side:
    """A porter checkpoint: the model in torch, with forward hooks on every module."""
    return Side(art.label, art.kind, art.precision, torch_source(art.file))


def onnx_side(art: SideInput) -> Side:
    """An ONNX graph on ONNX Runtime, every module output exposed."""
    return Side(art.label, art.kind, art.precision, onnx_source(art.file, art.card, art.what))


def engine_side(art: SideInput) -> Side:
    """A TensorRT engine: a debug build of the recorded ONNX it was made from (GPU only)."""
    from port.evaluate.layerwise import TrtDebugSource

    require_debug_tensors(art.file)
    return Side(art.label, art.kind, art.precision,
                TrtDebugSource(_engine_onnx(art), art.card))


def _engine_onnx(art: SideInput) -> Path:
    """The recorded, fresh ONNX graph an engine was built from."""
    from port.ground.errors import UsageError

    record, manifest = art.record, art.manifest
    parents = [manifest.get(p["id"]) for p in record.parents] if record is not None else []
    parent = next((p for p in parents if p is not None and p.kind == "onnx"), None)
    if parent is None:
        raise UsageError(f"--layerwise {art.file.name}: no recorded ONNX this engine was built "
                         "from: pass the engine's export id (porter export --to trt records it)")
    manifest.require_fresh(parent.id)
    return manifest.abspath(parent)


def default_tolerance(precision: str) -> float:
    """The relative L2 error over which a layer diverges at ``precision`` (fp32's otherwise)."""
    return DEFAULT_TOLERANCE.get(precision, DEFAULT_TOLERANCE["fp32"])


# -- sources ----------------------------------------------------------------------------------
def torch_source(file: Path) -> TorchSource:
    """The checkpoint's model with forward hooks on every module."""
    from port.models.checkpoint import load_model

    model, _, _ = load_model(file)
    return TorchSource(model)


def onnx_source(file: Path, card: Any, what: str) -> OnnxSource:
    """The ONNX model (with external data) with its module outputs exposed; an unreadable file
    is a ModelError naming it."""
    import onnx

    try:
        model = onnx.load(str(file))
    except Exception as exc:  # protobuf DecodeError, missing external data ...
        raise ModelError(f"{file} is not a readable ONNX model ({str(exc)[:120]}): "
                         "re-export it (porter export --to onnx)") from None
    return OnnxSource(model, card, what=what)


def require_debug_tensors(file: Path) -> None:
    """An engine is compared through a debug build of its ONNX (``TrtDebugSource``):
    ``BackendUnavailable`` when this machine cannot make one (no GPU, no debug tensors)."""
    from port.engines.trt_debug import debug_tensors_supported

    why = debug_tensors_supported()
    if why:
        raise BackendUnavailable(f"--layerwise {file.name}: TensorRT engines are compared "
                                 f"through their debug tensors, and {why}: compare the ONNX it "
                                 "was built from instead")


def checked_input(images: Any, card: Any, directory: Path) -> np.ndarray:
    """``input.npy`` must be a canonical NCHW float batch of the model's size."""
    size = card.preprocess.crop
    want = (card.channels, size, size)
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise DataError(f"{directory / 'input.npy'} has shape {list(images.shape)} but the model "
                        f"takes [N, {want[0]}, {size}, {size}] (NCHW, preprocessed): dump the "
                        "batch porter writes with --dump, or remove input.npy to use the "
                        "validation images")
    return np.array(images, dtype=np.float32)  # a writable copy (torch wants one), not the map


# -- the run ----------------------------------------------------------------------------------
def dump_reference(base: Side, images: np.ndarray, directory: Path) -> list[str]:
    """Write ``base``'s activations (and ``input.npy``) into ``directory``: the keys written."""
    return write_dump(directory, _base_batches(base, images), len(images))


def compare_sides(base: Side, cand: Side | None, against: NpySource | None, images: np.ndarray,
                  dump: Path | None, tolerance: float
                  ) -> tuple[dict[str, Any], list[dict[str, str]], list[str]]:
    """Run both sides on ``images`` (``cand`` None: compare with ``against``'s arrays), dumping
    the base side's activations into ``dump`` on the way; returns the comparison's result
    (:meth:`LayerComparison.result`, rows annotated), the unmatched tensors and the keys
    dumped."""
    for side in (base, cand):
        if side is not None and hasattr(side.source, "prepare"):
            side.source.prepare(images)  # a TensorRT debug build runs the batch in one go
    comparison, unmatched, dumped = _compare(base, cand, against, images, dump)
    result = comparison.result(tolerance)
    _annotate(result, cand)
    return result, unmatched, dumped


def _compare(base: Side, cand: Side | None, against: NpySource | None, images: np.ndarray,
             dump: Path | None) -> tuple[LayerComparison, list[dict[str, str]], list[str]]:
    """Run both sides batch by batch; returns the comparison, unmatched tensors, dumped keys."""
    comparison: LayerComparison | None = None
    order: list[str] = []

    def compared() -> Iterator[tuple[int, np.ndarray, dict[str, np.ndarray]]]:
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
                cand_acts = against.slice(start, start + len(chunk))  # type: ignore[union-attr]
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


def _base_batches(base: Side, images: np.ndarray
                  ) -> Iterator[tuple[int, np.ndarray, dict[str, np.ndarray]]]:
    """``(start, images, {module key: activation})`` of the reference side, batch by batch."""
    src = base.source
    if isinstance(src, OnnxSource):
        for start in range(0, len(images), BATCH):
            chunk = images[start:start + BATCH]
            yield start, chunk, src.keyed(src.run(chunk))
    else:
        for i, (chunk, acts) in enumerate(src.batches(images, BATCH)):
            yield i * BATCH, chunk, acts


def _candidate_tensors(order: list[str], cand: Side | None, against: Any, n: int
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


def _unmatched(order: list[str], cand: Side | None, against: Any) -> list[dict[str, str]]:
    """Candidate tensors/files that no reference layer took, each with the reason."""
    known = set(order)
    if cand is not None:
        out = [{"tensor": t, "module": k, "reason": "module output with no reference hook"}
               for k, t in cand.source.tensors.items() if k not in known]
        return out + list(cand.source.map.unmatched)
    return [{"tensor": f"{k}.npy", "reason": "extra: no layer of that name on porter's side "
             "(misnamed, or a module the exporter folded away)"}
            for k in against.arrays if k not in known]


def _annotate(result: dict[str, Any], cand: Side | None) -> None:
    """Say where a module with no tensor of its own went (folded into the next row)."""
    folded_into = {m: e["module"] for e in result["layers"] for m in e.get("folded", [])}
    for entry in result["layers"]:
        if entry.get("note") == "no counterpart":
            target = folded_into.get(entry["module"])
            if cand is not None:
                entry["note"] = (f"no tensor of its own: folded into {target}" if target
                                 else "no tensor of its own in the graph")
