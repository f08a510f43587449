"""The preprocessing contract that travels with a model (checkpoint, ONNX metadata, engine sidecar).

An app that embeds an exported model needs exactly this to feed it: decode as RGB, resize the
shorter side to ``resize``, centre-crop ``crop``, scale to [0, 1], subtract ``mean`` and divide
by ``std`` per channel, lay out as NCHW float32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Evaluation preprocessing of one model's inputs."""

    image_size: int  # network input height = width
    resize: int  # shorter side is resized to this before the centre crop
    crop: int  # centre crop size (== image_size)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str = "NCHW"
    color_order: str = "RGB"
    scale: float = 1.0 / 255.0  # uint8 -> float before mean/std

    @classmethod
    def for_size(
        cls,
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> Preprocess:
        """The standard recipe: 32 px and below are used as is; larger sizes resize by 256/224."""
        resize = image_size if image_size <= 64 else round(image_size * 256 / 224)
        return cls(image_size=image_size, resize=resize, crop=image_size, mean=tuple(mean),
                   std=tuple(std))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (lists, not tuples)."""
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict`; ignores unknown keys so newer files still load."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known["mean"] = tuple(float(v) for v in known["mean"])
        known["std"] = tuple(float(v) for v in known["std"])
        return cls(**known)
