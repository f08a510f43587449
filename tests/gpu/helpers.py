"""Helpers shared by the GPU tests (kept out of conftest so test modules can import them)."""

from __future__ import annotations

import importlib.util

import numpy as np


def cuda_missing() -> str | None:
    """Why torch cannot use a CUDA device here, or None when it can."""
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU (torch.cuda.is_available() is False)"
    return None


def pycuda_missing() -> str | None:
    """Why porter's pycuda layer cannot run here (no pycuda, no CUDA GPU), or None."""
    if importlib.util.find_spec("pycuda") is None:
        return "needs pycuda (not installed; see README, GPU set-up)"
    return cuda_missing()


def gpu_missing() -> str | None:
    """Why the GPU tests cannot run here, or None when they can."""
    missing = [m for m in ("tensorrt", "pycuda") if importlib.util.find_spec(m) is None]
    if missing:
        return f"needs {' and '.join(missing)} (not installed; see README, GPU set-up)"
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU (torch.cuda.is_available() is False)"
    return None


def trt_major() -> int:
    """Installed TensorRT major version (tests that need one path skip on the other)."""
    import tensorrt as trt

    return int(trt.__version__.split(".")[0])


def agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of images whose top-1 class matches the reference's."""
    return float(np.mean(logits.argmax(1) == reference.argmax(1)))
