"""ModelCard: everything needed to rebuild and feed a model, stored beside its weights.

The card travels in the checkpoint (``model.pt``), in ONNX ``metadata_props`` and in engine
sidecars, so a model can be used without porter and without guessing its preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from port.data.preprocess import Preprocess


@dataclass
class ModelCard:
    """What a model is (architecture, classes) and how to feed it (preprocessing)."""

    arch: str
    num_classes: int
    classes: list[str]
    preprocess: Preprocess
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra create_model arguments
    input_name: str = "input"
    output_name: str = "logits"

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (safe for ``torch.load(weights_only=True)`` and JSON)."""
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "preprocess": self.preprocess.to_dict(),
            "model_kwargs": dict(self.model_kwargs),
            "input_name": self.input_name,
            "output_name": self.output_name,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        """Inverse of :meth:`to_dict`."""
        return cls(
            arch=str(d["arch"]),
            num_classes=int(d["num_classes"]),
            classes=[str(c) for c in d["classes"]],
            preprocess=Preprocess.from_dict(d["preprocess"]),
            model_kwargs=dict(d.get("model_kwargs", {})),
            input_name=str(d.get("input_name", "input")),
            output_name=str(d.get("output_name", "logits")),
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """C, H, W of one image."""
        s = self.preprocess.image_size
        return (3, s, s)
