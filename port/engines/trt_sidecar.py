"""Reading and checking TensorRT engine sidecars (``model.engine`` -> ``model.engine.json``).

The sidecar is written by ``port.export.sidecar`` when the engine is built; this module holds
what both the builder and the runner need (the runner sits below export, so the rules live
here): validation, reading, and :func:`check_compatible`, which refuses an engine built by
another TensorRT version or for another GPU *before* TensorRT tries to deserialize it, naming
both sides and the fix.

The rules follow TensorRT's "Engine Compatibility" / "Version Compatibility" documentation:
plans load only in the exact TensorRT version that built them unless built with
``BuilderFlag.VERSION_COMPATIBLE`` (then in newer versions of the same major, and TensorRT 10
plans in a TensorRT 11 runtime; never in an older runtime); and only on the GPU architecture
they were built for unless built with a hardware compatibility level (``AMPERE_PLUS``: any
compute capability >= 8.0; ``SAME_COMPUTE_CAPABILITY``: other GPUs of the same compute
capability).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from port.ground import dists
from port.ground.errors import ModelError
from port.models.card import ModelCard

SIDECAR_FORMAT = 1
SIDECAR_SUFFIX = ".json"
_REQUIRED = {
    "format": int,
    "engine": str,
    "inputs": list,
    "outputs": list,
    "precision": str,
    "tensorrt_version": str,
    "gpu": dict,
    "hardware_compatibility": (str, type(None)),
    "version_compatible": bool,
    "source_onnx_sha256": str,
    "card": dict,
}
_TENSOR_KEYS = {"name": str, "dtype": str, "shape": list}
# Cross-major loads of version-compatible plans that TensorRT documents (built -> runtime).
_CROSS_MAJOR_OK = {(8, 10), (10, 11)}


def sidecar_path(engine_path: Path | str) -> Path:
    """``runs/r18/model_fp16.engine`` -> ``runs/r18/model_fp16.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def validate_sidecar(sidecar: dict[str, Any], where: str = "engine sidecar") -> dict[str, Any]:
    """Check the keys and types an app relies on; raise ``ModelError`` naming the first problem."""
    for key, kind in _REQUIRED.items():
        if key not in sidecar:
            raise ModelError(
                f"{where} has no '{key}': rebuild the engine with porter export --to trt"
            )
        if not isinstance(sidecar[key], kind):
            raise ModelError(
                f"{where}: '{key}' has the wrong type ({type(sidecar[key]).__name__}): rebuild the "
                f"engine with porter export --to trt"
            )
    if sidecar["format"] > SIDECAR_FORMAT:
        raise ModelError(
            f"{where} has format {sidecar['format']}, newer than this porter understands "
            f"({SIDECAR_FORMAT}): upgrade porter"
        )
    if not sidecar["inputs"] or not sidecar["outputs"]:
        raise ModelError(f"{where} lists no inputs or no outputs: rebuild the engine")
    for tensor in sidecar["inputs"] + sidecar["outputs"]:
        for key, kind in _TENSOR_KEYS.items():
            if not isinstance(tensor, dict) or not isinstance(tensor.get(key), kind):
                raise ModelError(f"{where}: an I/O entry lacks '{key}': rebuild the engine")
    for tensor in sidecar["inputs"]:
        profile = tensor.get("profile")
        if profile is not None and not all(k in profile for k in ("min", "opt", "max")):
            raise ModelError(f"{where}: input '{tensor['name']}' has an incomplete profile")
    if "compute_capability" not in sidecar["gpu"] or "name" not in sidecar["gpu"]:
        raise ModelError(f"{where}: 'gpu' needs 'name' and 'compute_capability'")
    parse_cc(sidecar["gpu"]["compute_capability"], where)
    try:
        ModelCard.from_dict(sidecar["card"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(
            f"{where}: the model card is incomplete ({exc}): rebuild the engine"
        ) from None
    return sidecar


def read_sidecar(path: Path | str) -> dict[str, Any]:
    """Load and validate a sidecar; ``ModelError`` when it is missing, not JSON, or incomplete."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(
            f"engine sidecar {path} not found: rebuild the engine with porter export --to trt"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(
            f"engine sidecar {path} is not valid JSON ({exc.msg}): rebuild it"
        ) from None
    if not isinstance(data, dict):
        raise ModelError(f"engine sidecar {path} is not a JSON object: rebuild it")
    return validate_sidecar(data, where=f"engine sidecar {path}")


def sidecar_precision(engine_path: Path | str) -> str:
    """The precision an engine was built at, from its sidecar (engines stay raw: the sidecar is
    where an engine says what it is)."""
    return str(read_sidecar(sidecar_path(engine_path))["precision"])


def card_from_sidecar(sidecar: dict[str, Any]) -> ModelCard:
    """The ModelCard stored in a sidecar."""
    return ModelCard.from_dict(sidecar["card"])


def parse_cc(text: str | tuple[int, int], where: str = "compute capability") -> tuple[int, int]:
    """``'8.6'`` -> ``(8, 6)``."""
    if isinstance(text, tuple):
        return (int(text[0]), int(text[1]))
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", str(text))
    if not match:
        raise ModelError(f"{where}: compute capability '{text}' is not of the form MAJOR.MINOR")
    return (int(match.group(1)), int(match.group(2)))


def parse_version(text: str) -> tuple[int, ...]:
    """``'10.3.0.26'`` -> ``(10, 3, 0, 26)``; ``'10.8.0.post1'`` -> ``(10, 8, 0)``.

    :func:`port.ground.dists.parse_version`, strict: a recorded TensorRT version without
    digits is a broken sidecar (``ModelError``), not "version ()".
    """
    parts = dists.parse_version(text)
    if not parts:
        raise ModelError(f"TensorRT version '{text}' is not a version number")
    return parts


def _same_version(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    # trt.__version__ may or may not carry the build number; compare what both sides have.
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def check_compatible(
    sidecar: dict[str, Any],
    runtime_trt_version: str,
    gpu_cc: tuple[int, int],
    gpu_name: str,
) -> None:
    """Refuse an engine this TensorRT version or this GPU cannot run, naming both sides and the fix.

    Raises ``ModelError``; returns ``None`` when the engine may be deserialized here.
    """
    built_version = sidecar["tensorrt_version"]
    built = parse_version(built_version)
    here = parse_version(runtime_trt_version)
    built_cc = parse_cc(sidecar["gpu"]["compute_capability"])
    built_gpu = sidecar["gpu"]["name"]
    engine = sidecar.get("engine", "engine")
    built_side = f"TensorRT {built_version} on {built_gpu} (compute capability {_cc(built_cc)})"
    here_side = f"TensorRT {runtime_trt_version} on {gpu_name} (compute capability {_cc(gpu_cc)})"

    version_ok, version_fix = _version_ok(sidecar, built, here)
    hardware_ok, hardware_fix = _hardware_ok(sidecar, built_cc, gpu_cc)
    if version_ok and hardware_ok:
        return
    problems, flags = [], []
    if not version_ok:
        problems.append("another TensorRT version")
        if version_fix:
            flags.append(version_fix)
    if not hardware_ok:
        problems.append("another GPU")
        if hardware_fix:
            flags.append(hardware_fix)
    fix = "rebuild it here with `porter export --to trt`"
    # Both mismatches need both flags: the flags only help when every one of them is possible.
    if flags and len(flags) == len(problems):
        fix += f", or build it with {' and '.join(flags)}"
    raise ModelError(
        f"{engine} was built for {' and '.join(problems)}: built with {built_side}, this machine "
        f"has {here_side}: {fix}"
    )


def _cc(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


def _version_ok(
    sidecar: dict[str, Any], built: tuple[int, ...], here: tuple[int, ...]
) -> tuple[bool, str | None]:
    """(loads here?, the build flag that would make it load, if any)."""
    if _same_version(built, here):
        return True, None
    newer_runtime = here > built
    if sidecar["version_compatible"]:
        if newer_runtime and (built[0] == here[0] or (built[0], here[0]) in _CROSS_MAJOR_OK):
            return True, None
        return False, None  # no flag helps an older runtime or an unsupported major jump
    # A version-compatible build would load in a newer runtime of the same (or the next
    # documented) major; nothing makes a plan load in an older TensorRT.
    can_help = newer_runtime and (built[0] == here[0] or (built[0], here[0]) in _CROSS_MAJOR_OK)
    return False, ("--version-compatible" if can_help else None)


def _hardware_ok(
    sidecar: dict[str, Any], built_cc: tuple[int, int], here_cc: tuple[int, int]
) -> tuple[bool, str | None]:
    level = sidecar["hardware_compatibility"]
    if level == "ampere+":
        if here_cc >= (8, 0):
            return True, None
        return False, None  # an Ampere+ engine cannot run on an older GPU; only a rebuild helps
    if built_cc == here_cc:
        return True, None  # "same-cc" and no level both need the same compute capability
    if built_cc >= (8, 0) and here_cc >= (8, 0):
        return False, "--hardware-compatibility ampere+"
    return False, None
