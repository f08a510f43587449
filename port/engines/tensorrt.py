"""TensorRT runner: deserialise an engine and run it through pycuda (Polygraphy's trt runner shape).

``activate`` imports tensorrt and pycuda lazily, opens its own CUDA context (the device's primary
context, retained, pushed and popped around every call; no ``pycuda.autoinit``), refuses an
engine its sidecar says was built for another TensorRT version or GPU, deserialises it with the
same loaders the builder uses (``port.engines.trt_loaders``: ``make_logger``, ``EngineFromBytes``,
``engine_io``), creates one execution context, allocates page-locked host and device buffers
sized from the optimisation profile's *max* shape, and one stream. ``infer`` =
``set_input_shape`` + async H2D copies + ``set_tensor_address`` + ``execute_async_v3`` + async
D2H copies + stream synchronise. Every TensorRT call that reports failure by its return value is
checked.

TensorRT Python API used here (TensorRT 10.x/11.x Python API reference: ICudaEngine,
IExecutionContext): ``ICudaEngine.create_execution_context``,
``IExecutionContext.set_input_shape / get_tensor_shape / set_tensor_address /
execute_async_v3``.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from port.engines.base import Loader, Runner, TensorMeta
from port.engines.cuda import (
    CudaContext,
    HostDeviceBuffer,
    PhaseEvents,
    PhaseTimes,
    checked,
    host_device_buffer,
    import_driver,
)
from port.engines.trt_loaders import (
    EngineFromBytes,
    IOTensor,
    LoadedEngine,
    ProfileShapes,
    engine_io,
    import_tensorrt,
    make_logger,
)
from port.engines.trt_sidecar import check_compatible, read_sidecar, sidecar_path
from port.ground.digest import sha256_bytes
from port.ground.errors import BackendUnavailable, ModelError, UsageError


class TensorRTRunner(Runner):
    """Runs a serialized TensorRT engine (``.engine``/``.plan``) on one GPU through pycuda."""

    backend = "tensorrt"
    timing_mode = ("host to host, stream-synchronised: H2D copy, compute and D2H copy in each "
                   "run; phases_ms times them apart with CUDA events")

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
        self._cuda: ModuleType | None = None
        self._logger: Any = None
        self._loaded: LoadedEngine | None = None  # runtime + engine, released together
        self._context: Any = None
        self._stream: Any = None
        self._io: list[IOTensor] = []
        self._buffers: dict[str, HostDeviceBuffer] = {}
        self._events: PhaseEvents | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def device(self) -> str:
        """``cuda:<index>``."""
        return f"cuda:{self.device_index}"

    def model_card(self) -> Any:
        """The card in the engine's sidecar (read and checked at activate; None without one)."""
        from port.engines.trt_sidecar import card_from_sidecar

        return card_from_sidecar(self.sidecar) if self.sidecar else None

    def details(self) -> dict[str, Any]:
        """The precision the engine was built at (its sidecar), which is what it computes in."""
        precision = (self.sidecar or {}).get("precision")
        return {"compute_precision": str(precision)} if precision else {}

    def _activate(self) -> None:
        trt = import_tensorrt()
        self._cuda = import_driver()
        data, path = self._load_bytes()
        self._ctx = CudaContext(self.device_index).open()
        try:
            with self._ctx.active():
                self._activate_in_context(trt.__version__, data, path)
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

    def _activate_in_context(self, trt_version: str, data: bytes, path: Path | None) -> None:
        assert self._ctx is not None and self._ctx.info is not None and self._cuda is not None
        info = self._ctx.info
        what = str(path) if path else "the engine"
        if path is not None and self.check_sidecar:
            self.sidecar = _checked_sidecar(path, data, trt_version, info.compute_capability,
                                            info.name)
        self._logger = make_logger(self.log_path)
        # Version-compatible plans carry a lean runtime (host code): allowed only for engines
        # whose sidecar sha256 matched above, i.e. ones porter built and recorded.
        host_code = bool(self.sidecar and self.sidecar.get("version_compatible"))
        self._loaded = EngineFromBytes(data=data, logger=self._logger, what=what,
                                       allow_host_code=host_code)()
        self._context = self._loaded.engine.create_execution_context()
        if self._context is None:
            raise BackendUnavailable(
                f"TensorRT could not create an execution context for {what} "
                f"({self._logger.last_error()}): free GPU memory and retry"
            )
        self._io = engine_io(self._loaded.engine)
        with checked("creating the CUDA stream"):
            self._stream = self._cuda.Stream()
        self._events = PhaseEvents.create()
        self._allocate(what)

    def _allocate(self, what: str) -> None:
        """Buffers sized from the profile's max shapes (inputs) and the outputs they imply."""
        assert self._context is not None
        for t in self._io:
            if not t.is_input:
                continue
            biggest = _profile(t).max
            _check(self._context.set_input_shape(t.name, biggest),
                   f"set_input_shape({t.name}, {biggest})", self._logger)
            self._buffers[t.name] = host_device_buffer(int(np.prod(biggest)), t.dtype)
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
                # TensorRT objects go before the context they allocated in: execution context
                # first, then engine and runtime (TensorRT requires the engine to outlive its
                # contexts and the runtime to outlive its engines).
                self._context = None
                self._loaded = None
                self._events = None
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
            shapes = _profile(t)
            shape = tuple(None if lo != hi else int(lo)
                          for lo, hi in zip(shapes.min, shapes.max, strict=True))
            metas.append(TensorMeta(t.name, t.dtype, shape))
        return metas

    def output_metadata(self) -> list[TensorMeta]:
        """Outputs in engine order; ``-1`` (shape set at run time) becomes ``None``."""
        return [TensorMeta(t.name, t.dtype, tuple(None if int(d) < 0 else int(d)
                                                  for d in t.shape))
                for t in self._io if not t.is_input]

    def output_names(self) -> list[str]:
        """Output tensor names in engine order."""
        return [t.name for t in self._io if not t.is_input]

    def profile(self, name: str | None = None) -> ProfileShapes:
        """The optimisation profile's shapes (``.min``, ``.opt``, ``.max``) of an input, the first
        one by default."""
        for t in self._io:
            if t.is_input and (name is None or t.name == name):
                return _profile(t)
        raise KeyError(name)

    # -- inference -------------------------------------------------------------------------
    def _check_profile(self, feed: dict[str, np.ndarray]) -> None:
        for t in self._io:
            if not t.is_input:
                continue
            shape = feed[t.name].shape
            lo, hi = _profile(t).min, _profile(t).max
            if any(s < a or s > b for s, a, b in zip(shape, lo, hi, strict=True)):
                raise UsageError(
                    f"input '{t.name}' shape {tuple(shape)} is outside the engine's optimisation "
                    f"profile (min {tuple(lo)}, max {tuple(hi)}): feed batches of {lo[0]}..{hi[0]} "
                    f"images, or rebuild with --min-batch/--max-batch covering {shape[0]}"
                )

    def _enqueue(self, feed: dict[str, np.ndarray], events: PhaseEvents | None
                 ) -> dict[str, np.ndarray]:
        """Queue H2D, compute and D2H on the stream, cut by ``events`` when timing phases;
        returns pinned views filled after sync.

        Inputs are staged into the pinned buffers before the first event, so the H2D time is
        the transfer alone, as trtexec reports it.
        """
        cuda, ctx, stream = self._cuda, self._context, self._stream
        assert cuda is not None and ctx is not None
        staged = {}
        for name, arr in feed.items():
            _check(ctx.set_input_shape(name, arr.shape), f"set_input_shape({name}, {arr.shape})",
                   self._logger)
            staged[name] = self._buffers[name].view(arr.shape)
            np.copyto(staged[name], arr, casting="no")
        if events is not None:
            events.start.record(stream)
        for name, host in staged.items():
            cuda.memcpy_htod_async(self._buffers[name].device, host, stream)
        if events is not None:
            events.inputs_copied.record(stream)
        for name, buf in self._buffers.items():
            _check(ctx.set_tensor_address(name, buf.ptr), f"set_tensor_address({name})",
                   self._logger)
        _check(ctx.execute_async_v3(stream.handle), "execute_async_v3", self._logger)
        if events is not None:
            events.computed.record(stream)
        outputs = {}
        for name in self.output_names():
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            host = self._buffers[name].view(shape)
            cuda.memcpy_dtoh_async(host, self._buffers[name].device, stream)
            outputs[name] = host
        if events is not None:
            events.outputs_copied.record(stream)
        return outputs

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_profile(feed)
        assert self._ctx is not None
        with self._ctx.active(), checked("TensorRT inference"):
            views = self._enqueue(feed, events=None)
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
        assert self._ctx is not None and self._events is not None
        samples: list[PhaseTimes] = []
        with self._ctx.active(), checked("timing TensorRT inference"):
            for i in range(warmup + runs):
                self._enqueue(feed, events=self._events)
                times = self._events.elapsed()  # waits for the last event
                if i >= warmup:
                    samples.append(times)
        return {**PhaseTimes.mean(samples).to_dict(), "runs": runs}


def _profile(t: IOTensor) -> ProfileShapes:
    """An input's profile shapes (engine_io gives every input one)."""
    if t.profile is None:
        raise ValueError(f"'{t.name}' is an output: it has no optimisation profile")
    return t.profile


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
    if recorded and sha256_bytes(data) != recorded:
        raise ModelError(
            f"{path} does not match its sidecar {side.name} (sha256 differs): rebuild the engine "
            f"with `porter export --to trt`, or delete the stale sidecar"
        )
    check_compatible(sidecar, trt_version, cc, gpu_name)
    return sidecar
