"""The export format registry: what ``porter export --to`` accepts, as data.

Each format is one named :class:`ExportFormat` entry. The CLI derives its ``--to`` choices and
per-format flag validation from :data:`FORMATS`, and ``evaluate`` derives which artifacts to run
from the suffixes and runners named here. The exporter and runner are named as dotted
``"module:attribute"`` strings and resolved only when needed, so reading the registry never
imports torch, onnxruntime or tensorrt.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from port.errors import UsageError

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class ExportFormat:
    """One export target (``porter export --to NAME``)."""

    name: str  # what the user types after --to
    suffix: str  # file suffix of the artifact, with the dot
    precisions: tuple[str, ...]  # precisions this format can carry
    needs: str | None  # what the machine must have ("tensorrt+cuda"), None when anything goes
    description: str  # one line for --help
    exporter: str  # "module:function" that writes the fp32 artifact (others per precision)
    runner: str  # "module:Class" of the Runner that executes the artifact
    kind: str  # manifest artifact kind

    def resolve_exporter(self) -> Any:
        """Import and return the exporter function (heavy imports happen here, not earlier)."""
        return _resolve(self.exporter)

    def resolve_runner(self) -> Any:
        """Import and return the runner class."""
        return _resolve(self.runner)


FORMATS: dict[str, ExportFormat] = {
    fmt.name: fmt
    for fmt in (
        ExportFormat(
            name="onnx",
            suffix=".onnx",
            precisions=("fp32", "fp16", "int8"),
            needs=None,
            description="ONNX graph with porter metadata; fp16 as an FP16 graph, int8 as QDQ nodes",
            exporter="port.export.onnx:export_onnx",
            runner="port.engines.onnxrt:OnnxRuntimeRunner",
            kind="onnx",
        ),
        ExportFormat(
            name="trt",
            suffix=".engine",
            precisions=("fp32", "fp16", "int8"),
            needs="tensorrt+cuda",
            description="TensorRT engine built from the ONNX of the same precision (GPU only)",
            exporter="port.export.tensorrt:build_engine",
            runner="port.engines.tensorrt:TensorRTRunner",
            kind="engine",
        ),
    )
}


def format_names() -> list[str]:
    """The valid ``--to`` values, in registry order."""
    return list(FORMATS)


def get_format(name: str) -> ExportFormat:
    """The format called ``name``; ``UsageError`` listing the valid names otherwise."""
    try:
        return FORMATS[name.lower()]
    except KeyError:
        raise UsageError(
            f"unknown export format '{name}': choose one of {', '.join(FORMATS)}"
        ) from None


def validate_precision(fmt: ExportFormat | str, precision: str) -> str:
    """Return ``precision`` normalised, or raise ``UsageError`` if ``fmt`` cannot carry it."""
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    p = precision.lower()
    if p not in fmt.precisions:
        raise UsageError(
            f"format '{fmt.name}' does not support precision '{precision}': "
            f"choose one of {', '.join(fmt.precisions)}"
        )
    return p


def format_for_path(path: str) -> ExportFormat:
    """The format whose suffix ``path`` ends with; ``UsageError`` otherwise."""
    lower = str(path).lower()
    for fmt in FORMATS.values():
        if lower.endswith(fmt.suffix):
            return fmt
    suffixes = ", ".join(f.suffix for f in FORMATS.values())
    raise UsageError(f"'{path}' is not an exported model: expected a file ending in {suffixes}")


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
