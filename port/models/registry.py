"""Model registry: ``@register_model`` + ``create_model`` (timm's ``_registry``/``_factory``).

Every architecture porter can train, import or export is declared in :data:`port.models.MODELS`
and built by a function registered here under its name by the decorator in its own module.
Lookups (:func:`list_models`, :func:`get_entry`) read the declaration only, so listing models and
refusing an unknown name or keyword never import torch or torchvision; :func:`create_model`
imports the builder's module. Registration derives the entry from the function (keywords from its
signature, description from its docstring) and refuses one that differs from the declaration, so
the fast path cannot drift from the code it describes. The registry knows no model module by
name: the declaration's ``"module:function"`` strings are resolved when a model is built.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from port.ground.errors import UsageError
from port.models import MODELS, ModelEntry

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ModelEntry", "create_model", "describe", "get_entry", "list_models", "register_model"]

# Quoted: the registry itself needs no torch (the model modules bring it when they register).
ModelFn = Callable[..., "nn.Module"]

_DECLARED: dict[str, ModelEntry] = {entry.name: entry for entry in MODELS}
_BUILDERS: dict[str, ModelFn] = {}


def describe(fn: ModelFn, native_size: int) -> ModelEntry:
    """The entry a builder defines: its name, keywords (signature) and docstring's first line."""
    params = inspect.signature(fn).parameters
    doc = (fn.__doc__ or "").strip().splitlines()
    return ModelEntry(
        name=fn.__name__,
        native_size=native_size,
        kwargs=tuple(p for p in params if p != "num_classes"),
        description=doc[0].strip() if doc else "",
        builder=f"{fn.__module__}:{fn.__qualname__}",
    )


def register_model(*, native_size: int) -> Callable[[ModelFn], ModelFn]:
    """Register ``fn(num_classes, **kwargs) -> nn.Module`` under its function name.

    The function must match its line in :data:`port.models.MODELS` exactly (a ``ValueError``,
    i.e. a bug in porter, otherwise): the declaration is what lookups read without importing.
    """

    def decorate(fn: ModelFn) -> ModelFn:
        found = describe(fn, native_size)
        if found.name in _BUILDERS:
            raise ValueError(f"model {found.name!r} registered twice")  # a bug, not a user error
        declared = _DECLARED.get(found.name)
        if declared != found:
            raise ValueError(
                f"model {found.name!r} does not match its declaration in port.models.MODELS: "
                f"declared {declared}, registered {found}; update the declaration"
            )
        _BUILDERS[found.name] = fn
        return fn

    return decorate


def list_models() -> list[str]:
    """Names of all declared architectures, sorted (imports no model module)."""
    return sorted(_DECLARED)


def get_entry(name: str) -> ModelEntry:
    """The declared entry of ``name``; ``UsageError`` listing valid names when unknown.

    Imports no model module: ``porter models`` and the refusal of a bad ``--arch`` stay fast.
    """
    try:
        return _DECLARED[name]
    except KeyError:
        raise UsageError(
            f"unknown model {name!r}: choose one of {', '.join(sorted(_DECLARED))}"
        ) from None


def _builder(entry: ModelEntry) -> ModelFn:
    """The registered function of ``entry``, importing its module (which registers it)."""
    importlib.import_module(entry.module)
    try:
        return _BUILDERS[entry.name]
    except KeyError:  # the declaration names a module that registers no such function
        raise ValueError(f"model {entry.name!r} is declared with builder {entry.builder!r}, "
                         "which registers no such function") from None


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` with ``num_classes`` outputs and freshly initialised weights.

    Unknown names and keyword arguments the architecture does not take raise ``UsageError``
    naming the valid choices (before the model module, hence torch, is imported).
    """
    entry = get_entry(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
    unknown = sorted(set(kwargs) - set(entry.kwargs))
    if unknown:
        accepted = ", ".join(entry.kwargs) or "none"
        raise UsageError(
            f"model {name!r} does not accept {', '.join(unknown)}: it accepts {accepted}"
        )
    return _builder(entry)(num_classes=num_classes, **kwargs)
