"""The machine and its software, as plain data: one place for the manifest, reports and doctor.

:func:`env_info` (recorded with every artifact and report): package versions from distribution
metadata (nothing is imported), the CPU from ``port.ground.cpu``, the GPU name from torch only
when the process already imported it, else from the NVIDIA driver's ``/proc`` entries; so
recording an artifact never imports torch. :func:`probe_machine` (``porter doctor``) looks
further: it imports torch and each registered runtime where present, each behind the specific
errors a broken install raises, and never raises itself.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from port.ground.cpu import cpu_info
from port.ground.dists import dist_version, has_module


def backend_distributions() -> dict[str, tuple[str, ...]]:
    """Runtime name -> the distributions it ships under, from the backend registry
    (``port.formats.BACKENDS``: the CUDA-suffixed TensorRT wheels, onnxruntime-gpu, ...); keyed
    by each entry's first distribution, so sibling entries (openvino, openvino-bf16) count once."""
    from port.formats import BACKENDS

    return {entry.distributions[0]: entry.distributions
            for entry in BACKENDS.values() if entry.distributions}


def tensorrt_version() -> str | None:
    """The installed TensorRT version (whichever CUDA-suffixed wheel provides it)."""
    return dist_version(*backend_distributions()["tensorrt"])


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
    from port.ground.version import VERSION

    return (
        ("porter", VERSION),
        ("python", platform.python_version()),
        ("platform", platform.platform()),
        ("torchvision", dist_version("torchvision")),
        ("onnx", dist_version("onnx")),
        # Every runtime of the backend registry (torch, onnxruntime, openvino, tensorrt, ...).
        *((name, dist_version(*names)) for name, names in backend_distributions().items()),
        ("device", device_name()),
    )


def env_info() -> dict[str, Any]:
    """Versions of python and the ML packages (None when absent), the device name and the CPU
    (``port.ground.cpu.cpu_info``: model, int8-relevant flags, whether int8 kernels saturate).

    A fresh copy each call; computed once per process.
    """
    env = dict(_env_info())
    env["cpu"] = dict(cpu_info())
    return env


# -- what `porter doctor` shows: packages, GPUs, driver (each probe cheap, never raising) ------
def _probe_torch() -> dict[str, Any]:
    info: dict[str, Any] = {"installed": has_module("torch"), "version": None, "cuda": None,
                            "cuda_available": False, "devices": [], "error": None}
    if not info["installed"]:
        return info
    try:
        import torch
    except (ImportError, OSError) as exc:
        info["error"] = str(exc).strip().splitlines()[0]
        return info

    info["version"] = torch.__version__
    info["cuda"] = torch.version.cuda
    try:
        info["cuda_available"] = bool(torch.cuda.is_available())
        for i in range(torch.cuda.device_count() if info["cuda_available"] else 0):
            props = torch.cuda.get_device_properties(i)
            info["devices"].append({
                "index": i,
                "name": props.name,
                "compute_capability": f"{props.major}.{props.minor}",
                "total_memory_bytes": int(props.total_memory),
            })
    except RuntimeError as exc:  # a driver/toolkit mismatch surfaces here
        info["error"] = str(exc).strip().splitlines()[0]
    return info


def _probe_driver(pycuda_ok: bool) -> dict[str, Any]:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.strip().splitlines()
            if out:
                return {"version": out[0].strip(), "source": "nvidia-smi"}
        except (OSError, subprocess.SubprocessError):
            pass
    if pycuda_ok:
        try:
            import pycuda.driver as cuda

            cuda.init()
            v = int(cuda.get_driver_version())  # CUDA driver API version, e.g. 12040
            return {"version": None, "cuda_driver_api": f"{v // 1000}.{(v % 1000) // 10}",
                    "source": "pycuda"}
        except (ImportError, OSError, RuntimeError) as exc:
            return {"version": None, "source": None, "error": str(exc).splitlines()[0]}
    return {"version": None, "source": None}


def probe_tensorrt() -> dict[str, Any]:
    """TensorRT: installed, version, and the import error of a wheel without its libraries."""
    info: dict[str, Any] = {"installed": has_module("tensorrt"), "version": None, "error": None}
    if not info["installed"]:
        return info
    info["version"] = tensorrt_version()
    try:
        import tensorrt as trt

        info["version"] = str(trt.__version__)
    except (ImportError, OSError) as exc:  # wheel present, libnvinfer or CUDA libs missing
        info["error"] = str(exc).strip().splitlines()[0]
    return info


def probe_onnxruntime() -> dict[str, Any]:
    """ONNX Runtime: installed, version and the execution providers this build offers."""
    info: dict[str, Any] = {"installed": has_module("onnxruntime"), "version": None,
                            "providers": []}
    if info["installed"]:
        try:
            import onnxruntime as ort
        except (ImportError, OSError) as exc:
            info["error"] = str(exc).strip().splitlines()[0]
            return info
        info["version"] = ort.__version__
        info["providers"] = list(ort.get_available_providers())
    return info


def probe_openvino() -> dict[str, Any]:
    """OpenVINO: installed, version, the devices it sees and what each can compute in
    (``OPTIMIZATION_CAPABILITIES``: e.g. FP32, BF16, INT8 on a CPU with AVX512_BF16)."""
    info: dict[str, Any] = {"installed": has_module("openvino"), "version": None,
                            "devices": {}, "error": None}
    if not info["installed"]:
        return info
    try:
        import openvino as ov

        info["version"] = str(ov.get_version())
        core = ov.Core()
        for device in core.available_devices:
            try:
                caps = list(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
            except RuntimeError:  # a plugin that cannot answer: listed without capabilities
                caps = []
            info["devices"][device] = caps
    except (ImportError, OSError, RuntimeError) as exc:
        info["error"] = str(exc).strip().splitlines()[0]
    return info


def _probe_backends() -> dict[str, dict[str, Any]]:
    """Each registered backend's own probe (``Backend.probe``), run once per probe."""
    from port.formats import BACKENDS, resolve

    out: dict[str, dict[str, Any]] = {}
    for entry in BACKENDS.values():
        if entry.probe is not None and entry.name not in out:
            out[entry.name] = resolve(entry.probe)()
    return out


def probe_machine() -> dict[str, Any]:
    """What this machine offers; plain data (JSON-serialisable), never raises."""
    pycuda_ok = has_module("pycuda")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "cpu": dict(cpu_info()),
        "torch": _probe_torch(),
        "driver": _probe_driver(pycuda_ok),
        **_probe_backends(),  # onnxruntime, openvino, tensorrt: their registry probes
        "pycuda": {"installed": pycuda_ok, "version": dist_version("pycuda")},
        "onnx": {"installed": has_module("onnx"), "version": dist_version("onnx")},
        "modelopt": {"installed": has_module("modelopt"),
                     "version": dist_version("nvidia-modelopt")},
    }
