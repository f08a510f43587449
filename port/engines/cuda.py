"""A small pycuda layer: an owned CUDA context, pinned host and device buffers, checked calls.

No ``import pycuda.autoinit``: that creates a context at import time and destroys it at
interpreter exit, behind the back of whoever else uses the GPU in this process (torch, ONNX
Runtime). Instead :class:`CudaContext` retains the device's *primary* context (the one the CUDA
runtime API, and so TensorRT and torch, use), pushes it around each piece of work and pops it
again, and releases it when closed.

pycuda is imported lazily; a missing pycuda or a machine without a usable GPU ends in a
``BackendUnavailable`` naming what is missing.

API used (pycuda documentation, ``doc/driver.rst``): ``driver.init``, ``Device(i)``,
``Device.count``, ``Device.name``, ``Device.compute_capability``, ``Device.total_memory``,
``Device.retain_primary_context``, ``Device.make_context``, ``Context.push/pop/detach``,
``pagelocked_empty``, ``mem_alloc``, ``DeviceAllocation.free``, ``Stream``,
``Event.record/synchronize/time_till``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import numpy as np

from port.ground.errors import BackendUnavailable, UsageError, first_line

PYCUDA_MISSING = (
    "pycuda is not installed: install the GPU extra (see README, GPU set-up) or export --to onnx"
)


class CudaError(RuntimeError):
    """A CUDA call failed for a reason other than a user mistake; names the call."""


def import_driver() -> ModuleType:
    """``pycuda.driver``, initialised; ``BackendUnavailable`` if pycuda or a GPU is missing."""
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise BackendUnavailable(PYCUDA_MISSING) from None
    try:
        cuda.init()  # cuInit: idempotent, and required before any other driver call
    except cuda.Error as exc:
        raise BackendUnavailable(
            f"no usable CUDA driver or GPU ({first_line(exc)}): run `porter doctor` to see what "
            f"this machine offers, or export --to onnx"
        ) from None
    return cuda


@contextlib.contextmanager
def checked(what: str) -> Iterator[None]:
    """Turn a pycuda error raised inside the block into one that names the call.

    Out-of-memory becomes ``BackendUnavailable`` (the user can lower --max-batch or free the
    GPU); every other CUDA failure stays a ``CudaError`` with its traceback.
    """
    import pycuda.driver as cuda  # only reached once import_driver() succeeded

    try:
        yield
    except cuda.MemoryError as exc:
        raise BackendUnavailable(
            f"out of GPU memory during {what} ({first_line(exc)}): lower --max-batch or free the "
            f"GPU"
        ) from exc
    except cuda.Error as exc:
        raise CudaError(f"CUDA call failed during {what}: {first_line(exc)}") from exc


@dataclass(frozen=True)
class DeviceInfo:
    """What porter records about a GPU."""

    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory: int  # bytes

    @property
    def cc_text(self) -> str:
        """``'8.6'``."""
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


def device_count() -> int:
    """Number of CUDA devices pycuda sees (0 when none)."""
    cuda = import_driver()
    with checked("Device.count"):
        return int(cuda.Device.count())


def device_info(index: int = 0) -> DeviceInfo:
    """Name, compute capability and memory of device ``index``; ``UsageError`` if absent."""
    cuda = import_driver()
    count = device_count()
    if count == 0:
        raise BackendUnavailable(
            "no CUDA GPU found: TensorRT needs one; run `porter doctor`, or export --to onnx"
        )
    if not 0 <= index < count:
        raise UsageError(
            f"CUDA device {index} does not exist: this machine has {count} (0..{count - 1})"
        )
    with checked(f"querying CUDA device {index}"):
        dev = cuda.Device(index)
        major, minor = dev.compute_capability()
        return DeviceInfo(index=index, name=str(dev.name()),
                          compute_capability=(int(major), int(minor)),
                          total_memory=int(dev.total_memory()))


class CudaContext:
    """One device's CUDA context, pushed only while porter works on it.

    ``primary=True`` (default) retains the device's primary context, shared with the CUDA
    runtime API that TensorRT and torch use, so their allocations and ours live in one context.
    ``primary=False`` creates a private context (``Device.make_context``).
    """

    def __init__(self, device_index: int = 0, *, primary: bool = True) -> None:
        self.device_index = device_index
        self.primary = primary
        self._ctx: Any = None
        self._depth = 0
        self.info: DeviceInfo | None = None

    def open(self) -> CudaContext:
        """Retain or create the context (not left current). Idempotent."""
        if self._ctx is not None:
            return self
        cuda = import_driver()
        self.info = device_info(self.device_index)
        with checked(f"creating the CUDA context on device {self.device_index}"):
            dev = cuda.Device(self.device_index)
            if self.primary:
                self._ctx = dev.retain_primary_context()  # not made current by pycuda
            else:
                self._ctx = dev.make_context()  # made current: pop so both cases start equal
                cuda.Context.pop()
        return self

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` succeeded and :meth:`close` has not run."""
        return self._ctx is not None

    @contextlib.contextmanager
    def active(self) -> Iterator[CudaContext]:
        """Push the context for the block and pop it afterwards, even on error. Re-entrant."""
        if self._ctx is None:
            raise RuntimeError("CudaContext.active() before open()")
        import pycuda.driver as cuda

        with checked("pushing the CUDA context"):
            self._ctx.push()
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            with checked("popping the CUDA context"):
                cuda.Context.pop()

    def synchronize(self) -> None:
        """Wait for all work queued in this context."""
        import pycuda.driver as cuda

        with self.active(), checked("Context.synchronize"):
            cuda.Context.synchronize()

    def close(self) -> None:
        """Release the context (drops our reference; the primary context lives on for others)."""
        if self._ctx is None:
            return
        if self._depth:
            raise RuntimeError("CudaContext.close() while the context is pushed")
        ctx, self._ctx = self._ctx, None
        with checked("releasing the CUDA context"):
            ctx.detach()

    def __enter__(self) -> CudaContext:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class HostDeviceBuffer:
    """A page-locked host array and a device allocation of the same size (bytes)."""

    host: np.ndarray  # flat, page-locked: async copies need pinned memory
    device: Any  # pycuda DeviceAllocation; int(device) is the device pointer
    nbytes: int

    def view(self, shape: tuple[int, ...]) -> np.ndarray:
        """The first ``prod(shape)`` host elements, shaped (a view: no copy, still pinned)."""
        n = int(np.prod(shape, dtype=np.int64))
        if n > self.host.size:
            raise ValueError(f"shape {shape} needs {n} elements, the buffer holds {self.host.size}")
        return self.host[:n].reshape(shape)

    @property
    def ptr(self) -> int:
        """Device address for TensorRT's ``set_tensor_address``."""
        return int(self.device)

    def free(self) -> None:
        """Release both sides now rather than at garbage collection (context must be current)."""
        if self.device is not None:
            with checked("freeing device memory"):
                self.device.free()
            self.device = None
        base = getattr(self.host, "base", None)
        if base is not None and hasattr(base, "free"):
            with checked("freeing page-locked host memory"):
                base.free()  # PagelockedHostAllocation: ndarray.base per the pycuda docs


def pinned_empty(shape: tuple[int, ...] | int, dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised page-locked host array (context must be current)."""
    cuda = import_driver()
    with checked(f"allocating page-locked host memory {shape} {np.dtype(dtype)}"):
        return cuda.pagelocked_empty(shape, np.dtype(dtype))


def device_alloc(nbytes: int) -> Any:
    """A device allocation of ``nbytes`` (at least 1: cuMemAlloc rejects 0)."""
    cuda = import_driver()
    with checked(f"allocating {nbytes} bytes of device memory"):
        return cuda.mem_alloc(max(int(nbytes), 1))


def host_device_buffer(count: int, dtype: np.dtype | type) -> HostDeviceBuffer:
    """Pinned host + device buffers for ``count`` elements of ``dtype``."""
    dtype = np.dtype(dtype)
    host = pinned_empty((max(int(count), 1),), dtype)
    return HostDeviceBuffer(host=host, device=device_alloc(host.nbytes), nbytes=host.nbytes)


@dataclass(frozen=True)
class PhaseTimes:
    """Milliseconds of one inference's phases on one stream, or their mean over runs."""

    h2d_ms: float  # host-to-device copies of the inputs
    compute_ms: float  # the engine's kernels
    d2h_ms: float  # device-to-host copies of the outputs
    total_ms: float  # first to last event: the three phases back to back

    @classmethod
    def mean(cls, samples: Sequence[PhaseTimes]) -> PhaseTimes:
        """The per-phase mean of ``samples`` (at least one)."""
        if not samples:
            raise ValueError("PhaseTimes.mean needs at least one sample")
        n = len(samples)
        return cls(
            h2d_ms=sum(s.h2d_ms for s in samples) / n,
            compute_ms=sum(s.compute_ms for s in samples) / n,
            d2h_ms=sum(s.d2h_ms for s in samples) / n,
            total_ms=sum(s.total_ms for s in samples) / n,
        )

    def to_dict(self) -> dict[str, float]:
        """``{"h2d_ms", "compute_ms", "d2h_ms", "total_ms"}`` as plain floats."""
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class PhaseEvents:
    """Four CUDA events that cut one inference into H2D copy, compute and D2H copy.

    Record them on the stream in field order around each phase, then :meth:`elapsed`.
    """

    start: Any
    inputs_copied: Any
    computed: Any
    outputs_copied: Any

    @classmethod
    def create(cls) -> PhaseEvents:
        """Four new events (the CUDA context must be current)."""
        cuda = import_driver()
        with checked("creating CUDA events"):
            return cls(start=cuda.Event(), inputs_copied=cuda.Event(), computed=cuda.Event(),
                       outputs_copied=cuda.Event())

    def elapsed(self) -> PhaseTimes:
        """Wait for the last event, then the milliseconds between the recorded events."""
        with checked("reading CUDA event times"):
            self.outputs_copied.synchronize()
            return PhaseTimes(
                h2d_ms=self.start.time_till(self.inputs_copied),
                compute_ms=self.inputs_copied.time_till(self.computed),
                d2h_ms=self.computed.time_till(self.outputs_copied),
                total_ms=self.start.time_till(self.outputs_copied),
            )
