"""TensorRT 10's classic INT8 calibrators, fed through pycuda device buffers.

Only the classic path (``--calibrator entropy|minmax`` on TensorRT 10) uses these; TensorRT 11
removed ``IInt8Calibrator`` and its subclasses, and porter's default INT8 path on both versions
builds from a QDQ ONNX instead.

API (TensorRT 10 Python reference, Int8 -> IInt8EntropyCalibrator2 / IInt8MinMaxCalibrator):
subclasses must call the base ``__init__`` explicitly; ``get_batch_size()``;
``get_batch(names) -> list[int] | None`` returns one device pointer per input name, ``None``
when the data is exhausted; ``read_calibration_cache() -> bytes | None``;
``write_calibration_cache(cache)``. Both classes are deprecated since 10.1 (superseded by
explicit quantization) but still present in every 10.x release.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from port.engines.cuda import host_device_buffer
from port.engines.trt_loaders import import_tensorrt
from port.ground.atomic import atomic_write_bytes
from port.ground.errors import DataError, UsageError


def calibration_batches(images: np.ndarray, batch_size: int) -> int:
    """How many full batches of ``batch_size`` the images give (the last partial one is dropped:
    the calibration profile has one fixed shape)."""
    if batch_size < 1:
        raise UsageError(f"the calibration batch size must be positive, got {batch_size}")
    n = int(images.shape[0]) // batch_size
    if n == 0:
        raise DataError(
            f"{images.shape[0]} calibration images do not fill one batch of {batch_size}: pass "
            f"more --calib-images or a smaller --opt-batch"
        )
    return n


def make_calibrator(
    *,
    kind: str,
    images: np.ndarray,
    input_name: str,
    batch_size: int,
    cache_path: Path | None = None,
) -> Any:
    """An ``IInt8EntropyCalibrator2`` (``kind="entropy"``) or ``IInt8MinMaxCalibrator``
    (``kind="minmax"``) over ``images`` (float32 NCHW, preprocessed like evaluation).

    Create it while the CUDA context is current: it allocates its device buffer immediately,
    and TensorRT calls ``get_batch`` from inside ``build_serialized_network``.
    """
    import pycuda.driver as cuda  # import_driver() already succeeded in the builder

    trt = import_tensorrt()
    bases = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}
    if kind not in bases:
        raise UsageError(f"--calibrator {kind!r} is unknown: choose entropy or minmax")
    base = getattr(trt, bases[kind], None)
    if base is None:
        raise UsageError(
            f"TensorRT {trt.__version__} has no {bases[kind]} (removed in TensorRT 11): omit "
            f"--calibrator to build from the QDQ ONNX"
        )
    images = np.ascontiguousarray(images, dtype=np.float32)
    n_batches = calibration_batches(images, batch_size)
    sample = images.shape[1:]

    class PorterCalibrator(base):  # type: ignore[misc, valid-type]
        """Hands TensorRT one batch at a time from a single reused device buffer."""

        def __init__(self) -> None:
            base.__init__(self)  # pybind11 base must be initialised explicitly
            self.kind = kind
            self.batches_served = 0
            self.cache_used = False
            self._buffer = host_device_buffer(batch_size * int(np.prod(sample)), np.float32)

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.batches_served >= n_batches:
                return None  # tells TensorRT the calibration data is exhausted
            start = self.batches_served * batch_size
            batch = images[start : start + batch_size]
            host = self._buffer.view(batch.shape)
            np.copyto(host, batch)
            cuda.memcpy_htod(self._buffer.device, host)  # synchronous: TensorRT reads it next
            self.batches_served += 1
            return [self._buffer.ptr if name == input_name else 0 for name in names]

        def read_calibration_cache(self) -> bytes | None:
            if cache_path is not None and cache_path.is_file():
                self.cache_used = True
                return cache_path.read_bytes()
            return None  # no cache: TensorRT calibrates with get_batch

        def write_calibration_cache(self, cache: Any) -> None:
            if cache_path is not None:
                atomic_write_bytes(cache_path, bytes(cache))

        def free(self) -> None:
            self._buffer.free()

    return PorterCalibrator()
