"""Helpers shared by the stage commands: the run's reference model and its data."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from port.ground.errors import ManifestError, UsageError
from port.ground.limits import MAX_BATCH, MAX_IMAGES, check_allocation, check_int, image_bytes
from port.ground.vocab import REFERENCE_ID
from port.manifest import Manifest
from port.models.card import check_classes as check_classes  # with the card: export uses it too

if TYPE_CHECKING:
    from port.manifest import Record
    from port.models.card import ModelCard


def open_run(run: Path) -> Manifest:
    """The manifest of an existing run, or a ManifestError saying how to create one."""
    if run.exists() and not run.is_dir():
        raise UsageError(f"--run {run} is a file, not a run directory: pass the directory "
                         "that holds manifest.json")
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
    # Imported here: the data table pulls in numpy, which `porter status` never needs.
    from port.data.spec import data_text

    return data_text(override, record.typed_params.data, purpose)


def check_export_numbers(options: dict[str, Any], card: ModelCard) -> None:
    """Export flags that size allocations: in range, and the calibration set fits in memory."""
    check_int("--calib-images", options.get("calib_images"), 1, MAX_IMAGES)
    check_int("--calib-seed", options.get("calib_seed"), 0, 2**63 - 1)
    for name in ("min_batch", "opt_batch", "max_batch"):
        check_int(f"--{name.replace('_', '-')}", options.get(name), 1, MAX_BATCH)
    count = options.get("calib_images")
    if count:
        check_allocation(f"--calib-images {count} at {card.preprocess.image_size} px",
                         count * image_bytes(card.preprocess.image_size),
                         "lower --calib-images (a few hundred images are enough)")


def check_eval_numbers(limit: int | None, batch_sizes: tuple[int, ...], card: ModelCard,
                       images: int) -> None:
    """Evaluate flags that size allocations, against ranges and this machine's free memory.

    ``images`` is how many images the split holds: the preprocessed set and the largest latency
    batch (built from it) are what evaluate allocates. ``batch_sizes`` are already in range:
    they are checked once, where the request is made (``stages.evaluate._check_flags``;
    layerwise passes its constant batch).
    """
    check_int("--limit", limit, 1, MAX_IMAGES)
    per_image = image_bytes(card.preprocess.image_size)
    n = min(limit, images) if limit else images
    check_allocation(f"evaluating {n} images at {card.preprocess.image_size} px",
                     n * per_image, "pass --limit N to evaluate a subset")
    # The latency batch is copied once into the runner's dtype and once into its input buffer.
    check_allocation(f"--batch-sizes {max(batch_sizes)}", 3 * max(batch_sizes) * per_image,
                     "pass smaller --batch-sizes")
