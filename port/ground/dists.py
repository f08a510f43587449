"""Installed distributions and modules, read from metadata and import specs only: nothing is
imported, so the registry (``port.formats``), ``hostinfo`` and ``doctor`` can ask cheaply."""

from __future__ import annotations

import importlib.util
import re


def dist_version(*names: str) -> str | None:
    """Installed version of the first distribution found among ``names`` (metadata only: cheap)."""
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def parse_version(text: str | None) -> tuple[int, ...]:
    """Leading numeric parts: ``'10.3.0.26'`` -> ``(10, 3, 0, 26)``, ``'10.8.0.post1'`` ->
    ``(10, 8, 0)``, ``'2.15.0+cu132'`` -> ``(2, 15, 0)``; ``()`` when there are none."""
    parts: list[int] = []
    for piece in str(text or "").strip().split("."):
        match = re.match(r"^(\d+)", piece)
        if not match:
            break
        parts.append(int(match.group(1)))
        if match.group(1) != piece:
            break
    return tuple(parts)


def has_module(module: str) -> bool:
    """Whether ``module`` can be imported (its spec is found; nothing is imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package
        return False
