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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from port.ground.atomic import atomic_path
from port.ground.errors import ModelError, UsageError, first_line
from port.models.card import ModelCard
from port.models.registry import create_model

FORMAT = "porter-model/1"
_RESERVED = ("format", "card", "state_dict")


# -- writing --------------------------------------------------------------------------------------
def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`port.ground.atomic.atomic_path` (temp file, fsync, rename).

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


_LISTED = 3  # how many keys of each kind a mismatch line names: enough to see the pattern


def _tail(a: str, b: str) -> int:
    """How many trailing dotted components ``a`` and ``b`` share (``layer1.0.conv1.weight``)."""
    x, y = a.split("."), b.split(".")
    n = 0
    while n < min(len(x), len(y)) and x[-1 - n] == y[-1 - n]:
        n += 1
    return n


def _closest(key: str, candidates: list[str]) -> str | None:
    """The candidate most like ``key``, or None when nothing is close.

    A renamed prefix keeps the module path's tail, so the longest shared dotted tail wins
    (``backbone.bn1.weight`` -> ``bn1.weight``, not ``conv1.weight``); difflib decides among
    equals and when no tail is shared.
    """
    import difflib

    if not candidates:
        return None

    def score(c: str) -> tuple[int, bool]:
        # A whole name that is the other's tail (bn1.bias in backbone.bn1.bias) beats a
        # deeper module that merely ends the same way (layer4.1.bn1.bias).
        tail = _tail(key, c)
        return tail, tail == min(key.count("."), c.count(".")) + 1

    best = max(score(c) for c in candidates)
    pool = [c for c in candidates if score(c) == best] if best[0] >= 2 else candidates
    found = difflib.get_close_matches(key, pool, n=1, cutoff=0.0 if best[0] >= 2 else 0.5)
    return found[0] if found else None


def _prefix_swap(missing: str, found: str) -> tuple[str, str] | None:
    """``(OLD, NEW)`` such that renaming the prefix OLD to NEW turns ``found`` into ``missing``.

    Only a swap at a ``.`` boundary with the same tail (``head.weight`` -> ``fc.weight``) counts:
    that is what ``--key-map OLD=NEW`` can do.
    """
    a, b = missing.split("."), found.split(".")
    tail = _tail(missing, found)
    if tail == 0 or (tail == len(a) and tail == len(b)):
        return None
    new = ".".join(a[: len(a) - tail]) + ("." if tail < len(a) else "")
    old = ".".join(b[: len(b) - tail]) + ("." if tail < len(b) else "")
    return old, new


def state_dict_mismatch(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str
) -> str | None:
    """One line naming what keeps ``state_dict`` from loading into ``model``; None when it fits.

    Lists the first few missing keys (with the closest name in the file and both shapes), the
    first few unexpected ones (with the closest name in the model) and the shape mismatches, and
    suggests a ``--key-map`` when the closest names differ by one consistent prefix.
    """
    expected = model.state_dict()
    for key, got in state_dict.items():
        if not isinstance(got, torch.Tensor):
            return f"{source}: entry {key!r} is a {type(got).__name__}, not a tensor"
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if not (missing or unexpected or wrong):
        return None
    parts: list[str] = []
    swaps: list[tuple[str, str]] = []
    for key in missing[:_LISTED]:
        near = _closest(key, unexpected)
        text = f"missing {key} {_shape(expected[key])}"
        if near is not None:
            text += f" (closest in the file: {near} {_shape(state_dict[near])})"
            swap = _prefix_swap(key, near)
            if swap is not None:
                swaps.append(swap)
        parts.append(text)
    for key in unexpected[:_LISTED]:
        near = _closest(key, missing)
        parts.append(f"unexpected {key} {_shape(state_dict[key])}"
                     + (f" (closest in the model: {near})" if near is not None else ""))
    for key in wrong[:_LISTED]:
        parts.append(f"{key} is {_shape(state_dict[key])} in the file but "
                     f"{_shape(expected[key])} in the model")
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of other shape"
    line = f"{source} does not fit the model ({counts}): {'; '.join(parts)}"
    # One rename explains every listed pair: say it as the flag that applies it.
    if swaps and len(set(swaps)) == 1:
        old, new = swaps[0]
        line += f"; try --key-map {old}={new}"
    return line


def check_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, hint: str
) -> None:
    """Raise ``ModelError`` with :func:`state_dict_mismatch`'s line when ``state_dict`` misfits.

    ``hint`` is the "what to do" half of the message (e.g. "check --arch and --num-classes").
    """
    line = state_dict_mismatch(model, state_dict, source)
    if line is not None:
        raise ModelError(f"{line}; {hint}" if "does not fit" in line else line)


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


# Keys other code bases nest the weights under, in the order they are tried. The plain weights
# come before an EMA copy: the EMA is a different model, taken only when asked (--weights-key)
# or when the file holds nothing else.
_CONTAINERS = ("state_dict", "model_state_dict", "model_state", "model", "module", "net")
_EMA_CONTAINERS = ("model_ema", "state_dict_ema", "ema", "ema_state_dict")
# Prefixes of wrapped modules: DataParallel/DDP (and AveragedModel) add ``module.``,
# torch.compile's OptimizedModule adds ``_orig_mod.``.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_NESTING = 4  # {"ema": {"module": {...}}} is 2 deep; deeper is no checkpoint layout we know


@dataclass
class ForeignState:
    """A state_dict read from another code base, and what was done to reach it."""

    state: dict[str, torch.Tensor]
    container: str | None = None  # the key path the weights were under ("model_ema.module")
    stripped: list[str] = field(default_factory=list)  # wrapper prefixes removed ("module.")
    dropped: list[str] = field(default_factory=list)  # wrapper bookkeeping ("n_averaged")
    key_map: list[str] = field(default_factory=list)  # --key-map renames applied, "OLD=NEW"
    others: list[str] = field(default_factory=list)  # other weight containers the file holds

    def describe(self) -> str:
        """One console line: where the weights came from (empty for a bare state_dict)."""
        parts = []
        if self.container:
            parts.append(f"weights from {self.container!r}")
        if self.others:
            parts.append(f"also in the file: {', '.join(map(repr, self.others))} "
                         "(--weights-key KEY to import one)")
        if self.stripped:
            parts.append(f"stripped prefix {' '.join(map(repr, self.stripped))}")
        if self.dropped:
            parts.append(f"dropped {' '.join(map(repr, self.dropped))}")
        if self.key_map:
            parts.append(f"renamed {' '.join(self.key_map)}")
        return "; ".join(parts)


def _dict_keys(obj: dict) -> list[str]:
    """The entries of a checkpoint dict that could hold weights (dict-valued), for messages."""
    return [str(k)[:40] for k, v in obj.items() if isinstance(v, dict)][:8]


def _unwrap(obj: Any, path: Path, weights_key: str | None) -> tuple[Any, list[str], list[str]]:
    """Descend into containers until a flat ``{name: tensor}`` dict: (it, key path, others)."""
    taken: list[str] = []
    others: list[str] = []
    if weights_key is not None:
        if not isinstance(obj, dict) or not isinstance(obj.get(weights_key), dict):
            where = _dict_keys(obj) if isinstance(obj, dict) else []
            raise UsageError(
                f"--weights-key {weights_key[:40]!r}: {path} has no such dict entry (its dict "
                f"entries: {', '.join(where) or 'none'}): pass one of them"
            )
        obj, taken = obj[weights_key], [weights_key]
    for depth in range(_MAX_NESTING):
        if not isinstance(obj, dict) or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        keys = [k for k in _CONTAINERS if isinstance(obj.get(k), dict)]
        ema = [k for k in _EMA_CONTAINERS if isinstance(obj.get(k), dict)]
        if not keys and depth == 0 and weights_key is None:
            keys = ema  # the file holds only an average: that is the model it offers
            ema = []
        if not keys:
            break
        if depth == 0 and weights_key is None:
            others = [*keys[1:], *ema]
        obj = obj[keys[0]]
        taken.append(keys[0])
    return obj, taken, others


def _strip_wrappers(state: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """Remove ``module.`` / ``_orig_mod.`` when every key has it (nested wrappers too).

    Returns (state, prefixes stripped, wrapper entries dropped).
    """
    stripped: list[str] = []
    dropped: list[str] = []
    # torch.optim.swa_utils.AveragedModel keeps a counter next to its ``module.*`` weights.
    if "n_averaged" in state and len(state) > 1 and all(
            k.startswith("module.") for k in state if k != "n_averaged"):
        state = {k: v for k, v in state.items() if k != "n_averaged"}
        dropped.append("n_averaged")
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped.append(prefix)
                changed = True
    return state, stripped, dropped


def parse_key_map(text: str) -> tuple[str, str]:
    """``OLD=NEW`` -> ``(OLD, NEW)``; a prefix rename as ``--key-map`` takes it."""
    old, sep, new = text.partition("=")
    if not sep or not old or "=" in new or len(text) > 200:
        raise UsageError(f"--key-map {text[:60]!r} is not OLD=NEW: give a key prefix and its "
                         "new name, e.g. --key-map backbone.=  or  --key-map head.=fc.")
    return old, new


def _apply_key_map(state: dict[str, Any], renames: list[tuple[str, str]],
                   path: Path) -> dict[str, Any]:
    """Rename key prefixes, in the order given; a rename that matches nothing is refused."""
    for old, new in renames:
        if not any(k.startswith(old) for k in state):
            heads = sorted({k.split(".")[0] + "." for k in state})[:6]
            raise UsageError(
                f"--key-map {old}={new} matches no key of {path} (keys start with "
                f"{', '.join(heads)}): give a prefix the file has"
            )
        renamed: dict[str, Any] = {}
        for k, v in state.items():
            name = new + k[len(old):] if k.startswith(old) else k
            if name in renamed:
                raise UsageError(f"--key-map {old}={new} gives two entries the name {name!r} "
                                 f"in {path}: map a longer prefix")
            renamed[name] = v
        state = renamed
    return state


def read_state_dict(path: str | Path, *, weights_key: str | None = None,
                    key_map: Sequence[tuple[str, str]] = ()) -> ForeignState:
    """Read a state_dict made by another code base (for ``porter import``), safely.

    Loads with ``torch.load(weights_only=True)`` (:func:`safe_load`), then: descends into the
    usual containers (``state_dict``, ``model_state_dict``, ``model_state``, ``model``, an EMA
    only when asked or alone; or ``weights_key``), strips wrapper prefixes (``module.`` of
    DataParallel/DDP, ``_orig_mod.`` of torch.compile) and applies ``key_map`` prefix renames.
    """
    path = Path(path)
    obj, taken, others = _unwrap(safe_load(path), path, weights_key)
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
        where = _dict_keys(obj)
        fix = (f"pass --weights-key with the entry that holds the weights ({', '.join(where)})"
               if where else "save one with torch.save(model.state_dict(), PATH)")
        raise ModelError(
            f"{path} is not a plain state_dict (entry {bad!r} is a {type(obj[bad]).__name__}): "
            f"{fix}"
        )
    state, stripped, dropped = _strip_wrappers(dict(obj))
    state = _apply_key_map(state, list(key_map), path)
    return ForeignState(state=state, container=".".join(taken) or None, stripped=stripped,
                        dropped=dropped,
                        key_map=[f"{o}={n}" for o, n in key_map], others=others)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a raw state_dict with :func:`read_state_dict`'s defaults: the tensors only."""
    return read_state_dict(path).state
