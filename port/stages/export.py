"""`porter export`: turn the run's reference into a deployable artifact and record it.

The registry (``port.formats``) decides everything about formats: the CLI normalises ``--to``,
``--precision`` and the flags against it (:func:`port.formats.normalize_options` refuses a flag
the format or precision does not use), and :func:`run_export` calls the exporter the registry
names for that format and precision, ``(ctx, fmt, precision) -> Record``. The exporters live in
the export package (``port.export.onnx_job``, ``trt_job``, ``triton_job``) and work from an
:class:`~port.export.context.ExportContext`; this module only takes the run's lock, resolves the
reference and its card, and hands them over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from port.export.context import ExportContext
from port.formats import Format, normalize_format, normalize_options, normalize_precision
from port.ground.errors import UsageError
from port.manifest import Record, run_lock
from port.stages.common import check_export_numbers, open_run, reference, reference_card


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


def run_export(run: Path, request: ExportRequest, *, console: Console) -> Record:
    """Export the reference of ``run`` as ``request`` asks, through the registry's exporter."""
    fmt, precision = request.fmt, request.precision
    if precision not in fmt.precisions:  # ExportRequest.from_flags guarantees this
        raise UsageError(f"--to {fmt.name} does not support precision '{precision}'")
    manifest = open_run(run)
    # Held from the first read to the last record: parents are what this export read, and a
    # second writer of the run is refused (port.manifest.lock).
    with run_lock(run, "export"):
        ref = reference(manifest)
        card = reference_card(manifest, ref)
        check_export_numbers(request.options, card)  # before anything is allocated
        ctx = ExportContext(manifest, ref, card, dict(request.options), console)
        return fmt.exporter(precision)(ctx, fmt, precision)
