"""`porter weights export` and `porter import W.npz`: framework-neutral weights of a run.

The export writes the reference's parameters and buffers as ``porter-weights/1`` (see
:mod:`port.models.weights_npz` and docs/weights.md) and records it in the manifest as a
``weights`` artifact whose parent is the reference, so re-training makes it stale. It is not a
``port.formats`` format: it holds no graph, nothing runs it, and it has no precision variants or
accuracy gate (``evaluate --compare`` leaves the kind out).

Reading one back (`porter import W.npz`) is the import stage's: it calls
:func:`port.importing.npz.import_npz` (stages never import each other).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from port.ground.errors import ManifestError, UsageError
from port.manifest import Manifest, Record, run_lock
from port.manifest.params import ExportParams
from port.stages.common import open_run, reference, reference_card

WEIGHTS_KIND = "weights"  # the manifest kind of a weights export
WEIGHT_FORMATS = ("npz",)  # --format choices
ARTIFACT_ID = "weights-npz"
FILE_NAME = "model.weights.npz"


def _normalize_format(text: str) -> str:
    fmt = str(text).strip().lower()
    if fmt not in WEIGHT_FORMATS:
        raise UsageError(f"--format {text} is not known: choose one of {', '.join(WEIGHT_FORMATS)}")
    return fmt


def _claim(manifest: Manifest, out: Path) -> None:
    """Refuse to overwrite a file the manifest does not vouch for as this export's."""
    if not out.exists():
        return
    rel = out.relative_to(manifest.run_dir).as_posix()
    record = manifest.get(ARTIFACT_ID)
    if record is None or record.path != rel:
        raise ManifestError(f"{out} exists but is not recorded in {manifest.path}: porter will "
                            "not overwrite it; move it away, then export again")
    if manifest.state(ARTIFACT_ID).name == "modified":
        raise ManifestError(f"artifact '{ARTIFACT_ID}' ({rel}) is modified: porter will not "
                            "overwrite an edited file: move it away, then export again")


def _claim_outside(manifest: Manifest, copy: Path) -> None:
    """Refuse to overwrite a file outside the run unless an earlier export of ours wrote it."""
    if not copy.exists():
        return
    record = manifest.get(ARTIFACT_ID)
    files = (record.metrics or {}).get("files", {}) if record is not None else {}
    if str(copy.resolve()) not in files:
        raise ManifestError(f"{copy} exists and porter did not write it: porter will not "
                            "overwrite it; move it away or pass another --out")


def run_weights_export(run: Path, *, fmt: str = "npz", out: Path | None = None,
                       console: Console) -> tuple[Record, dict[str, Any]]:
    """Write the reference's tensors as ``porter-weights/1`` and record it: (record, index).

    ``out`` inside the run is where the recorded file goes; outside the run the recorded file is
    ``RUN/model.weights.npz`` and ``out`` a copy hashed with the record (an edited copy makes
    the record ``modified``).
    """
    from port.formats import FORMATS
    from port.ground.atomic import atomic_path

    _normalize_format(fmt)  # flags and the run first: a refusal never waits for torch
    manifest = open_run(run)
    with run_lock(run, "export"):
        ref = reference(manifest)
        if ref.kind != FORMATS["checkpoint"].kind:
            raise UsageError(f"the run's reference {ref.path} (kind {ref.kind}) is not a "
                             "PyTorch model: `porter weights export` needs a trained or "
                             "state_dict-imported reference")
        card = reference_card(manifest, ref)
        target = run / FILE_NAME
        copy: Path | None = None
        if out is not None:
            if out.suffix.lower() != ".npz":
                raise UsageError(f"--out {out} must end with .npz")
            inside = out.resolve().is_relative_to(run.resolve())
            if inside:
                target = run / out.resolve().relative_to(run.resolve())
            else:
                copy = out
        _claim(manifest, target)
        if copy is not None:
            _claim_outside(manifest, copy)
        import torch

        from port.models.checkpoint import load_model
        from port.models.weights_npz import write_npz

        model, _, _ = load_model(manifest.abspath(ref))
        # One image of the card's shape: the pass only orders the layers (eval mode: no buffer
        # changes), so its values do not matter.
        sample = torch.zeros((card.batch or 1, *card.input_shape))
        index = write_npz(target, model, card.to_dict(), sample)
        if copy is not None:
            copy.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(copy) as tmp:
                shutil.copyfile(target, tmp)
        tensors = index["tensors"]
        params = ExportParams(to="weights", precision="fp32", card=card.to_dict(),
                              extra={"format": "npz", "layout": "porter-weights/1"})
        metrics = {"tensors": len(tensors),
                   "parameters": sum(1 for t in tensors if t["kind"] == "parameter"),
                   "buffers": sum(1 for t in tensors if t["kind"] == "buffer"),
                   "values": sum(_numel(t["shape"]) for t in tensors),
                   "layers": len(index["layers"])}
        record = manifest.record("export", WEIGHTS_KIND, target, id=ARTIFACT_ID, parents=[ref],
                                 params=params, metrics=metrics,
                                 companions=[copy.resolve()] if copy is not None else [])
    where = f" (copy: {copy})" if copy is not None else ""
    console.print(f"[green]exported[/green] {metrics['tensors']} tensors "
                  f"({metrics['values']:,} values, {metrics['layers']} layers) to "
                  f"{record.path}{where}", highlight=False)
    return record, index


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
