"""Model architectures, their cards and checkpoints.

Architectures register themselves: each model module decorates its builders with
:func:`port.models.registry.register_model`, and this package names the modules that do so
(timm's ``models/__init__.py`` + ``_registry.py`` pattern). The registry never names a model
module, so ``registry`` <-> ``resnet`` is no longer an import cycle; adding a model module is one
line in :data:`MODEL_MODULES`.

Unlike timm, the modules are imported on the registry's first lookup, not when this package is
imported: ``port.models.card`` (read by ``porter status``, engines and the ONNX-only predictor)
must not pull in torch and torchvision.
"""

from __future__ import annotations

import importlib

# Modules whose import registers architectures.
MODEL_MODULES = ("port.models.resnet",)


def import_model_modules() -> None:
    """Import every module in :data:`MODEL_MODULES` (a no-op after the first call)."""
    for name in MODEL_MODULES:
        importlib.import_module(name)
