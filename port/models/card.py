"""ModelCard: everything needed to rebuild and feed a model, stored beside its weights.

The card travels in the checkpoint (``model.pt``), in ONNX ``metadata_props`` and in engine
sidecars, so a model can be used without porter and without guessing its preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from port.data.preprocess import Preprocess
from port.ground.errors import UsageError


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
    # What the graph's input and output look like, read from the file at import (models made
    # elsewhere) and defaulted for porter's own models. Layout and colour order live in
    # ``preprocess`` (``layout`` NCHW|NHWC); porter's canonical batch is NCHW float32, and the
    # runners convert it to what the card says at the boundary.
    channels: int = 3  # 1 (grayscale) or 3 (colour, in preprocess.color_order)
    batch: int | None = None  # the fixed batch size the graph takes; None = any batch
    input_dtype: str = "float32"  # float16 | float32 | float64 (cast at the boundary)
    output_layout: str = "NC"  # "NC" or "NC11" (an [N, C, 1, 1] output, squeezed)
    output_softmax: bool = False  # the output is already probabilities, not logits

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
            "channels": self.channels,
            "batch": self.batch,
            "input_dtype": self.input_dtype,
            "output_layout": self.output_layout,
            "output_softmax": self.output_softmax,
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
            # Cards written before these fields existed describe porter's own models.
            channels=int(d.get("channels", 3)),
            batch=None if d.get("batch") is None else int(d["batch"]),
            input_dtype=str(d.get("input_dtype", "float32")),
            output_layout=str(d.get("output_layout", "NC")),
            output_softmax=bool(d.get("output_softmax", False)),
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """C, H, W of one image (porter's canonical layout, whatever the graph's)."""
        s = self.preprocess.image_size
        return (self.channels, s, s)


def _placeholder_names(names: list[str]) -> bool:
    """Whether ``names`` are the ``class_0, class_1, ...`` an import without names made up."""
    return all(name == f"class_{i}" for i, name in enumerate(names))


def check_classes(card: ModelCard, classes: list[str], spec_text: str, *,
                  ignore_names: bool = False, override: str | None = None) -> int:
    """A data set must have the model's class count and, when both name them, its class names.

    Labels are indices, so names are compared position by position (case and surrounding
    blanks aside): the same names in another order are a mismatch too. A card without real
    names (an import without --classes or --data) is checked by count only. ``override`` names
    the flag that accepts differing names (evaluate's ``--ignore-class-names``); with
    ``ignore_names`` they are accepted. Returns how many names differ (0 when not compared).
    """
    if len(classes) != card.num_classes:
        raise UsageError(
            f"data '{spec_text}' has {len(classes)} classes but the model has {card.num_classes}: "
            "pass the --data the model was trained on"
        )
    model_names = list(card.classes)
    if len(model_names) != len(classes) or _placeholder_names(model_names):
        return 0
    differ = [i for i, (m, d) in enumerate(zip(model_names, classes, strict=True))
              if m.strip().casefold() != str(d).strip().casefold()]
    if not differ or ignore_names:
        return len(differ)
    i = differ[0]
    fix = (f", or {override} to use it anyway" if override else "")
    raise UsageError(
        f"data '{spec_text}' names its classes differently from the model ({len(differ)} of "
        f"{len(classes)} differ; labels are matched by position): class {i} is "
        f"{model_names[i][:40]!r} in the model but {str(classes[i])[:40]!r} in the data: pass "
        f"the --data the model was trained on or rename the data's class folders{fix}"
    )
