"""TensorRT loaders: small callables that each do one step (Polygraphy's ``backend/trt/loader.py``).

The builder (``port.export.tensorrt.build_engine``) and the runner (``port.engines.tensorrt``)
compose them; neither talks to TensorRT's builder or runtime directly:

* :func:`make_logger` -> a ``trt.ILogger`` that appends to a log file and remembers errors;
* :class:`NetworkFromOnnx` -> :class:`ParsedNetwork`: builder, network, ONNX parser, and the one
  optimisation profile's min/opt/max shapes per input (:func:`profile_shapes`);
* :class:`CreateConfig` -> ``IBuilderConfig``: the profile, memory pool, optimisation level,
  compatibility levels, builder flags, TensorRT 10's classic calibrator;
* :class:`EngineBytesFromNetwork` -> :class:`SerializedEngine`: ``build_serialized_network``
  with the timing cache read before and merged + rewritten after, both under the cache's file
  lock (:class:`TimingCacheFile`), so builds sharing one cache never corrupt it;
* :class:`EngineFromBytes` -> :class:`LoadedEngine`: ``Runtime`` + ``deserialize_cuda_engine``;
  :func:`engine_io` reads the engine's I/O tensors back.

Values arrive already decided and validated (``port.export.trt_options``: the options when they
are made, the build plan for the installed TensorRT); the loaders translate them into TensorRT
calls and check every call that reports failure by its return value. ``tensorrt`` is imported
lazily (:func:`import_tensorrt`), so the pure parts here run, and are tested, on a CPU.

TensorRT Python API used (TensorRT 10.x/11.x Python API reference: Logger, Builder,
NetworkDefinitionCreationFlag, OnnxParser, IOptimizationProfile, IBuilderConfig, ITimingCache,
Runtime, ICudaEngine): ``Builder(logger)``, ``create_network(flags)``,
``OnnxParser(network, logger).parse_from_file / num_errors / get_error``,
``create_optimization_profile`` + ``set_shape(name, min, opt, max)``,
``add_optimization_profile`` (``-1`` on failure), ``set_memory_pool_limit(MemoryPoolType.WORKSPACE,
...)``, ``builder_optimization_level``, ``hardware_compatibility_level``, ``set_flag`` /
``clear_flag``, ``int8_calibrator`` + ``set_calibration_profile`` (TensorRT 10 only),
``create_timing_cache(bytes)`` / ``set_timing_cache(cache, ignore_mismatch)`` /
``get_timing_cache().combine(other, ignore_mismatch)`` / ``serialize()``,
``build_serialized_network`` (``None`` on failure), ``Runtime.engine_host_code_allowed``,
``deserialize_cuda_engine`` (``None`` on failure), ``ICudaEngine.num_io_tensors /
get_tensor_name / get_tensor_mode / get_tensor_dtype / get_tensor_shape /
get_tensor_profile_shape``, ``trt.nptype``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from port.ground.atomic import atomic_write_bytes
from port.ground.errors import BackendUnavailable, ModelError, UsageError, first_line

TENSORRT_MISSING = (
    "TensorRT is not installed: install the GPU extra (see README) or export --to onnx"
)
TIMING_CACHE_LOCK_TIMEOUT_S = 600  # a concurrent build holds the lock only to read or merge


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or ``BackendUnavailable`` naming the fix."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(TENSORRT_MISSING) from None
    except OSError as exc:  # the wheel is there but libnvinfer/CUDA libraries are not
        raise BackendUnavailable(
            f"TensorRT is installed but cannot load its libraries ({first_line(exc)}): check the "
            f"CUDA/TensorRT install with `porter doctor`"
        ) from None
    return trt


# --------------------------------------------------------------------------------------------
# The logger
# --------------------------------------------------------------------------------------------
def make_logger(log_path: Path | None = None, *, verbose: bool = False) -> Any:
    """A ``trt.ILogger`` that appends to ``log_path`` and remembers errors for porter's messages.

    TensorRT reports why a parse, build or deserialisation failed only through the logger; the
    last error line goes into porter's one-line message, the whole story into the log file.
    Call ``close()`` when done (``contextlib.closing`` works).
    """
    trt = import_tensorrt()

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


# --------------------------------------------------------------------------------------------
# The optimisation profile (pure Python)
# --------------------------------------------------------------------------------------------
class ProfileShapes(NamedTuple):
    """One input's optimisation-profile shapes, as ``IOptimizationProfile.set_shape`` takes them."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def at_batch(self, batch: int) -> ProfileShapes:
        """The same input fixed at ``batch`` (min = opt = max), e.g. for the calibration profile."""
        shape = (int(batch), *self.opt[1:])
        return ProfileShapes(min=shape, opt=shape, max=shape)

    def to_dict(self) -> dict[str, list[int]]:
        """Sidecar form: ``{"min": [...], "opt": [...], "max": [...]}``."""
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class BatchRange:
    """The batch sizes one optimisation profile covers (``--min-batch/--opt-batch/--max-batch``)."""

    min: int
    opt: int
    max: int


def profile_shapes(name: str, shape: Sequence[int], batches: BatchRange) -> ProfileShapes:
    """min/opt/max of one network input: the batch axis from ``batches``, the rest as the ONNX
    fixes them.

    ``ModelError`` for a scalar input or dynamic axes beyond the batch (porter builds image
    classifiers of one size); ``UsageError`` when the ONNX fixes a batch the range differs from.
    """
    shape = tuple(int(d) for d in shape)
    if not shape:
        raise ModelError(f"input '{name}' is a scalar: porter builds image classifiers")
    rest = shape[1:]
    if any(d < 0 for d in rest):
        raise ModelError(
            f"input '{name}' has dynamic axes beyond the batch {shape}: export the ONNX with a "
            f"fixed image size"
        )
    fixed = shape[0]
    if fixed >= 0 and not batches.min == batches.opt == batches.max == fixed:
        raise UsageError(
            f"the ONNX input '{name}' has a fixed batch of {fixed}: export it with a dynamic "
            f"batch axis, or pass --min-batch/--opt-batch/--max-batch {fixed}"
        )
    return ProfileShapes(min=(batches.min, *rest), opt=(batches.opt, *rest),
                         max=(batches.max, *rest))


# --------------------------------------------------------------------------------------------
# Network from ONNX
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParsedNetwork:
    """What :class:`NetworkFromOnnx` made. Keep it until the build is done: the parser owns
    weights the network refers to."""

    builder: Any
    network: Any
    parser: Any
    profile: dict[str, ProfileShapes]  # input name -> min/opt/max, in network input order

    @property
    def input_names(self) -> list[str]:
        """The network's input names, in order."""
        return list(self.profile)


@dataclass(frozen=True)
class NetworkFromOnnx:
    """Parse ``path`` into a new network created with ``flags``, and size its profile.

    ``flags`` are ``NetworkDefinitionCreationFlag`` names (the build plan decides them:
    ``STRONGLY_TYPED`` on TensorRT 10's strongly typed path, none on 11, where every network is
    strongly typed). ``log_path`` is named in parse errors.
    """

    path: Path
    logger: Any
    batches: BatchRange
    flags: tuple[str, ...] = ()
    log_path: Path | None = None

    def __call__(self) -> ParsedNetwork:
        """Builder, network, parser and profile shapes; ``ModelError`` when parsing fails."""
        trt = import_tensorrt()
        builder = trt.Builder(self.logger)
        if builder is None:
            raise BackendUnavailable(
                f"TensorRT could not create a builder: {self.logger.last_error()}"
            )
        bits = 0
        for name in self.flags:
            bits |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
        network = builder.create_network(bits)
        if network is None:
            raise BackendUnavailable(
                f"TensorRT could not create a network: {self.logger.last_error()}"
            )
        parser = trt.OnnxParser(network, self.logger)
        # parse_from_file (not parse(bytes)) so the parser finds external weight files.
        if not parser.parse_from_file(str(self.path)):
            errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
            first = errors[0].splitlines()[0] if errors else self.logger.last_error()
            where = f", full log in {self.log_path}" if self.log_path else ""
            raise ModelError(
                f"TensorRT {trt.__version__} could not parse {Path(self.path).name}: {first} "
                f"({len(errors)} error(s){where}): export the ONNX with a supported opset or "
                f"check the operator against TensorRT's ONNX support matrix"
            )
        profile = {}
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            profile[tensor.name] = profile_shapes(tensor.name, tuple(tensor.shape), self.batches)
        return ParsedNetwork(builder=builder, network=network, parser=parser, profile=profile)


# --------------------------------------------------------------------------------------------
# Build configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CreateConfig:
    """An ``IBuilderConfig`` for a :class:`ParsedNetwork`.

    ``hardware_level`` is a ``HardwareCompatibilityLevel`` name (``AMPERE_PLUS``,
    ``SAME_COMPUTE_CAPABILITY``); ``set_flags``/``clear_flags`` are ``BuilderFlag`` names.
    ``calibrator`` (TensorRT 10's classic INT8) is fed at ``calibration_batch`` through a
    profile of that fixed batch. ``None`` everywhere means TensorRT's default.
    """

    logger: Any
    workspace_bytes: int | None = None
    builder_opt_level: int | None = None
    version_compatible: bool = False
    hardware_level: str | None = None
    set_flags: tuple[str, ...] = ()
    clear_flags: tuple[str, ...] = ()
    calibrator: Any = None
    calibration_batch: int | None = None

    def __call__(self, network: ParsedNetwork) -> Any:
        """The configured ``IBuilderConfig`` (the timing cache is attached by the build)."""
        trt = import_tensorrt()
        config = network.builder.create_builder_config()
        if config is None:
            raise BackendUnavailable(
                f"TensorRT could not create a builder config: {self.logger.last_error()}"
            )
        if config.add_optimization_profile(_trt_profile(network, network.profile)) < 0:
            raise ModelError(
                f"TensorRT rejected the optimisation profile: {self.logger.last_error()}"
            )
        if self.workspace_bytes is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        if self.builder_opt_level is not None:
            config.builder_optimization_level = self.builder_opt_level
        if self.version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if self.hardware_level is not None:
            # AMPERE_PLUS exists since TensorRT 8.6; SAME_COMPUTE_CAPABILITY since 10.9.
            level = getattr(trt.HardwareCompatibilityLevel, self.hardware_level, None)
            if level is None:
                raise UsageError(
                    f"TensorRT {trt.__version__} has no hardware compatibility level "
                    f"{self.hardware_level} (added in 10.9): upgrade TensorRT or use "
                    f"--hardware-compatibility ampere+"
                )
            config.hardware_compatibility_level = level
        for name in self.set_flags:  # classic path only (TensorRT 10): the plan refused it on 11
            config.set_flag(getattr(trt.BuilderFlag, name))
        for name in self.clear_flags:
            flag = getattr(trt.BuilderFlag, name, None)
            if flag is not None:  # TF32 may not exist in a future major; nothing to clear then
                config.clear_flag(flag)
        if self.calibrator is not None:
            self._attach_calibrator(network, config)
        return config

    def _attach_calibrator(self, network: ParsedNetwork, config: Any) -> None:
        if self.calibration_batch is None:
            raise ValueError("CreateConfig: a calibrator needs calibration_batch")
        config.int8_calibrator = self.calibrator
        fixed = {name: s.at_batch(self.calibration_batch) for name, s in network.profile.items()}
        if not config.set_calibration_profile(_trt_profile(network, fixed)):
            raise ModelError(
                f"TensorRT rejected the calibration profile (batch {self.calibration_batch}): "
                f"{self.logger.last_error()}"
            )


def _trt_profile(network: ParsedNetwork, shapes: dict[str, ProfileShapes]) -> Any:
    profile = network.builder.create_optimization_profile()
    for name, s in shapes.items():
        profile.set_shape(name, s.min, s.opt, s.max)
    return profile


# --------------------------------------------------------------------------------------------
# The serialised build and its timing cache
# --------------------------------------------------------------------------------------------
class TimingCacheFile:
    """A timing cache file that several builds share: read, and merged + rewritten, only under
    its lock (``<path>.lock``); rewritten atomically, so a reader never sees half a file.

    Holds no TensorRT object: the merge is a callable, so the locking is the same whatever
    writes the bytes.
    """

    def __init__(self, path: Path | str, *, timeout: float = TIMING_CACHE_LOCK_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def read(self) -> bytes:
        """The cache's bytes (``b""`` when there is no file yet)."""
        with self._locked():
            return self.path.read_bytes() if self.path.is_file() else b""

    def update(self, merge: Callable[[bytes], bytes]) -> int:
        """Write ``merge(bytes on disk now)``; returns the bytes written.

        Reading inside the lock matters: another build may have saved since :meth:`read`.
        """
        with self._locked():
            on_disk = self.path.read_bytes() if self.path.is_file() else b""
            return atomic_write_bytes(self.path, merge(on_disk))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path) + ".lock", timeout=self.timeout)
        try:
            lock.acquire()
        except Timeout:
            raise UsageError(
                f"timing cache {self.path} stayed locked by another build for {self.timeout:g} s: "
                f"wait for it, or pass another --timing-cache path"
            ) from None
        try:
            yield
        finally:
            lock.release()


@dataclass(frozen=True)
class SerializedEngine:
    """A built plan and what happened to the timing cache."""

    data: bytes
    timing_cache: dict[str, Any]  # path, loaded_bytes, reused, saved_bytes


@dataclass(frozen=True)
class EngineBytesFromNetwork:
    """``build_serialized_network(network, config)``, with the timing cache at ``timing_cache``
    (if any) loaded before and merged + saved after. ``what`` names the engine in errors."""

    network: ParsedNetwork
    config: Any
    logger: Any
    timing_cache: Path | None = None
    what: str = "the engine"
    log_path: Path | None = None

    def __call__(self) -> SerializedEngine:
        """The plan bytes; ``ModelError`` when TensorRT cannot build it."""
        trt = import_tensorrt()
        cache_file = TimingCacheFile(self.timing_cache) if self.timing_cache else None
        loaded = cache_file.read() if cache_file else b""
        cache = self.config.create_timing_cache(loaded)  # empty bytes: a new, empty cache
        if cache is None or not self.config.set_timing_cache(cache, False):
            raise UsageError(
                f"timing cache {self.timing_cache} was made by another TensorRT version or GPU "
                f"and cannot be reused: delete it or pass another --timing-cache path"
            )
        serialized = self.network.builder.build_serialized_network(self.network.network,
                                                                   self.config)
        if serialized is None:
            where = f" (full log in {self.log_path})" if self.log_path else ""
            raise ModelError(
                f"TensorRT {trt.__version__} failed to build {self.what}: "
                f"{self.logger.last_error()}{where}; try a larger --workspace or another "
                f"--precision"
            )
        saved = cache_file.update(self._merged_cache) if cache_file else 0
        info = {"path": str(self.timing_cache) if self.timing_cache else None,
                "loaded_bytes": len(loaded), "reused": bool(loaded), "saved_bytes": saved}
        return SerializedEngine(data=memoryview(serialized).tobytes(), timing_cache=info)

    def _merged_cache(self, on_disk: bytes) -> bytes:
        """This build's timings plus what another build saved meanwhile (ours win on conflict:
        ``ITimingCache.combine`` skips entries already present)."""
        cache = self.config.get_timing_cache()
        if on_disk:
            theirs = self.config.create_timing_cache(on_disk)
            if theirs is not None:
                cache.combine(theirs, False)
        return memoryview(cache.serialize()).tobytes()


# --------------------------------------------------------------------------------------------
# Engine from bytes, and what it takes and gives
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedEngine:
    """A deserialised engine and the runtime that made it (kept: TensorRT requires the runtime
    to outlive its engines)."""

    runtime: Any
    engine: Any


@dataclass(frozen=True)
class EngineFromBytes:
    """Deserialise a plan (bytes, or a callable returning them).

    ``allow_host_code`` lets a version-compatible plan run the lean runtime it embeds: only for
    plans porter built or whose sidecar sha256 matched. ``what`` names the engine in errors.
    """

    data: bytes | Callable[[], bytes]
    logger: Any
    what: str = "the engine"
    allow_host_code: bool = False

    def __call__(self) -> LoadedEngine:
        """Runtime + engine; ``ModelError`` when TensorRT cannot load the plan here."""
        trt = import_tensorrt()
        data = self.data() if callable(self.data) else self.data
        runtime = trt.Runtime(self.logger)
        if runtime is None:
            raise BackendUnavailable(
                f"TensorRT could not create a runtime: {self.logger.last_error()}"
            )
        if self.allow_host_code:
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise ModelError(
                f"TensorRT {trt.__version__} could not load {self.what} "
                f"({self.logger.last_error()}): it was probably built by another TensorRT version "
                f"or for another GPU; rebuild it here with `porter export --to trt`"
            )
        return LoadedEngine(runtime=runtime, engine=engine)


@dataclass(frozen=True)
class IOTensor:
    """One engine I/O tensor as the sidecar and the runner see it."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 for dynamic axes
    profile: ProfileShapes | None  # inputs only

    def to_dict(self) -> dict[str, Any]:
        """Sidecar form."""
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape)}
        if self.profile is not None:
            d["profile"] = self.profile.to_dict()
        return d


def engine_io(engine: Any, profile_index: int = 0) -> list[IOTensor]:
    """The engine's I/O tensors in engine order, with the profile's shapes for inputs."""
    trt = import_tensorrt()
    tensors = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        profile = None
        if is_input:
            lo, opt, hi = engine.get_tensor_profile_shape(name, profile_index)
            profile = ProfileShapes(min=_ints(lo), opt=_ints(opt), max=_ints(hi))
        tensors.append(
            IOTensor(
                name=name,
                is_input=is_input,
                dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                shape=_ints(engine.get_tensor_shape(name)),
                profile=profile,
            )
        )
    return tensors


def _ints(dims: Any) -> tuple[int, ...]:
    """``trt.Dims`` (or any sequence) as a tuple of ints."""
    return tuple(int(d) for d in dims)
