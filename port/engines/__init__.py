"""Runners: one way to run every artifact (see :mod:`port.engines.base`).

:func:`load` picks the runner from the artifact's file suffix (the format's first backend) or
the backend named; :data:`RUNNERS` maps backend names to runner classes. Everything comes from
the backend registry (``port.formats.BACKENDS``) and is resolved lazily, so importing this
package imports neither torch, onnxruntime, openvino nor tensorrt.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from port.engines.base import Runner, TensorMeta
from port.formats import BACKENDS, format_for_path, normalize_backend, suffix_backends
from port.ground.errors import BackendUnavailable, ModelError, UsageError

__all__ = ["RUNNERS", "SUFFIXES", "Runner", "TensorMeta", "available", "load", "runner_for"]

# artifact file suffix -> the backend that runs it unless told otherwise
SUFFIXES: dict[str, str] = suffix_backends()


class _LazyRunners(Mapping[str, type[Runner]]):
    """``RUNNERS[name]`` imports the backend's runner module on first use."""

    def __getitem__(self, name: str) -> type[Runner]:
        if name not in BACKENDS:
            raise KeyError(name)
        return BACKENDS[name].runner_class()

    def __iter__(self) -> Iterator[str]:
        return iter(BACKENDS)

    def __len__(self) -> int:
        return len(BACKENDS)


RUNNERS: Mapping[str, type[Runner]] = _LazyRunners()


def check_backend(name: str) -> None:
    """Raise ``BackendUnavailable`` (one line) if the packages backend ``name`` needs are absent."""
    for module, fix in BACKENDS[name].needs:
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


def available(name: str) -> bool:
    """Whether backend ``name``'s packages import here (its hardware is checked when it runs)."""
    try:
        check_backend(name)
    except BackendUnavailable:
        return False
    return True


def runner_for(path: str | Path) -> str:
    """The backend name that runs the artifact at ``path`` by default, from its suffix."""
    return format_for_path(path).backend


def load(path: str | Path, *, backend: str | None = None, **kwargs: Any) -> Runner:
    """An inactive runner for the artifact at ``path``; ``kwargs`` go to the runner's constructor.

    The runner is the format's first backend (``.pt``/``.pth`` torch, ``.onnx`` ONNX Runtime,
    ``.xml`` OpenVINO, ``.engine``/``.plan`` TensorRT) unless ``backend`` names another backend
    of that format (any letter case): e.g. ``backend="openvino"`` for an ``.onnx``. The entry's
    fixed keywords (OpenVINO's inference precision) always apply. A missing file is a
    ``ModelError``; a backend that does not run the format is a ``UsageError``; a backend whose
    packages are absent is ``BackendUnavailable``.
    """

    path = Path(path)
    fmt = format_for_path(path)
    entry = BACKENDS[fmt.backend] if backend is None else normalize_backend(backend)
    if entry.name not in fmt.backends:
        raise UsageError(f"the {entry.name} backend does not run {fmt.suffixes[0]} files "
                         f"({path.name}): choose one of {', '.join(fmt.backends)}")
    if not path.is_file():
        raise ModelError(f"artifact {path} not found: re-make it (see `porter status`)")
    check_backend(entry.name)
    clash = {k: v for k, v in kwargs.items() if k in entry.fixed and v != entry.fixed[k]}
    if clash:  # the entry's fixed settings are its identity (openvino computes in f32)
        others = [b.name for b in BACKENDS.values() if b.runner == entry.runner
                  and all(b.fixed.get(k) != entry.fixed[k] for k in clash)]
        raise UsageError(f"the {entry.name} backend always runs with "
                         + ", ".join(f"{k}={entry.fixed[k]}" for k in clash)
                         + (f": use {' or '.join(others)} for another" if others else ""))
    runner = entry.runner_class()(path, **{**kwargs, **entry.fixed})
    # Sibling entries share a runner class: the row says which entry it is (openvino-bf16).
    class_label = f"{type(runner).backend}:"
    if entry.name != type(runner).backend and runner.name.startswith(class_label):
        runner.name = f"{entry.name}:{runner.name[len(class_label):]}"  # and so does its label
    runner.backend = entry.name
    return runner
