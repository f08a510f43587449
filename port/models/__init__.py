"""Model architectures, their cards and checkpoints.

Architectures register themselves: each model module decorates its builders with
:func:`port.models.registry.register_model` (timm's ``models/__init__.py`` + ``_registry.py``
pattern). This package declares them in :data:`MODELS`: name, native size, accepted keyword
arguments, description and the ``"module:function"`` that builds it. ``porter models``, ``porter
train``'s checks and every refusal of an unknown ``--arch`` read the declaration, so they load
neither torch nor torchvision (``porter models`` took 10-25 s when the registry learnt the
models by importing their modules). The registry imports a builder's module only to build the
model, and registration refuses a builder that differs from its declaration, so the two cannot
drift.

Nothing here imports torch: ``port.models.card`` (read by ``porter status``, engines and the
ONNX-only predictor) must stay light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    """One architecture as ``porter models`` shows it and ``create_model`` builds it."""

    name: str
    native_size: int  # the input size it was designed for: 32 (CIFAR-style stem) or 224
    kwargs: tuple[str, ...]  # keyword arguments it accepts besides num_classes (signature order)
    description: str  # first line of the builder's docstring
    builder: str  # "module:function", imported only when the model is built

    @property
    def module(self) -> str:
        """The module whose import registers the builder."""
        return self.builder.partition(":")[0]


_ZERO_INIT = ("zero_init_residual",)

# One line per architecture. Registration (port.models.registry.register_model) checks each line
# against the decorated function's name, signature and docstring, so a stale line fails loudly
# the first time the model module is imported (and in tests/models/test_registry.py).
MODELS: tuple[ModelEntry, ...] = (
    ModelEntry("resnet18", 224, _ZERO_INIT, "ResNet-18 (torchvision), 224 px ImageNet stem.",
               "port.models.resnet:resnet18"),
    ModelEntry("resnet34", 224, _ZERO_INIT, "ResNet-34 (torchvision), 224 px ImageNet stem.",
               "port.models.resnet:resnet34"),
    ModelEntry("resnet50", 224, _ZERO_INIT,
               "ResNet-50 v1.5 (torchvision, stride on the 3x3 conv), 224 px ImageNet stem.",
               "port.models.resnet:resnet50"),
    ModelEntry("resnet101", 224, _ZERO_INIT, "ResNet-101 (torchvision), 224 px ImageNet stem.",
               "port.models.resnet:resnet101"),
    ModelEntry("resnet152", 224, _ZERO_INIT, "ResNet-152 (torchvision), 224 px ImageNet stem.",
               "port.models.resnet:resnet152"),
    ModelEntry("resnet18_cifar", 32, ("width", "zero_init_residual"),
               "ResNet-18 for 32x32 inputs: 3x3 stride-1 stem, no max-pool; width scales "
               "channels.",
               "port.models.resnet:resnet18_cifar"),
    ModelEntry("resnet9", 32,
               ("width", "logit_scale", "zero_init_residual", "activation", "whiten",
                "ghost_batch"),
               "ResNet-9 of the fast CIFAR-10 recipes (Myrtle.ai/airbench); width scales "
               "channels.",
               "port.models.resnet:resnet9"),
    ModelEntry("mobilenet_v3_small", 224, (),
               "MobileNetV3-Small (torchvision): depthwise convs, HardSwish, "
               "squeeze-and-excitation.", "port.models.torchvision_zoo:mobilenet_v3_small"),
    ModelEntry("mobilenet_v3_large", 224, (),
               "MobileNetV3-Large (torchvision): depthwise convs, HardSwish, "
               "squeeze-and-excitation.", "port.models.torchvision_zoo:mobilenet_v3_large"),
    ModelEntry("efficientnet_b0", 224, ("stochastic_depth_prob",),
               "EfficientNet-B0 (torchvision): MBConv, SiLU, squeeze-and-excitation, "
               "stochastic depth.", "port.models.torchvision_zoo:efficientnet_b0"),
    ModelEntry("convnext_tiny", 224, ("stochastic_depth_prob",),
               "ConvNeXt-Tiny (torchvision): 7x7 depthwise convs, LayerNorm, GELU, layer scale.",
               "port.models.torchvision_zoo:convnext_tiny"),
    ModelEntry("regnet_x_400mf", 224, (),
               "RegNetX-400MF (torchvision): grouped convolutions in a designed-space ResNet.",
               "port.models.torchvision_zoo:regnet_x_400mf"),
    ModelEntry("shufflenet_v2_x0_5", 224, (),
               "ShuffleNetV2 0.5x (torchvision): channel split and shuffle, depthwise convs.",
               "port.models.torchvision_zoo:shufflenet_v2_x0_5"),
    ModelEntry("squeezenet1_1", 224, (),
               "SqueezeNet 1.1 (torchvision): fire modules, a convolutional head (no Linear).",
               "port.models.torchvision_zoo:squeezenet1_1"),
)

# Modules whose import registers architectures, in declaration order.
MODEL_MODULES: tuple[str, ...] = tuple(dict.fromkeys(entry.module for entry in MODELS))


def import_model_modules() -> None:
    """Import every module in :data:`MODEL_MODULES` (a no-op after the first call).

    Only the declaration check needs all of them at once; building one model imports its own.
    """
    for name in MODEL_MODULES:
        importlib.import_module(name)
