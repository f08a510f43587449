"""TensorRT runner: deserialise an engine and run it through pycuda (Polygraphy's trt runner shape).

``activate`` imports tensorrt and pycuda lazily, opens its own CUDA context (the device's primary
context, retained, pushed and popped around every call; no ``pycuda.autoinit``), refuses an
engine its sidecar says was built for another TensorRT version or GPU, deserialises it, creates
one execution context, allocates page-locked host and device buffers sized from the optimisation
profile's *max* shape, and one stream. ``infer`` = ``set_input_shape`` + async H2D copies +
``set_tensor_address`` + ``execute_async_v3`` + async D2H copies + stream synchronise. Every
TensorRT call that reports failure by its return value is checked.

TensorRT Python API used (TensorRT 10.x/11.x Python API reference: Runtime, ICudaEngine,
IExecutionContext, Logger): ``Runtime(logger)``, ``Runtime.deserialize_cuda_engine``,
``Runtime.engine_host_code_allowed`` (version-compatible plans embed a lean runtime),
``ICudaEngine.num_io_tensors / get_tensor_name / get_tensor_mode / get_tensor_dtype /
get_tensor_shape / get_tensor_profile_shape / create_execution_context``,
``IExecutionContext.set_input_shape / get_tensor_shape / set_tensor_address /
execute_async_v3``, ``trt.nptype``, ``trt.ILogger``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from port.engines.base import Loader, Runner, TensorMeta
from port.engines.cuda import CudaContext, HostDeviceBuffer, checked, host_device_buffer
from port.engines.trt_sidecar import check_compatible, read_sidecar, sidecar_path
from port.errors import BackendUnavailable, ModelError, UsageError

TENSORRT_MISSING = (
    "TensorRT is not installed: install the GPU extra (see README) or export --to onnx"
)


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or ``BackendUnavailable`` naming the fix."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(TENSORRT_MISSING) from None
    except OSError as exc:  # the wheel is there but libnvinfer/CUDA libraries are not
        raise BackendUnavailable(
            f"TensorRT is installed but cannot load its libraries ({exc}): check the CUDA/TensorRT "
            f"install with `porter doctor`"
        ) from None
    return trt


def make_logger(trt: ModuleType, log_path: Path | None = None, *, verbose: bool = False) -> Any:
    """A ``trt.ILogger`` that appends to ``log_path`` and remembers errors for our messages.

    TensorRT reports why a parse, build or deserialisation failed only through the logger; the
    last error lines go into porter's one-line message, the whole story into the log file.
    """

    class PorterTrtLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # pybind11 base must be initialised explicitly
            self.errors: list[str] = []
            self.warnings: list[str] = []
            self.path = log_path
            self._file = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115
            self._min = trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.INFO

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
            elif severity == trt.ILogger.Severity.WARNING:
                self.warnings.append(msg)
            # Severity values: INTERNAL_ERROR=0 < ERROR < WARNING < INFO < VERBOSE=4.
            if self._file is not None and int(severity) <= int(self._min):
                self._file.write(f"[{time.strftime('%H:%M:%S')}] [{severity.name}] {msg}\n")
                self._file.flush()

        def last_error(self) -> str:
            return self.errors[-1].strip().splitlines()[0] if self.errors else "no error logged"

        def close(self) -> None:
            if self._file is not None:
                self._file.close()
                self._file = None

    return PorterTrtLogger()


@dataclass(frozen=True)
class IOTensor:
    """One engine I/O tensor as the sidecar and the runner see it."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 for dynamic axes
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None  # inputs: min/opt/max

    def to_dict(self) -> dict[str, Any]:
        """Sidecar form."""
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape)}
        if self.profile is not None:
            lo, opt, hi = self.profile
            d["profile"] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
        return d


def engine_io(trt: ModuleType, engine: Any, profile_index: int = 0) -> list[IOTensor]:
    """The engine's I/O tensors in engine order, with profile shapes for inputs."""
    tensors = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        profile = None
        if is_input:
            lo, opt, hi = engine.get_tensor_profile_shape(name, profile_index)
            profile = (tuple(lo), tuple(opt), tuple(hi))
        tensors.append(
            IOTensor(
                name=name,
                is_input=is_input,
                dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                shape=tuple(int(d) for d in engine.get_tensor_shape(name)),
                profile=profile,
            )
        )
    return tensors


def deserialize(
    trt: ModuleType, runtime: Any, data: bytes | memoryview, what: str, logger: Any
) -> Any:
    """``runtime.deserialize_cuda_engine`` with its ``None`` turned into a ``ModelError``."""
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise ModelError(
            f"TensorRT {trt.__version__} could not load {what} ({logger.last_error()}): it was "
            f"probably built by another TensorRT version or for another GPU; rebuild it here with "
            f"`porter export --to trt`"
        )
    return engine


class TensorRTRunner(Runner):
    """Runs a serialized TensorRT engine (``.engine``/``.plan``) on one GPU through pycuda."""

    backend = "tensorrt"

    def __init__(
        self,
        loader: Loader,
        device_index: int = 0,
        *,
        check_sidecar: bool = True,
        log_path: Path | None = None,
    ) -> None:
        """``loader``: an engine path (its sidecar ``<engine>.json`` is checked when present) or a
        callable returning the serialized engine bytes."""
        super().__init__(loader)
        self.device_index = device_index
        self.check_sidecar = check_sidecar
        self.log_path = log_path
        self.sidecar: dict[str, Any] | None = None
        self._ctx: CudaContext | None = None
        self._trt: ModuleType | None = None
        self._cuda: ModuleType | None = None
        self._logger: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._io: list[IOTensor] = []
        self._buffers: dict[str, HostDeviceBuffer] = {}
        self._events: list[Any] = []

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def device(self) -> str:
        """``cuda:<index>``."""
        return f"cuda:{self.device_index}"

    def _activate(self) -> None:
        trt = import_tensorrt()
        from port.engines.cuda import import_driver

        cuda = import_driver()
        self._trt, self._cuda = trt, cuda
        data, path = self._load_bytes()
        self._ctx = CudaContext(self.device_index).open()
        try:
            with self._ctx.active():
                self._activate_in_context(trt, cuda, data, path)
        except BaseException:
            self._release()
            raise

    def _load_bytes(self) -> tuple[bytes, Path | None]:
        if callable(self.loader):
            data = self.loader()
            if not isinstance(data, bytes | bytearray | memoryview):
                raise TypeError("a TensorRT loader callable must return serialized engine bytes")
            return bytes(data), None
        path = Path(self.loader)
        if not path.is_file():
            raise ModelError(f"engine {path} not found: build it with `porter export --to trt`")
        return path.read_bytes(), path

    def _activate_in_context(
        self, trt: ModuleType, cuda: ModuleType, data: bytes, path: Path | None
    ) -> None:
        assert self._ctx is not None and self._ctx.info is not None
        info = self._ctx.info
        what = str(path) if path else "the engine"
        if path is not None and self.check_sidecar:
            self.sidecar = _checked_sidecar(path, data, trt.__version__, info.compute_capability,
                                            info.name)
        self._logger = make_logger(trt, self.log_path)
        self._runtime = trt.Runtime(self._logger)
        if self._runtime is None:
            raise BackendUnavailable(
                f"TensorRT could not create a runtime: {self._logger.last_error()}"
            )
        if self.sidecar is not None and self.sidecar.get("version_compatible"):
            # Version-compatible plans carry a lean runtime (host code). Only allowed for engines
            # whose sidecar sha256 matched above, i.e. ones porter built and recorded.
            self._runtime.engine_host_code_allowed = True
        self._engine = deserialize(trt, self._runtime, data, what, self._logger)
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendUnavailable(
                f"TensorRT could not create an execution context for {what} "
                f"({self._logger.last_error()}): free GPU memory and retry"
            )
        self._io = engine_io(trt, self._engine)
        with checked("creating the CUDA stream and events"):
            self._stream = cuda.Stream()
            self._events = [cuda.Event() for _ in range(4)]
        self._allocate(what)

    def _allocate(self, what: str) -> None:
        """Buffers sized from the profile's max shapes (inputs) and the outputs they imply."""
        assert self._context is not None
        for t in self._io:
            if not t.is_input:
                continue
            assert t.profile is not None
            _check(self._context.set_input_shape(t.name, t.profile[2]),
                   f"set_input_shape({t.name}, {t.profile[2]})", self._logger)
            self._buffers[t.name] = host_device_buffer(int(np.prod(t.profile[2])), t.dtype)
        for t in self._io:
            if t.is_input:
                continue
            shape = tuple(int(d) for d in self._context.get_tensor_shape(t.name))
            if any(d < 0 for d in shape):
                raise ModelError(
                    f"{what}: output '{t.name}' has a data-dependent shape {shape}; porter's "
                    f"runner handles classifiers with shapes fixed by the input shape"
                )
            self._buffers[t.name] = host_device_buffer(int(np.prod(shape)), t.dtype)

    def _deactivate(self) -> None:
        self._release()

    def _release(self) -> None:
        """Free in reverse order of creation; safe on a half-finished activate."""
        ctx = self._ctx
        if ctx is not None and ctx.is_open:
            with ctx.active():
                if self._stream is not None:
                    with checked("Stream.synchronize"):
                        self._stream.synchronize()
                for buf in self._buffers.values():
                    buf.free()
                self._buffers = {}
                # TensorRT objects go before the context they allocated in: execution context,
                # then engine, then runtime (TensorRT requires the engine to outlive contexts).
                self._context = None
                self._engine = None
                self._runtime = None
                self._events = []
                self._stream = None
            ctx.close()
        self._ctx = None
        self._io = []
        if self._logger is not None:
            self._logger.close()
            self._logger = None

    # -- metadata --------------------------------------------------------------------------
    def input_metadata(self) -> list[TensorMeta]:
        """Inputs with ``None`` for axes the profile lets vary (the batch axis)."""
        metas = []
        for t in self._io:
            if not t.is_input:
                continue
            assert t.profile is not None
            lo, _, hi = t.profile
            shape = tuple(None if a != b else int(a) for a, b in zip(lo, hi, strict=True))
            metas.append(TensorMeta(t.name, t.dtype, shape))
        return metas

    def output_names(self) -> list[str]:
        """Output tensor names in engine order."""
        return [t.name for t in self._io if not t.is_input]

    def profile(self, name: str | None = None) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) shapes of an input (the first one by default)."""
        for t in self._io:
            if t.is_input and (name is None or t.name == name):
                assert t.profile is not None
                return t.profile
        raise KeyError(name)

    # -- inference -------------------------------------------------------------------------
    def _check_profile(self, feed: dict[str, np.ndarray]) -> None:
        for t in self._io:
            if not t.is_input:
                continue
            assert t.profile is not None
            shape = feed[t.name].shape
            lo, _, hi = t.profile
            if any(s < a or s > b for s, a, b in zip(shape, lo, hi, strict=True)):
                raise UsageError(
                    f"input '{t.name}' shape {tuple(shape)} is outside the engine's optimisation "
                    f"profile (min {tuple(lo)}, max {tuple(hi)}): feed batches of {lo[0]}..{hi[0]} "
                    f"images, or rebuild with --min-batch/--max-batch covering {shape[0]}"
                )

    def _enqueue(self, feed: dict[str, np.ndarray], events: bool) -> dict[str, np.ndarray]:
        """Queue H2D, compute and D2H on the stream; returns pinned views filled after sync.

        Inputs are staged into the pinned buffers before the first event, so the H2D time is
        the transfer alone, as trtexec reports it.
        """
        cuda, ctx = self._cuda, self._context
        assert cuda is not None and ctx is not None
        ev = self._events
        staged = {}
        for name, arr in feed.items():
            _check(ctx.set_input_shape(name, arr.shape), f"set_input_shape({name}, {arr.shape})",
                   self._logger)
            staged[name] = self._buffers[name].view(arr.shape)
            np.copyto(staged[name], arr, casting="no")
        if events:
            ev[0].record(self._stream)
        for name, host in staged.items():
            cuda.memcpy_htod_async(self._buffers[name].device, host, self._stream)
        if events:
            ev[1].record(self._stream)
        for name, buf in self._buffers.items():
            _check(ctx.set_tensor_address(name, buf.ptr), f"set_tensor_address({name})",
                   self._logger)
        _check(ctx.execute_async_v3(self._stream.handle), "execute_async_v3", self._logger)
        if events:
            ev[2].record(self._stream)
        outputs = {}
        for name in self.output_names():
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            host = self._buffers[name].view(shape)
            cuda.memcpy_dtoh_async(host, self._buffers[name].device, self._stream)
            outputs[name] = host
        if events:
            ev[3].record(self._stream)
        return outputs

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_profile(feed)
        assert self._ctx is not None
        with self._ctx.active(), checked("TensorRT inference"):
            views = self._enqueue(feed, events=False)
            self._stream.synchronize()
            # Copy out: the pinned buffers are reused by the next call.
            return {name: np.array(view, copy=True) for name, view in views.items()}

    def synchronize(self) -> None:
        """Wait for the runner's stream (latency timing calls this after ``infer``)."""
        if self._ctx is not None and self._stream is not None:
            with self._ctx.active(), checked("Stream.synchronize"):
                self._stream.synchronize()

    def time_phases(
        self, feed: dict[str, np.ndarray], runs: int = 50, warmup: int = 5
    ) -> dict[str, float]:
        """Mean H2D, compute and D2H milliseconds, timed apart with CUDA events as trtexec does.

        Returns ``{"h2d_ms", "compute_ms", "d2h_ms", "total_ms", "runs"}``; ``total_ms`` is
        first to last event (the three phases back to back on one stream).
        """
        if not self.is_active:
            raise RuntimeError("time_phases() called before activate()")
        if runs < 1:
            raise UsageError(f"time_phases needs at least one run, got {runs}")
        self.check_feed(feed)
        self._check_profile(feed)
        assert self._ctx is not None
        sums = np.zeros(4)
        with self._ctx.active(), checked("timing TensorRT inference"):
            for i in range(warmup + runs):
                self._enqueue(feed, events=True)
                self._events[3].synchronize()
                if i < warmup:
                    continue
                e = self._events
                sums += (e[0].time_till(e[1]), e[1].time_till(e[2]), e[2].time_till(e[3]),
                         e[0].time_till(e[3]))
        mean = sums / runs
        return {"h2d_ms": float(mean[0]), "compute_ms": float(mean[1]), "d2h_ms": float(mean[2]),
                "total_ms": float(mean[3]), "runs": runs}


def _check(ok: bool, call: str, logger: Any) -> None:
    """TensorRT methods that report failure by returning False get this."""
    if not ok:
        detail = logger.last_error() if logger is not None else "no detail"
        raise RuntimeError(f"TensorRT {call} failed: {detail}")


def _checked_sidecar(
    path: Path, data: bytes, trt_version: str, cc: tuple[int, int], gpu_name: str
) -> dict[str, Any] | None:
    """Read the engine's sidecar (if any), match it to the bytes, and refuse incompatible ones."""
    side = sidecar_path(path)
    if not side.is_file():
        return None
    sidecar = read_sidecar(side)
    recorded = sidecar.get("engine_sha256")
    if recorded and hashlib.sha256(data).hexdigest() != recorded:
        raise ModelError(
            f"{path} does not match its sidecar {side.name} (sha256 differs): rebuild the engine "
            f"with `porter export --to trt`, or delete the stale sidecar"
        )
    check_compatible(sidecar, trt_version, cc, gpu_name)
    return sidecar
