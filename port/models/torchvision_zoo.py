"""torchvision's classifiers beyond ResNet, as porter architectures (the families people deploy).

Each builder is torchvision's own model, so its state_dict keys are torchvision's and a
torchvision checkpoint imports key for key (``porter import W.pth --arch efficientnet_b0``). What
they bring that ResNets do not: depthwise convolutions, SiLU/HardSwish/GELU, squeeze-and-
excitation, LayerNorm and layer scale (ConvNeXt), channel shuffles, stochastic depth. All are
designed for 224 px but run at any size of at least 32 px (each downsamples by 32 at most, with
an adaptive pool before the head). ``stochastic_depth_prob`` is torchvision's drop-path rate
where the model has one (a training regulariser: identity in eval, so the exported graph is the
same). torchvision is imported inside each builder (seconds to import; ``porter models`` and
refusals never need it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from port.ground.errors import UsageError
from port.models.registry import register_model

if TYPE_CHECKING:
    from torch import nn


def stochastic_depth_rate(value: float) -> float:
    """``value`` as a stochastic-depth (drop-path) rate, checked: ``UsageError`` outside [0, 1).
    ``porter train --drop-path`` is checked with this too, before torch is imported."""
    if not 0.0 <= value < 1.0:
        raise UsageError(f"the stochastic depth (drop path) rate must be in [0, 1), got "
                         f"{value!r}: use e.g. 0.1")
    return float(value)


@register_model(native_size=224)
def mobilenet_v3_small(num_classes: int) -> nn.Module:
    """MobileNetV3-Small (torchvision): depthwise convs, HardSwish, squeeze-and-excitation."""
    from torchvision.models import mobilenet_v3_small as build

    return build(weights=None, num_classes=num_classes)


@register_model(native_size=224)
def mobilenet_v3_large(num_classes: int) -> nn.Module:
    """MobileNetV3-Large (torchvision): depthwise convs, HardSwish, squeeze-and-excitation."""
    from torchvision.models import mobilenet_v3_large as build

    return build(weights=None, num_classes=num_classes)


@register_model(native_size=224)
def efficientnet_b0(num_classes: int, stochastic_depth_prob: float = 0.2) -> nn.Module:
    """EfficientNet-B0 (torchvision): MBConv, SiLU, squeeze-and-excitation, stochastic depth."""
    from torchvision.models import efficientnet_b0 as build

    return build(weights=None, num_classes=num_classes,
                 stochastic_depth_prob=stochastic_depth_rate(stochastic_depth_prob))


@register_model(native_size=224)
def convnext_tiny(num_classes: int, stochastic_depth_prob: float = 0.1) -> nn.Module:
    """ConvNeXt-Tiny (torchvision): 7x7 depthwise convs, LayerNorm, GELU, layer scale."""
    from torchvision.models import convnext_tiny as build

    return build(weights=None, num_classes=num_classes,
                 stochastic_depth_prob=stochastic_depth_rate(stochastic_depth_prob))


@register_model(native_size=224)
def regnet_x_400mf(num_classes: int) -> nn.Module:
    """RegNetX-400MF (torchvision): grouped convolutions in a designed-space ResNet."""
    from torchvision.models import regnet_x_400mf as build

    return build(weights=None, num_classes=num_classes)


@register_model(native_size=224)
def shufflenet_v2_x0_5(num_classes: int) -> nn.Module:
    """ShuffleNetV2 0.5x (torchvision): channel split and shuffle, depthwise convs."""
    from torchvision.models import shufflenet_v2_x0_5 as build

    return build(weights=None, num_classes=num_classes)


@register_model(native_size=224)
def squeezenet1_1(num_classes: int) -> nn.Module:
    """SqueezeNet 1.1 (torchvision): fire modules, a convolutional head (no Linear)."""
    from torchvision.models import squeezenet1_1 as build

    return build(weights=None, num_classes=num_classes)
