"""The JSON sidecar next to a TensorRT engine (``model.engine`` -> ``model.engine.json``).

Engines stay raw so trtexec and Polygraphy load them; everything an app needs to use one without
porter travels beside it: I/O names, shapes, dtypes and the optimisation profile, precision,
preprocessing and class names (the ModelCard), the quantizer that made its INT8 scales, and what
the engine is tied to: TensorRT version, GPU name and compute capability, hardware and version
compatibility, the source ONNX's and the engine's sha256.

This module builds and writes sidecars. Reading, validation and the compatibility rules live in
``port.engines.trt_sidecar`` (the runner needs them and sits below export); import them from
there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from port.engines.trt_sidecar import SIDECAR_FORMAT, validate_sidecar
from port.ground.atomic import atomic_write_text
from port.models.card import ModelCard


def build_sidecar(
    *,
    engine_name: str,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    precision: str,
    tensorrt_version: str,
    gpu_name: str,
    gpu_cc: tuple[int, int],
    hardware_compatibility: str | None,
    version_compatible: bool,
    source_onnx_sha256: str,
    card: ModelCard,
    quantizer: str | None = None,
    engine_sha256: str | None = None,
    build: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble (and validate) the sidecar for one engine.

    ``inputs`` items: ``{"name", "dtype", "shape", "profile": {"min", "opt", "max"}}`` with ``-1``
    for dynamic axes; ``outputs`` items: ``{"name", "dtype", "shape"}``. ``quantizer`` is
    ``"modelopt"`` or ``"onnxruntime"`` for QDQ INT8 engines, ``"tensorrt"`` for the classic
    calibrator, ``None`` otherwise. ``build`` holds the build plan and options for the record.
    """
    sidecar: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "engine": engine_name,
        "engine_sha256": engine_sha256,
        "inputs": [_tensor(t, with_profile=True) for t in inputs],
        "outputs": [_tensor(t, with_profile=False) for t in outputs],
        "layout": card.preprocess.layout,
        "precision": precision,
        "quantizer": quantizer,
        "tensorrt_version": tensorrt_version,
        "gpu": {"name": gpu_name, "compute_capability": f"{gpu_cc[0]}.{gpu_cc[1]}"},
        "hardware_compatibility": hardware_compatibility,
        "version_compatible": bool(version_compatible),
        "source_onnx_sha256": source_onnx_sha256,
        "preprocess": card.preprocess.to_dict(),
        "classes": list(card.classes),
        "card": card.to_dict(),
        "build": build or {},
    }
    return validate_sidecar(sidecar)


def _tensor(t: dict[str, Any], *, with_profile: bool) -> dict[str, Any]:
    out = {"name": str(t["name"]), "dtype": str(t["dtype"]), "shape": [int(d) for d in t["shape"]]}
    if with_profile and t.get("profile") is not None:
        out["profile"] = {k: [int(d) for d in t["profile"][k]] for k in ("min", "opt", "max")}
    return out


def write_sidecar(path: Path | str, sidecar: dict[str, Any]) -> Path:
    """Write atomically (temp file, fsync, rename) so a crash never leaves half a sidecar."""
    path = Path(path)
    validate_sidecar(sidecar)
    atomic_write_text(path, json.dumps(sidecar, indent=2, sort_keys=False) + "\n")
    return path
