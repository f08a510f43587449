"""The machine and its software, as plain data: one place for the manifest, reports and doctor.

Package versions come from distribution metadata (nothing is imported), the CPU from
``port.cpu``, the GPU name from torch only when the process already imported it, else from the
NVIDIA driver's ``/proc`` entries. So recording an artifact never imports torch.
"""

from __future__ import annotations

import platform
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from port.cpu import cpu_info

# The distribution names each package ships under (the CUDA-suffixed TensorRT wheels, the GPU
# build of ONNX Runtime): one list, used wherever porter asks what is installed.
TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11")
ONNXRUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


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


def _nvidia_gpu_names() -> list[str]:
    """GPU models from the NVIDIA driver's /proc entries (Linux), without CUDA or torch."""
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            for line in info.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("Model:"):
                    names.append(line.split(":", 1)[1].strip())
        except OSError:
            continue
    return names


def device_name() -> str:
    """The device stages compute on: the current CUDA GPU when there is one, else the CPU."""
    torch = sys.modules.get("torch")  # only a torch this process already paid for
    if torch is not None and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(torch.cuda.current_device()))
    gpus = _nvidia_gpu_names()
    return gpus[0] if gpus else cpu_info()["model"]


@lru_cache(maxsize=1)
def _env_info() -> tuple[tuple[str, Any], ...]:
    from port import __version__

    return (
        ("porter", __version__),
        ("python", platform.python_version()),
        ("platform", platform.platform()),
        ("torch", dist_version("torch")),
        ("torchvision", dist_version("torchvision")),
        ("onnx", dist_version("onnx")),
        ("onnxruntime", dist_version(*ONNXRUNTIME_DISTRIBUTIONS)),
        ("tensorrt", dist_version(*TENSORRT_DISTRIBUTIONS)),
        ("device", device_name()),
    )


def env_info() -> dict[str, Any]:
    """Versions of python and the ML packages (None when absent), the device name and the CPU
    (``port.cpu.cpu_info``: model, int8-relevant flags, whether int8 kernels saturate).

    A fresh copy each call; computed once per process.
    """
    env = dict(_env_info())
    env["cpu"] = dict(cpu_info())
    return env
