"""ResNet family: torchvision's ImageNet ResNets and two CIFAR-sized variants.

* ``resnet18`` ... ``resnet152``: torchvision's reference models, randomly initialised.
* ``resnet18_cifar``: ResNet-18 with a 3x3 stride-1 stem and no max-pool, the usual choice for
  32x32 inputs (the ImageNet stem would shrink a 32 px image to 8 px before the first block).
* ``resnet9``: the 9-layer ResNet of the fast CIFAR-10 recipes (Myrtle.ai / airbench).

Everything here exports with ``torch.onnx``: no in-place ops on block inputs, no data-dependent
control flow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from port.ground.errors import UsageError
from port.models.layers import GhostBatchNorm2d, PatchWhitening, make_activation
from port.models.registry import register_model

if TYPE_CHECKING:
    from types import ModuleType


def _tv() -> ModuleType:
    """torchvision's ResNet module, imported when a model that uses it is built: importing
    torchvision costs seconds, and ResNet-9 (the fast recipes) never needs it."""
    from torchvision.models import resnet

    return resnet


def _channels(base: int, width: float) -> int:
    """Scale a channel count by ``width``; at least 4 so BatchNorm statistics stay meaningful."""
    if not width > 0:
        raise UsageError(f"width must be > 0, got {width!r}: use e.g. 0.25, 0.5 or 1.0")
    return max(4, round(base * width))


# -- torchvision ImageNet ResNets -----------------------------------------------------------------
@register_model(native_size=224)
def resnet18(num_classes: int, zero_init_residual: bool = False) -> nn.Module:
    """ResNet-18 (torchvision), 224 px ImageNet stem."""
    return _tv().resnet18(
        weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
    )


@register_model(native_size=224)
def resnet34(num_classes: int, zero_init_residual: bool = False) -> nn.Module:
    """ResNet-34 (torchvision), 224 px ImageNet stem."""
    return _tv().resnet34(
        weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
    )


@register_model(native_size=224)
def resnet50(num_classes: int, zero_init_residual: bool = False) -> nn.Module:
    """ResNet-50 v1.5 (torchvision, stride on the 3x3 conv), 224 px ImageNet stem."""
    return _tv().resnet50(
        weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
    )


@register_model(native_size=224)
def resnet101(num_classes: int, zero_init_residual: bool = False) -> nn.Module:
    """ResNet-101 (torchvision), 224 px ImageNet stem."""
    return _tv().resnet101(
        weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
    )


@register_model(native_size=224)
def resnet152(num_classes: int, zero_init_residual: bool = False) -> nn.Module:
    """ResNet-152 (torchvision), 224 px ImageNet stem."""
    return _tv().resnet152(
        weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
    )


# -- ResNet-18 for 32x32 inputs -------------------------------------------------------------------
class CifarResNet(nn.Module):
    """torchvision's BasicBlock ResNet with a 3x3 stride-1 stem and no max-pool.

    Parameter names match torchvision's ``ResNet`` (conv1, bn1, layer1..4, fc) so tools that know
    torchvision's layout recognise it.
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        num_classes: int,
        width: float = 1.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        planes = [_channels(c, width) for c in (64, 128, 256, 512)]
        self.inplanes = planes[0]
        # 3x3 stride 1: keep all 32x32 pixels for the first stage (no 7x7/2 conv, no max-pool).
        self.conv1 = nn.Conv2d(3, planes[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(planes[0], layers[0], stride=1)
        self.layer2 = self._make_layer(planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(planes[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes[3], num_classes)
        # Same initialisation as torchvision's ResNet.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each block starts as the identity (Goyal et al. 2017): helps large-batch training.
            for m in self.modules():
                if isinstance(m, _tv().BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        tv = _tv()
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                tv.conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes)
            )
        layers = [tv.BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [tv.BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of NCHW images."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model(native_size=32)
def resnet18_cifar(
    num_classes: int, width: float = 1.0, zero_init_residual: bool = False
) -> nn.Module:
    """ResNet-18 for 32x32 inputs: 3x3 stride-1 stem, no max-pool; width scales channels."""
    return CifarResNet((2, 2, 2, 2), num_classes, width, zero_init_residual)


# -- ResNet-9 (Myrtle.ai / airbench) --------------------------------------------------------------
Norm = Callable[[int], nn.Module]


def _norm_layer(ghost_batch: int) -> Norm:
    """BatchNorm2d, or ghost BatchNorm with ``ghost_batch`` images per group (0 = off)."""
    if ghost_batch:
        return functools.partial(GhostBatchNorm2d, virtual_batch=ghost_batch)
    return nn.BatchNorm2d


def _conv_bn(c_in: int, c_out: int, activation: str = "relu", norm: Norm = nn.BatchNorm2d,
             kernel: int = 3) -> nn.Sequential:
    """conv (3x3 unless told) -> BatchNorm -> activation, the only block ResNet-9 uses."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=kernel, padding=kernel // 2, bias=False),
        norm(c_out),
        make_activation(activation),
    )


class Residual(nn.Module):
    """``x + f(x)`` with f = two conv_bn blocks at constant width."""

    def __init__(self, channels: int, activation: str = "relu",
                 norm: Norm = nn.BatchNorm2d) -> None:
        super().__init__()
        self.res1 = _conv_bn(channels, channels, activation, norm)
        self.res2 = _conv_bn(channels, channels, activation, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual sum (out of place: the input is still needed by the skip)."""
        return x + self.res2(self.res1(x))


class ResNet9(nn.Module):
    """prep 64 -> layer1 128 + pool + residual -> layer2 256 + pool -> layer3 512 + pool + residual
    -> global max pool -> linear (no bias) -> logits * logit_scale.

    Options of the fast recipe (all off by default, which is Myrtle.ai's original network):
    ``activation`` (relu | celu | gelu); ``whiten`` = k > 0 replaces the 3x3 prep conv by a fixed
    k x k patch-whitening conv followed by a learned 1x1 conv_bn (Page's "bag of tricks");
    ``ghost_batch`` > 0 uses ghost BatchNorm in training (identical to BatchNorm in eval, so it
    is not part of the architecture a checkpoint needs to be rebuilt).
    """

    def __init__(
        self,
        num_classes: int,
        width: float = 1.0,
        logit_scale: float = 0.125,
        zero_init_residual: bool = False,
        activation: str = "relu",
        whiten: int = 0,
        ghost_batch: int = 0,
    ) -> None:
        super().__init__()
        c1, c2, c3, c4 = (_channels(c, width) for c in (64, 128, 256, 512))
        norm = _norm_layer(ghost_batch)
        if whiten:
            stem = PatchWhitening(3, whiten)
            self.prep = nn.Sequential(stem, *_conv_bn(stem.out_channels, c1, activation, norm,
                                                     kernel=1))
        else:
            self.prep = _conv_bn(3, c1, activation, norm)
        self.layer1 = nn.Sequential(_conv_bn(c1, c2, activation, norm), nn.MaxPool2d(2),
                                    Residual(c2, activation, norm))
        self.layer2 = nn.Sequential(_conv_bn(c2, c3, activation, norm), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(_conv_bn(c3, c4, activation, norm), nn.MaxPool2d(2),
                                    Residual(c4, activation, norm))
        self.fc = nn.Linear(c4, num_classes, bias=False)
        # Scaling the logits down (0.125 in the Myrtle recipe) keeps early softmax outputs soft,
        # which acts like a temperature and lets the recipe use a high learning rate.
        self.logit_scale = float(logit_scale)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Residual):
                    nn.init.zeros_(m.res2[1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of NCHW images."""
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        x = torch.amax(x, dim=(2, 3))  # global max pool; exports as a single ReduceMax
        return self.fc(x) * self.logit_scale


@register_model(native_size=32)
def resnet9(
    num_classes: int,
    width: float = 1.0,
    logit_scale: float = 0.125,
    zero_init_residual: bool = False,
    activation: str = "relu",
    whiten: int = 0,
    ghost_batch: int = 0,
) -> nn.Module:
    """ResNet-9 of the fast CIFAR-10 recipes (Myrtle.ai/airbench); width scales channels."""
    return ResNet9(num_classes, width, logit_scale, zero_init_residual, activation, whiten,
                   ghost_batch)
