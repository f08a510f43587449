"""Model registry: ``@register_model`` + ``create_model`` (timm's ``_registry``/``_factory``).

Every architecture porter can train, import or export is a function registered here under its
name by the decorator in its own module. The registry records what the function accepts (from its
signature), so a typo in a name or in a keyword fails fast with the valid choices instead of deep
inside a constructor. It knows no model module by name: :mod:`port.models` lists them and imports
them on the first lookup here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from port.errors import UsageError
from port.models import import_model_modules

if TYPE_CHECKING:
    from torch import nn

# Quoted: the registry itself needs no torch (the model modules bring it when they register).
ModelFn = Callable[..., "nn.Module"]


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture."""

    name: str
    native_size: int  # the input size it was designed for: 32 (CIFAR-style stem) or 224
    kwargs: tuple[str, ...]  # keyword arguments it accepts besides num_classes
    description: str  # first line of the builder's docstring
    fn: ModelFn = field(repr=False, compare=False)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(*, native_size: int) -> Callable[[ModelFn], ModelFn]:
    """Register ``fn(num_classes, **kwargs) -> nn.Module`` under its function name.

    The accepted keyword arguments are read from the signature, the description from the first
    docstring line, so the registry cannot drift from the code it describes.
    """

    def decorate(fn: ModelFn) -> ModelFn:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")  # a bug, not a user error
        params = inspect.signature(fn).parameters
        kwargs = tuple(p for p in params if p != "num_classes")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelEntry(
            name=name,
            native_size=native_size,
            kwargs=kwargs,
            description=doc[0] if doc else "",
            fn=fn,
        )
        return fn

    return decorate


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    import_model_modules()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; ``UsageError`` listing valid names when unknown."""
    import_model_modules()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"unknown model {name!r}: choose one of {', '.join(sorted(_REGISTRY))}"
        ) from None


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` with ``num_classes`` outputs and freshly initialised weights.

    Unknown names and keyword arguments the architecture does not take raise ``UsageError``
    naming the valid choices.
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
    return entry.fn(num_classes=num_classes, **kwargs)
