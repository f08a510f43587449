"""porter: from PyTorch training to deployed inference engines, with proof."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from port.ground.version import VERSION

__version__ = VERSION

if TYPE_CHECKING:
    from pathlib import Path

    from port.engines.predictor import Predictor


def load(path: str | Path, **kwargs: Any) -> Predictor:
    """A predictor for an exported model: ``port.load("model.fp32.onnx").predict("cat.jpg")``.

    ``path``: an ONNX file, a TensorRT engine (its ``.json`` sidecar next to it) or a porter
    checkpoint; no run directory is needed. For ONNX it imports only onnxruntime, numpy and
    Pillow. See :func:`port.engines.predictor.load` for the keyword arguments.
    """
    # Imported here so `import port` (and `porter --help`) stays free of numpy and runtimes.
    from port.engines.predictor import load as _load

    return _load(path, **kwargs)
