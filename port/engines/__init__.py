"""Runners: one way to run every artifact (see :mod:`port.engines.base`).

:func:`load` picks the runner from the artifact's file suffix; :data:`RUNNERS` maps backend names
to runner classes. Both resolve classes lazily, so importing this package imports neither torch,
onnxruntime nor tensorrt.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from port.engines.base import Runner, TensorMeta
from port.errors import BackendUnavailable, ModelError, UsageError
from port.formats import backend_formats, format_for_path, suffix_backends

__all__ = ["RUNNERS", "SUFFIXES", "Runner", "TensorMeta", "load", "runner_for"]

# Everything about which file runs on which backend, and what a backend needs installed, comes
# from the format registry (port.formats), so a new format is one entry there.
_FORMATS_BY_BACKEND = backend_formats()
# backend name -> "module:Class"
_RUNNER_PATHS: dict[str, str] = {name: fmt.runner for name, fmt in _FORMATS_BY_BACKEND.items()}
# artifact file suffix -> backend name
SUFFIXES: dict[str, str] = suffix_backends()
# Python packages a backend needs beyond porter's own dependencies, and what to do without them.
_NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    name: fmt.needs for name, fmt in _FORMATS_BY_BACKEND.items() if fmt.needs
}


class _LazyRunners(Mapping[str, type[Runner]]):
    """``RUNNERS[name]`` imports the runner's module on first use."""

    def __getitem__(self, name: str) -> type[Runner]:
        if name not in _RUNNER_PATHS:
            raise KeyError(name)
        module, _, attr = _RUNNER_PATHS[name].partition(":")
        return getattr(importlib.import_module(module), attr)

    def __iter__(self) -> Iterator[str]:
        return iter(_RUNNER_PATHS)

    def __len__(self) -> int:
        return len(_RUNNER_PATHS)


RUNNERS: Mapping[str, type[Runner]] = _LazyRunners()


def check_backend(name: str) -> None:
    """Raise ``BackendUnavailable`` (one line) if the packages backend ``name`` needs are absent."""
    for module, fix in _NEEDS.get(name, ()):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise BackendUnavailable(
                f"the {name} backend needs the '{module}' module, which cannot be imported "
                f"({exc}): {fix}"
            ) from None
        except OSError as exc:  # the wheel is there but its shared libraries are not
            raise BackendUnavailable(
                f"the {name} backend cannot load '{module}' ({exc}): {fix}"
            ) from None


def runner_for(path: str | Path) -> str:
    """The backend name that runs the artifact at ``path``, from its suffix."""
    return format_for_path(path).backend


def load(path: str | Path, *, backend: str | None = None, **kwargs: Any) -> Runner:
    """An inactive runner for the artifact at ``path``; ``kwargs`` go to the runner's constructor.

    The runner is picked from the suffix (``.pt``/``.pth`` torch, ``.onnx`` ONNX Runtime,
    ``.engine``/``.plan`` TensorRT) unless ``backend`` names one of :data:`RUNNERS`. A missing
    file is a ``ModelError``; a backend whose packages are absent is ``BackendUnavailable``.
    """
    path = Path(path)
    if backend is None:
        backend = runner_for(path)
    elif backend not in _RUNNER_PATHS:
        raise UsageError(f"unknown backend '{backend}': choose one of {', '.join(_RUNNER_PATHS)}")
    if not path.is_file():
        raise ModelError(f"artifact {path} not found: re-make it (see `porter status`)")
    check_backend(backend)
    return RUNNERS[backend](path, **kwargs)
