"""Model files: ``model.pt`` = ModelCard + state_dict, written atomically, read without pickle code.

Format ``porter-model/1`` is a plain dict ``{"format", "card", "state_dict", **extra}`` that
``torch.load(weights_only=True)`` can read, so a checkpoint from elsewhere never runs code on
load. Files that need arbitrary unpickling (a pickled ``nn.Module``, custom classes, numpy
objects) are refused with a message saying how to re-save them.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from port.atomic import atomic_path
from port.errors import ModelError, UsageError, first_line
from port.models.card import ModelCard
from port.models.registry import create_model

FORMAT = "porter-model/1"
_RESERVED = ("format", "card", "state_dict")
_WRAPPERS = ("state_dict", "model")  # keys other tools nest a state_dict under


# -- writing --------------------------------------------------------------------------------------
def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`port.atomic.atomic_path` (temp file, fsync, rename).

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:
            # torch's zip writer reports a failed write(2) as a RuntimeError ("file write
            # failed") without the errno: give the CLI the OS error it was (a full disk).
            if "write" not in str(exc).lower():
                raise
            raise _write_error(tmp.parent, path) from None
    return path


def _write_error(directory: Path, path: Path) -> OSError:
    """The OSError behind a failed torch.save into ``directory``: ENOSPC when it is full."""
    import errno
    import os

    try:
        st = os.statvfs(directory)
        full = st.f_bavail * st.f_frsize < 1 << 20  # under 1 MiB left: the write hit the end
    except OSError:
        full = False
    code = errno.ENOSPC if full else errno.EIO
    return OSError(code, os.strerror(code), str(path))


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights as CPU tensors in contiguous (NCHW) layout, even for a channels_last model."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_model(
    path: str | Path, model: nn.Module, card: ModelCard, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` and its ``card`` as a ``porter-model/1`` file, atomically.

    ``extra`` adds plain-data keys (config, metrics, provenance); they must not shadow
    ``format``, ``card`` or ``state_dict``.
    """
    extra = dict(extra or {})
    clash = [k for k in _RESERVED if k in extra]
    if clash:
        raise ValueError(f"extra keys {clash} would overwrite the model payload")  # a bug
    payload = {"format": FORMAT, "card": card.to_dict(), "state_dict": plain_state_dict(model)}
    payload.update(extra)
    return atomic_save(payload, path)


# -- reading --------------------------------------------------------------------------------------
def safe_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)``; every failure becomes a one-line ``ModelError``."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file {path} not found: check the path or train/import first")
    if not path.is_file():
        raise ModelError(f"{path} is not a file: pass the .pt checkpoint itself")
    try:
        with warnings.catch_warnings():
            # Old pickle protocols trigger a UserWarning that is noise for the user.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's wording changes between releases ("Unsupported global: GLOBAL x" in 2.4,
        # "Trying to load unsupported GLOBAL x whose module ..." in 2.6+), so the file itself
        # is read: a pickle that names classes or functions outside torch needs their code
        # to load. Refused as exactly that, never as "corrupt" (which invites weights_only=False).
        named = code_references(path)
        found = re.search(r"\bGLOBAL ([\w.]+)", str(exc), flags=re.IGNORECASE)
        if named or found:
            what = named[0] if named else found.group(1)  # type: ignore[union-attr]
            raise ModelError(
                f"refused: {path} needs arbitrary unpickling (it contains {what}), i.e. it runs "
                "code from the file to load: it is not corrupt; only if you trust it, re-save "
                "it as a plain state_dict: torch.save(model.state_dict(), PATH)"
            ) from None
        # Random bytes, or a pickle not written by torch.save (unsupported opcodes).
        op = re.search(r"Unsupported operand \d+", str(exc))
        why = op.group(0) if op else "unreadable pickle"
        raise ModelError(
            f"{path} is corrupt or not a torch.save file ({why}): re-save it with "
            "torch.save(model.state_dict(), PATH)"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError) as exc:
        # torch.load's reaction to a truncated zip, an empty file or random bytes.
        why = first_line(exc, limit=100)
        raise ModelError(
            f"{path} is truncated or corrupt ({why}): re-save or re-download it"
        ) from None
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None


# Globals a torch.save file of tensors and plain containers references: torch's own rebuild
# functions and storage types, OrderedDict, and the codec torch uses for bytes.
_DATA_MODULES = ("torch", "collections", "_codecs")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING",
               "BINSTRING", "STRING"}


def code_references(path: str | Path) -> list[str]:
    """``module.name`` of every global a pickle (or torch.save zip) names outside torch.

    Read with :mod:`pickletools` (nothing is executed). A non-empty list means loading the
    file would import and call that code. Unreadable files give an empty list.
    """
    import pickletools
    import zipfile

    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                data = zf.read(name) if name else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile, KeyError):
        return []
    named: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in _STRING_OPS and isinstance(arg, str | bytes):
                strings.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
            elif op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                named.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                named.append(f"{strings[-2]}.{strings[-1]}")
            elif op.name == "STOP":
                break
    except (ValueError, EOFError, UnicodeDecodeError):
        pass  # a damaged pickle: whatever was named before the damage still counts
    return [n for n in dict.fromkeys(named)
            if not any(n == m or n.startswith(m + ".") for m in _DATA_MODULES)]


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def check_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, hint: str
) -> None:
    """Raise ``ModelError`` naming the first key or shape of ``state_dict`` that ``model`` lacks.

    ``hint`` is the "what to do" half of the message (e.g. "check --arch and --num-classes").
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    for key, want in expected.items():
        got = state_dict.get(key)
        if got is None:
            continue
        if not isinstance(got, torch.Tensor):
            raise ModelError(f"{source}: entry {key!r} is a {type(got).__name__}, not a tensor")
        if got.shape != want.shape:
            raise ModelError(
                f"{source} does not fit the model: {key} is {_shape(got)} in the file but "
                f"{_shape(want)} in the model; {hint}"
            )
    if missing or unexpected:
        key = (missing or unexpected)[0]
        what = "lacks key" if missing else "has unexpected key"
        raise ModelError(
            f"{source} {what} {key!r} ({len(missing)} missing, {len(unexpected)} unexpected); "
            f"{hint}"
        )


def apply_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, hint: str
) -> nn.Module:
    """Check (see :func:`check_state_dict`), then load ``state_dict`` strictly into ``model``."""
    check_state_dict(model, state_dict, source, hint)
    model.load_state_dict(state_dict, strict=True)
    return model


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelCard, dict[str, Any]]:
    """Rebuild the model a ``porter-model/1`` file describes: ``(model.eval(), card, payload)``."""
    payload = safe_load(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        if isinstance(payload, dict) and "format" in payload:
            raise ModelError(
                f"{path} has format {payload['format']!r}, expected {FORMAT!r}: re-save it with "
                "this porter version"
            )
        raise ModelError(
            f"{path} is not a porter model (no card): bring a raw state_dict in with "
            "`porter import FILE --arch NAME`"
        )
    try:
        card = ModelCard.from_dict(payload["card"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path} has a malformed model card ({exc!r}): re-save it") from None
    try:
        model = create_model(card.arch, card.num_classes, **card.model_kwargs)
    except UsageError as exc:
        raise ModelError(f"{path} cannot be rebuilt: {exc}") from None
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise ModelError(f"{path} has no state_dict: re-save it")
    apply_state_dict(
        model, state, str(path),
        f"the file does not match its own card ({card.arch}, {card.num_classes} classes): "
        "re-save it",
    )
    model.to(map_location)
    return model.eval(), card, payload


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a raw state_dict (for ``porter import``), safely.

    Accepts a bare ``{name: tensor}`` dict, the usual ``{"state_dict": ...}`` / ``{"model": ...}``
    wrappers, and strips a ``module.`` prefix left by DataParallel/DDP.
    """
    obj = safe_load(path)
    for key in _WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise ModelError(
            f"{path} holds no state_dict (found {type(obj).__name__}): save one with "
            "torch.save(model.state_dict(), PATH)"
        )
    key = next((k for k in obj if not isinstance(k, str)), None)
    if key is not None:
        raise ModelError(
            f"{path} is not a plain state_dict (key {key!r} is a {type(key).__name__}, not a "
            "parameter name): save one with torch.save(model.state_dict(), PATH)"
        )
    bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ModelError(
            f"{path} is not a plain state_dict (entry {bad!r} is a {type(obj[bad]).__name__}): "
            "save one with torch.save(model.state_dict(), PATH)"
        )
    if all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)
