"""What every exporter works from, and the helpers they share to read data and record files.

An exporter has the registry's shape ``(ctx: ExportContext, fmt: Format, precision: str) ->
Record`` (``port.formats``: ``exporters={precision: "module:function"}``). It writes through
:meth:`ExportContext.claim` (never over a file the manifest does not vouch for) and records
through :meth:`ExportContext.record` (which proves the file carries the precision the record
claims). Data comes from :meth:`ExportContext.parity_sample`, :meth:`ExportContext.calibration`
and :meth:`ExportContext.load_images`, checked against the model's classes.

This package sits under the stages: it reads the manifest (a lower floor) and never imports
``port.stages``, ``port.evaluate`` or ``port.train``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from port.formats import FORMATS, Format
from port.ground.errors import ManifestError, UsageError
from port.manifest import Manifest, Record
from port.manifest.params import ExportParams

if TYPE_CHECKING:
    import numpy as np
    from rich.console import Console

    from port.models.card import ModelCard

# A few hundred images settle min/max and histogram ranges. Measured on real CIFAR-10
# (bench/int8_calibration.py, README "INT8 defaults, measured"): minmax/entropy/percentile
# with 256, 500 or 1024 images all keep >= 99.8% of FP32 top-1; minmax with 500 is as
# accurate as any and among the cheapest, hence the defaults (method minmax, per-channel).
DEFAULT_CALIB_IMAGES = 500
PARITY_BATCH = 32  # images in the post-export parity check
ONNX = FORMATS["onnx"]


@dataclass
class ExportContext:
    """What every exporter works from: the run, its reference and card, the flags."""

    manifest: Manifest
    ref: Record
    card: ModelCard
    options: dict[str, Any]
    console: Console

    @property
    def run_dir(self) -> Path:
        """The run directory (every artifact is written inside it)."""
        return self.manifest.run_dir

    def onnx_options(self) -> dict[str, Any]:
        """The flags that also mean something to the ONNX exporters (FP32/FP16/INT8 sources)."""
        names = {o.name for o in ONNX.options}
        return {k: v for k, v in self.options.items() if k in names}

    def with_options(self, options: dict[str, Any]) -> ExportContext:
        """The same run and reference with other flags (an exporter making its source)."""
        return replace(self, options=dict(options))

    # -- the manifest ----------------------------------------------------------------------
    def fresh(self, art_id: str) -> Record | None:
        """The record ``art_id`` when it exists and is fresh, else None."""
        record = self.manifest.get(art_id)
        return record if record is not None and self.manifest.state(art_id).name == "fresh" \
            else None

    def claim(self, out: Path, art_id: str) -> None:
        """Refuse to write ``out`` over a file the manifest does not vouch for.

        A file that is not recorded as ``art_id`` (someone else's work), or that was edited since
        it was recorded, is refused as an edited checkpoint is: porter never silently replaces
        it. A missing or stale artifact is re-made. Every exporter calls this before writing.
        """
        if not out.exists():
            return
        rel = out.relative_to(self.run_dir).as_posix()
        record = self.manifest.get(art_id)
        if record is None or record.path != rel:
            raise ManifestError(f"{out} exists but is not recorded in {self.manifest.path}: "
                                "porter will not overwrite it; move it away, then export again")
        state = self.manifest.state(art_id)
        if state.name == "modified":
            raise ManifestError(f"artifact '{art_id}' ({rel}) is modified: {state.reason}; porter "
                                "will not overwrite an edited file: move it away (or restore "
                                "it), then export again")

    def record(self, fmt: Format, precision: str, out: Path, *, art_id: str,
               parents: list[Record], params: dict[str, Any], metrics: dict[str, Any] | None,
               companions: tuple[Path, ...] = ()) -> Record:
        """Record an export after proving the file carries the precision the record will claim.

        A mismatch is a porter bug (the wrong converter ran), never something to record: the
        file is left for inspection and nothing in the manifest changes. ``parents`` are the
        records the export read: the manifest refuses the record if one was re-made meanwhile.
        """
        found = fmt.read_precision(out)
        if found is not None and found != precision:
            raise ManifestError(f"{out.name} holds a {found} graph but was exported as "
                                f"{precision}: not recorded; this is a porter bug, please "
                                "report it")
        typed = ExportParams.from_dict({**params, "to": fmt.name, "precision": precision,
                                        "card": self.card.to_dict()})
        return self.manifest.record("export", fmt.kind, out, id=art_id, parents=parents,
                                    params=typed, metrics=metrics,
                                    companions=[p for p in companions if p.is_file()])

    # -- data ------------------------------------------------------------------------------
    def data_text(self, purpose: str) -> str:
        """``--data`` when given, else the reference's data set (``UsageError`` naming
        ``purpose`` when neither is known)."""
        from port.data.spec import data_text

        return data_text(self.options.get("data"), self.ref.typed_params.data, purpose)

    def load_images(self, spec_text: str, split: str, count: int | None,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed images and labels of a split (a seeded subset of ``count``, or all),
        its classes checked against the model's."""
        from port.data.datasets import load_split, materialize
        from port.data.spec import parse_data_spec
        from port.models.card import check_classes

        data = load_split(parse_data_spec(spec_text), split, preprocess=self.card.preprocess,
                          limit=count, seed=seed)
        check_classes(self.card, data.classes, spec_text)
        return materialize(data)

    def parity_sample(self) -> np.ndarray:
        """A real batch of validation images for the export's parity check."""
        spec_text = self.data_text("the parity check (a real batch)")
        images, _ = self.load_images(spec_text, "val", PARITY_BATCH)
        return images

    def calibration(self) -> tuple[np.ndarray, dict[str, Any]]:
        """Calibration images (training split, evaluation preprocessing) and their record."""
        from port.data.datasets import load_split, materialize, subset
        from port.data.spec import parse_data_spec
        from port.export.calibration import calibration_record, select_calibration
        from port.models.card import check_classes

        spec_text = self.options.get("calib_data") or self.ref.typed_params.data
        if not spec_text:
            raise UsageError("INT8 calibration needs images: pass --calib-data DATA "
                             "(the run has no training data set recorded)")
        seed = int(self.options.get("calib_seed", 0))
        # The training split (calibrating on the evaluation images would flatter the INT8
        # model), loaded once: its size decides the selection, then the chosen images are
        # preprocessed.
        split_name = "train"
        full = load_split(parse_data_spec(spec_text), split_name,
                          preprocess=self.card.preprocess)
        check_classes(self.card, full.classes, spec_text)
        # An explicit --calib-images larger than the split is refused by select_calibration;
        # the default simply takes the whole split when it is smaller.
        count = int(self.options.get("calib_images", min(DEFAULT_CALIB_IMAGES, len(full))))
        chosen = select_calibration(len(full), count, seed)
        images, _ = materialize(subset(full, list(chosen.indices)))
        record = calibration_record(spec_text, chosen)
        record["split"] = split_name
        return images, record
