"""Helpers shared by the stage commands: the run's reference model and its data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from port.data.spec import VALID_FORMS
from port.errors import ManifestError, UsageError
from port.manifest import Manifest

if TYPE_CHECKING:
    from port.manifest import Record
    from port.models.card import ModelCard

REFERENCE_ID = "model"  # the trained or imported model every export and comparison starts from


def open_run(run: Path) -> Manifest:
    """The manifest of an existing run, or a ManifestError saying how to create one."""
    if not (run / "manifest.json").is_file():
        raise ManifestError(
            f"no porter run at {run} (manifest.json missing): create it with "
            f"`porter train --run {run}` or `porter import MODEL --run {run}`"
        )
    return Manifest(run)


def reference(manifest: Manifest) -> Record:
    """The run's reference record, checked to be fresh (its file unchanged since recorded)."""
    record = manifest.get(REFERENCE_ID)
    if record is None:
        raise ManifestError(
            f"run {manifest.run_dir} has no reference model: "
            "run `porter train` or `porter import` first"
        )
    manifest.require_fresh(REFERENCE_ID)
    return record


def reference_card(manifest: Manifest, record: Record) -> ModelCard:
    """The ModelCard of the reference: from the checkpoint or from the imported ONNX's record."""
    from port.models.card import ModelCard

    card = record.typed_params.card
    if card is None:
        raise ManifestError(
            f"record '{record.id}' in {manifest.run_dir / 'manifest.json'} has no model card: "
            "re-create the run with porter train or porter import"
        )
    return ModelCard.from_dict(card)


def run_data(record: Record, override: str | None, purpose: str) -> str:
    """The data spec text to use: the flag when given, else the one the reference came with."""
    text = override or record.typed_params.data
    if not text:
        raise UsageError(f"no data set known for {purpose}: pass --data ({VALID_FORMS})")
    return str(text)


def check_classes(card: ModelCard, classes: list[str], spec_text: str) -> None:
    """A data set must have the model's class count; names are compared when both are known."""
    if len(classes) != card.num_classes:
        raise UsageError(
            f"data '{spec_text}' has {len(classes)} classes but the model has {card.num_classes}: "
            "pass the --data the model was trained on"
        )
