"""The flags of `porter import`, what an import hands back, and the checks made before any
file is read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from port.formats import FORMATS
from port.ground.errors import UsageError
from port.ground.limits import (
    MAX_CLASSES,
    MAX_IMAGE_SIZE,
    MAX_WIDTH,
    MIN_IMAGE_SIZE,
    check_float,
    check_int,
)
from port.ground.vocab import CHANNELS, COLOR_ORDERS, LAYOUTS


@dataclass
class ImportRequest:
    """Flags of `porter import`."""

    source: Path
    arch: str | None = None
    num_classes: int | None = None
    image_size: int | None = None
    mean: tuple[float, ...] | None = None  # one value per channel (1 or 3)
    std: tuple[float, ...] | None = None
    classes: str | None = None  # comma-separated names or a file with one per line
    data: str | None = None
    width: float | None = None
    # State dicts from other code bases: the container entry holding the weights (default:
    # the usual ones, see port.models.checkpoint.read_state_dict) and prefix renames OLD=NEW.
    weights_key: str | None = None
    key_map: tuple[str, ...] = ()
    # What an ONNX graph cannot say: NCHW|NHWC for a shape that could be either, RGB|BGR.
    layout: str | None = None
    color_order: str | None = None


@dataclass
class Imported:
    """The reference model an import wrote into the run, ready to be recorded."""

    path: Path  # RUN/model.pt or RUN/model.onnx
    kind: str  # the record's kind: checkpoint | onnx
    card: dict[str, Any]  # ModelCard.to_dict()
    # What was read and done to reach the model (into the record's params); "describe" is a
    # line for the user, "signature" the graph's one line.
    how: dict[str, Any] = field(default_factory=dict)
    companions: list[Path] = field(default_factory=list)  # external data files copied


def check_request(req: ImportRequest) -> None:
    """Refuse a missing or unknown kind of file and flags that do not apply to it or are out of
    range, before any file is read or anything allocated."""
    if not req.source.is_file():
        raise UsageError(f"{req.source} not found: pass the path of a .pt/.pth or .onnx file")
    suffix = req.source.suffix.lower()
    # .npz: framework-neutral weights (port.stages.weights), rebuilt like a state_dict.
    importable = (*FORMATS["checkpoint"].suffixes, *FORMATS["onnx"].suffixes, ".npz")
    if suffix not in importable:
        raise UsageError(f"cannot import '{req.source.name}': expected a "
                         f"{', '.join(importable)} file")
    if suffix in FORMATS["onnx"].suffixes and (req.weights_key or req.key_map):
        raise UsageError("--weights-key and --key-map apply to state_dict files (.pt/.pth), "
                         f"not to {req.source.name}")
    if suffix not in FORMATS["onnx"].suffixes and req.layout is not None:
        raise UsageError(f"--layout applies to ONNX files (porter's own networks take NCHW), "
                         f"not to {req.source.name}")
    check_import_flags(req)


def check_import_flags(req: ImportRequest) -> None:
    """Range checks of the numeric flags, before any file is read or anything allocated."""
    check_int("--num-classes", req.num_classes, 1, MAX_CLASSES)
    check_int("--image-size", req.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    check_float("--width", req.width, lo=0.0, hi=MAX_WIDTH, lo_open=True)
    for flag, value, allowed in (("--layout", req.layout, LAYOUTS),
                                 ("--color-order", req.color_order, COLOR_ORDERS)):
        if value is not None and value not in allowed:
            raise UsageError(f"{flag} must be {' or '.join(allowed)}, got {value!r}")
    for flag, values in (("--mean", req.mean), ("--std", req.std)):
        if values is not None and len(values) not in CHANNELS:
            raise UsageError(f"{flag} takes one value per channel (1 or 3), got {len(values)}")
    for flag, values in (("--mean", req.mean), ("--std", req.std)):
        for v in values or ():
            check_float(flag, v, lo=0.0 if flag == "--std" else None, lo_open=True)
