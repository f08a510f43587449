"""Building the network a :class:`TrainConfig` asks for, with its model card."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from port.data.preprocess import Preprocess
from port.models.card import ModelCard
from port.models.registry import create_model, get_entry
from port.train.recipe import TrainConfig
from port.train.runtime import Runtime
from port.train.tricks import freeze_bn_scale, init_whitening


def model_kwargs(cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(kwargs to build with, kwargs that define the architecture for the card).

    Options that only change training (zero-init, ghost BatchNorm: plain BN in eval, drop
    path: identity in eval) are build-only; activation and whitening change the deployed
    graph, so the card keeps them.
    """
    accepted = get_entry(cfg.arch).kwargs
    arch: dict[str, Any] = {"width": cfg.width} if "width" in accepted else {}
    if cfg.activation != "relu":
        arch["activation"] = cfg.activation
    if cfg.whiten:
        arch["whiten"] = cfg.whiten
    build = dict(arch)
    if cfg.zero_init_residual:
        build["zero_init_residual"] = True
    if cfg.ghost_batch:
        build["ghost_batch"] = cfg.ghost_batch
    if cfg.drop_path is not None:  # training only: identity in eval, the same deployed graph
        build["stochastic_depth_prob"] = cfg.drop_path
    return build, arch


def build_model(
    cfg: TrainConfig,
    classes: list[str],
    preprocess: Preprocess,
    runtime: Runtime,
    whiten_images: Callable[[], torch.Tensor] | None = None,
) -> tuple[nn.Module, ModelCard]:
    """The network of ``cfg`` on its device with the recipe's fixed parts in place, and its card.

    Seeds the initialisation with ``cfg.seed``. ``whiten_images()`` gives uint8 NCHW training
    images to fit a patch-whitening stem (``None``: leave it, e.g. when resuming loads it).
    """
    build_kwargs, arch_kwargs = model_kwargs(cfg)
    torch.manual_seed(cfg.seed)  # weight initialisation
    model = create_model(cfg.arch, len(classes), **build_kwargs)
    model.to(runtime.device, memory_format=runtime.memory_format)
    if cfg.whiten and whiten_images is not None:
        init_whitening(model, whiten_images(), preprocess.mean, preprocess.std)
    if cfg.freeze_bn_scale:
        freeze_bn_scale(model)
    card = ModelCard(arch=cfg.arch, num_classes=len(classes), classes=list(classes),
                     preprocess=preprocess, model_kwargs=arch_kwargs)
    return model, card
