"""Typed ``params`` per artifact kind: what each stage records about how it made an artifact.

The manifest stores params as JSON objects; stages read them through these dataclasses instead
of string-keyed ``dict.get`` calls, so a key's name, type and default are written down once.
Keys a stage records beyond the typed ones (a TrainConfig's fields, a TensorRT build plan) stay
in ``extra`` and round-trip unchanged, so older and newer manifests both load.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

P = TypeVar("P", bound="Params")


@dataclass(frozen=True)
class Params:
    """Base: typed fields plus ``extra`` (every other key, kept as recorded)."""

    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _typed_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "extra"]

    @classmethod
    def from_dict(cls: type[P], data: dict[str, Any] | None) -> P:
        """The typed view of a record's params (missing keys take their defaults)."""
        data = dict(data or {})
        typed = {name: data.pop(name) for name in cls._typed_names() if name in data}
        return cls(**typed, extra=data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: typed fields first, then ``extra``."""
        out = {name: getattr(self, name) for name in self._typed_names()}
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class ReferenceParams(Params):
    """``train`` and ``import`` records: the model card and the data the model belongs to."""

    card: dict[str, Any] | None = None  # port.models.card.ModelCard.to_dict()
    data: str | None = None  # data spec text; later stages default to it


@dataclass(frozen=True)
class ExportParams(Params):
    """``export`` records: format and precision (registry names), card, how INT8 was made."""

    to: str = ""  # port.formats name (onnx, trt)
    precision: str = "fp32"  # port.formats precision
    card: dict[str, Any] | None = None
    int8_activations: str = "int8"  # int8 (symmetric, TensorRT) | uint8 (ORT CPU only)
    int8_weights: str = "full"  # full | 7bit (ORT's fast kernels on CPUs without VNNI)
    quantizer: str | None = None  # onnxruntime | modelopt, for INT8 graphs and engines
    calibration: dict[str, Any] | None = None  # spec, split, count, seed, indices sha256

    def tensorrt_form(self) -> bool:
        """Whether an INT8 graph is the form TensorRT builds (symmetric, full-range weights)."""
        return self.int8_activations == "int8" and self.int8_weights == "full"


@dataclass(frozen=True)
class ReportParams(Params):
    """``evaluate`` records: what was evaluated and how."""

    data: str | None = None
    limit: int | None = None
    batch_sizes: list[int] = field(default_factory=list)
    compare: bool = False


PARAMS_BY_STAGE: dict[str, type[Params]] = {
    "train": ReferenceParams, "import": ReferenceParams, "export": ExportParams,
    "evaluate": ReportParams,
}


def params_for(stage: str, data: dict[str, Any] | None) -> Params:
    """The typed params of a record made by ``stage`` (the untyped base for unknown stages)."""
    return PARAMS_BY_STAGE.get(stage, Params).from_dict(data)
