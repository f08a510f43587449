"""Build a TensorRT engine from an ONNX file (``porter export --to trt``).

The decisions are made first, in pure Python (``trt_options.validate`` / ``plan_build``); this
module then drives TensorRT through its documented Python API (TensorRT 10.x and 11.x
references: Builder, NetworkDefinitionCreationFlag, OnnxParser, IOptimizationProfile,
IBuilderConfig, ITimingCache, Runtime):

* ``trt.Builder(logger)``; ``builder.create_network(flags)`` with ``STRONGLY_TYPED`` on
  TensorRT 10's strongly typed path (TensorRT 11 networks are always strongly typed and the flag
  is deprecated there; explicit batch has been implicit since TensorRT 10);
* ``trt.OnnxParser(network, logger).parse_from_file`` with every parser error reported;
* one optimisation profile over the batch axis (``create_optimization_profile`` /
  ``set_shape`` / ``add_optimization_profile``);
* ``config.set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)``,
  ``config.builder_optimization_level``, ``BuilderFlag.VERSION_COMPATIBLE``,
  ``config.hardware_compatibility_level`` (``AMPERE_PLUS`` / ``SAME_COMPUTE_CAPABILITY``);
* the timing cache: ``config.create_timing_cache(bytes)`` + ``set_timing_cache`` before the
  build, ``get_timing_cache().combine(...)`` with what is on disk + ``serialize()`` after, under
  a file lock, so concurrent builds reuse and extend one cache file;
* TensorRT 10's classic path: ``BuilderFlag.FP16/INT8`` and ``config.int8_calibrator`` with
  ``set_calibration_profile`` (port/export/trt_calibrator.py);
* ``builder.build_serialized_network`` checked for ``None``; the plan written raw and atomically,
  deserialised once with ``trt.Runtime`` to read back its I/O, and described in the sidecar.

INT8 scales come from a QDQ ONNX: NVIDIA Model Optimizer's ONNX quantizer
(``modelopt.onnx.quantization.quantize``) when installed, since it places Q/DQ nodes where
TensorRT fuses them, otherwise the ONNX Runtime QDQ model; :func:`quantize_for_tensorrt`
chooses and says which ran.
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from port.atomic import atomic_write_bytes
from port.engines.cuda import PYCUDA_MISSING, CudaContext, device_count, import_driver
from port.engines.tensorrt import (
    TENSORRT_MISSING,
    deserialize,
    engine_io,
    import_tensorrt,
    make_logger,
)
from port.errors import BackendUnavailable, ModelError, UsageError
from port.export.sidecar import build_sidecar, sidecar_path, write_sidecar
from port.export.trt_options import (
    BuildPlan,
    TrtBuildOptions,
    plan_build,
    trt_major_of,
    validate,
)
from port.models.card import ModelCard

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_HW_LEVELS = {"ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}
_MODELOPT_METHODS = {"entropy": "entropy", "minmax": "max"}  # porter name -> modelopt name


# --------------------------------------------------------------------------------------------
# What an ONNX file carries (CPU only)
# --------------------------------------------------------------------------------------------
def onnx_precision(path: Path | str) -> str:
    """``"int8"`` for a QDQ graph, ``"fp16"`` for an FP16 graph, else ``"fp32"``.

    Reads the graph only (external weight files are not loaded).
    """
    import onnx
    from google.protobuf.message import DecodeError

    if not Path(path).is_file():
        raise ModelError(f"ONNX file {path} not found: export it with `porter export --to onnx`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise ModelError(f"{path} is not a readable ONNX file ({exc}): export it again") from None
    graph = model.graph
    if any(node.op_type in QDQ_OPS for node in graph.node):
        return "int8"
    fp16 = onnx.TensorProto.FLOAT16
    if any(init.data_type == fp16 for init in graph.initializer):
        return "fp16"
    if any(v.type.tensor_type.elem_type == fp16 for v in graph.value_info):
        return "fp16"
    for node in graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in node.attribute):
            return "fp16"
    return "fp32"


def file_sha256(path: Path | str) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def installed_trt_version() -> str | None:
    """The installed TensorRT version without importing it (None when absent)."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    from importlib import metadata

    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def installed_trt_major() -> int:
    """The installed TensorRT major version, checking everything a build needs first.

    ``BackendUnavailable`` names the first thing missing: TensorRT, pycuda, or a CUDA GPU.
    """
    version = installed_trt_version()
    if version is None:
        raise BackendUnavailable(TENSORRT_MISSING)
    if importlib.util.find_spec("pycuda") is None:
        raise BackendUnavailable(PYCUDA_MISSING)
    if device_count() == 0:
        raise BackendUnavailable(
            "no CUDA GPU found: TensorRT needs one; run `porter doctor`, or export --to onnx"
        )
    major = trt_major_of(version)
    assert major is not None
    return major


# --------------------------------------------------------------------------------------------
# INT8: which quantizer makes the QDQ ONNX
# --------------------------------------------------------------------------------------------
def modelopt_available() -> bool:
    """Whether NVIDIA Model Optimizer is importable (checked without importing it)."""
    return importlib.util.find_spec("modelopt") is not None


def choose_quantizer(method: str, *, have_modelopt: bool | None = None) -> tuple[str, str]:
    """(``"modelopt"`` | ``"onnxruntime"``, why) for an INT8 TensorRT build.

    modelopt places Q/DQ nodes the way TensorRT fuses them, so it wins when installed, unless
    the calibration method is one only ONNX Runtime implements (percentile).
    """
    if have_modelopt is None:
        have_modelopt = modelopt_available()
    if not have_modelopt:
        return "onnxruntime", "NVIDIA modelopt is not installed: using ONNX Runtime's QDQ model"
    if method not in _MODELOPT_METHODS:
        return "onnxruntime", (
            f"modelopt has no '{method}' calibration: using ONNX Runtime's QDQ model"
        )
    return "modelopt", "modelopt places Q/DQ nodes where TensorRT fuses them"


def quantize_for_tensorrt(
    fp32_onnx: Path,
    out_path: Path,
    calib_images: np.ndarray,
    *,
    method: str = "entropy",
    ort_qdq_onnx: Path | None = None,
) -> tuple[Path, str, str]:
    """Make (or pick) the QDQ ONNX a TensorRT INT8 engine is built from.

    Returns ``(qdq_onnx_path, quantizer, why)``. With modelopt installed, quantizes
    ``fp32_onnx`` with ``modelopt.onnx.quantization.quantize`` into ``out_path``; otherwise uses
    ``ort_qdq_onnx`` (the ONNX Runtime QDQ export) or, if none was given, makes one with
    ``port.export.quantize.quantize_int8``.
    """
    quantizer, why = choose_quantizer(method)
    if quantizer == "onnxruntime":
        if ort_qdq_onnx is not None:
            return Path(ort_qdq_onnx), quantizer, why
        from port.export.quantize import quantize_int8

        quantize_int8(fp32_onnx, out_path, calib_images, method=method)
        return Path(out_path), quantizer, why

    import onnx

    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as exc:
        raise BackendUnavailable(
            f"NVIDIA modelopt is installed but its ONNX quantizer cannot be imported ({exc}): "
            f"install `nvidia-modelopt[onnx]` (see README, GPU set-up)"
        ) from None

    graph_inputs = onnx.load(str(fp32_onnx), load_external_data=False).graph.input
    input_name = graph_inputs[0].name
    out_path.parent.mkdir(parents=True, exist_ok=True)
    quantize(
        onnx_path=str(fp32_onnx),
        quantize_mode="int8",
        calibration_data={input_name: np.ascontiguousarray(calib_images, dtype=np.float32)},
        calibration_method=_MODELOPT_METHODS[method],
        calibration_eps=_modelopt_eps(),
        # Keep the layers modelopt does not quantize in FP32: --precision int8 means INT8 where
        # quantized and FP32 elsewhere, the same contract as the ONNX Runtime QDQ model.
        high_precision_dtype="fp32",
        output_path=str(out_path),
    )
    if not out_path.is_file():
        raise ModelError(f"modelopt did not write {out_path}: see its log above")
    return Path(out_path), quantizer, why


def _modelopt_eps() -> list[str]:
    """Calibrate on the GPU when onnxruntime-gpu is present, on the CPU otherwise."""
    import onnxruntime as ort

    gpu = "CUDAExecutionProvider" in ort.get_available_providers()
    return ["cuda:0", "cpu"] if gpu else ["cpu"]


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------
def build_engine(
    onnx_path: Path | str,
    out_path: Path | str,
    options: TrtBuildOptions,
    card: ModelCard,
    *,
    calib_images: np.ndarray | None = None,
    log_path: Path | str | None = None,
    quantizer: str | None = None,
    device_index: int = 0,
) -> dict[str, Any]:
    """Build ``out_path`` (raw plan) and ``<out_path>.json`` (sidecar) from ``onnx_path``.

    ``onnx_path`` carries the precision (FP32, FP16 graph, or QDQ INT8); ``calib_images``
    (float32 NCHW, evaluation preprocessing) are needed only by TensorRT 10's classic
    calibrator. ``quantizer`` records who made the QDQ ONNX (``"modelopt"``/``"onnxruntime"``).
    Returns the metrics for the manifest: build seconds, engine bytes, TensorRT version,
    quantizer, plan, GPU, timing-cache use, log and sidecar paths.

    Raises ``BackendUnavailable`` when TensorRT, pycuda or a CUDA GPU is missing, ``UsageError``
    for options the installed TensorRT cannot honour, ``ModelError`` when TensorRT cannot parse
    the ONNX or build it.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    # Cheap refusals first, before touching TensorRT or the GPU.
    validate(options, trt_major_of(installed_trt_version()))
    onnx_prec = onnx_precision(onnx_path)
    trt = import_tensorrt()
    import_driver()
    trt_major = trt_major_of(trt.__version__)
    if log_path is None:
        log_path = out_path.with_name(out_path.name + ".log")
    log_path = Path(log_path)
    ctx = CudaContext(device_index).open()
    logger = None
    try:
        assert ctx.info is not None
        validate(options, trt_major, gpu_cc=ctx.info.compute_capability)
        plan = plan_build(options, trt_major, onnx_prec)
        if plan.calibrator is not None and calib_images is None:
            raise UsageError(
                "--calibrator needs calibration images: the export stage passes the run's "
                "training split (or --calib-data)"
            )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(
            f"porter TensorRT build {time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
            f"onnx: {onnx_path} ({onnx_prec})\nTensorRT {trt.__version__} on {ctx.info.name} "
            f"(sm {ctx.info.cc_text})\nplan: {plan.reason}\noptions: {options.to_dict()}\n",
            encoding="utf-8",
        )
        logger = make_logger(trt, log_path)
        with ctx.active():
            return _build(trt, ctx, logger, onnx_path, out_path, options, card, plan,
                          calib_images, quantizer, log_path)
    finally:
        if logger is not None:
            logger.close()
        ctx.close()


def _build(
    trt: ModuleType,
    ctx: CudaContext,
    logger: Any,
    onnx_path: Path,
    out_path: Path,
    options: TrtBuildOptions,
    card: ModelCard,
    plan: BuildPlan,
    calib_images: np.ndarray | None,
    quantizer: str | None,
    log_path: Path,
) -> dict[str, Any]:
    assert ctx.info is not None
    trt_major = trt_major_of(trt.__version__)
    started = time.perf_counter()
    builder = trt.Builder(logger)
    if builder is None:
        raise BackendUnavailable(f"TensorRT could not create a builder: {logger.last_error()}")
    network = builder.create_network(_network_flags(trt, plan, trt_major))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        first = errors[0].splitlines()[0] if errors else logger.last_error()
        raise ModelError(
            f"TensorRT {trt.__version__} could not parse {onnx_path.name}: {first} "
            f"({len(errors)} error(s), full log in {log_path}): export the ONNX with a "
            f"supported opset or check the operator against TensorRT's ONNX support matrix"
        )

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    _set_profile(profile, network, options)
    if config.add_optimization_profile(profile) < 0:
        raise ModelError(f"TensorRT rejected the optimisation profile: {logger.last_error()}")
    _configure(trt, config, options, plan)
    cache_info = _load_timing_cache(config, options.timing_cache)

    calibrator = None
    if plan.calibrator is not None:
        from port.export.trt_calibrator import make_calibrator

        assert calib_images is not None
        calib_batch = min(options.opt_batch, int(calib_images.shape[0]))
        input_name = network.get_input(0).name
        calibrator = make_calibrator(trt, plan.calibrator, calib_images, input_name, calib_batch,
                                     options.calib_cache)
        config.int8_calibrator = calibrator
        calib_profile = builder.create_optimization_profile()
        _set_profile(calib_profile, network, options, fixed_batch=calib_batch)
        config.set_calibration_profile(calib_profile)

    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if serialized is None:
        raise ModelError(
            f"TensorRT {trt.__version__} failed to build {out_path.name}: {logger.last_error()} "
            f"(full log in {log_path}); try a larger --workspace or another --precision"
        )
    build_seconds = time.perf_counter() - started
    cache_info.update(_save_timing_cache(config, options.timing_cache))

    plan_bytes = memoryview(serialized).tobytes()
    engine_sha = hashlib.sha256(plan_bytes).hexdigest()
    atomic_write_bytes(out_path, plan_bytes)

    # Read the I/O back from the engine itself: the sidecar describes what was built.
    runtime = trt.Runtime(logger)
    if options.version_compatible:
        runtime.engine_host_code_allowed = True  # our own plan, just built: trusted
    engine = deserialize(trt, runtime, plan_bytes, str(out_path), logger)
    io = engine_io(trt, engine)
    del engine, runtime

    sidecar = build_sidecar(
        engine_name=out_path.name,
        inputs=[t.to_dict() for t in io if t.is_input],
        outputs=[t.to_dict() for t in io if not t.is_input],
        precision=options.precision,
        tensorrt_version=trt.__version__,
        gpu_name=ctx.info.name,
        gpu_cc=ctx.info.compute_capability,
        hardware_compatibility=options.hardware_compatibility,
        version_compatible=options.version_compatible,
        source_onnx_sha256=file_sha256(onnx_path),
        card=card,
        quantizer=_quantizer_name(plan, quantizer),
        engine_sha256=engine_sha,
        build={"plan": plan.to_dict(), "options": options.to_dict()},
    )
    side = write_sidecar(sidecar_path(out_path), sidecar)
    calib_info = None
    if calibrator is not None:
        calib_info = {"batches": calibrator.batches_served, "cache_used": calibrator.cache_used}
    return {
        "build_seconds": round(build_seconds, 3),
        "engine_bytes": len(plan_bytes),
        "engine_sha256": engine_sha,
        "tensorrt_version": trt.__version__,
        "precision": options.precision,
        "quantizer": sidecar["quantizer"],
        "plan": plan.to_dict(),
        "gpu": ctx.info.name,
        "compute_capability": ctx.info.cc_text,
        "timing_cache": cache_info,
        "calibration": calib_info,
        "warnings": len(logger.warnings),
        "log": str(log_path),
        "sidecar": str(side),
    }


def _quantizer_name(plan: BuildPlan, quantizer: str | None) -> str | None:
    if plan.calibrator is not None:
        return "tensorrt"  # TensorRT's own calibrator computed the scales
    if plan.onnx_precision == "int8":
        return quantizer or "onnxruntime"
    return None


def _network_flags(trt: ModuleType, plan: BuildPlan, trt_major: int | None) -> int:
    """STRONGLY_TYPED on TensorRT 10's strongly typed path; 0 otherwise.

    TensorRT 11 networks are strongly typed whatever the flags (the flag is kept there only for
    API compatibility), and EXPLICIT_BATCH has been implied since TensorRT 10.
    """
    if plan.strongly_typed and trt_major == 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def _set_profile(
    profile: Any, network: Any, options: TrtBuildOptions, fixed_batch: int | None = None
) -> None:
    """min/opt/max over the batch axis of every input; other axes must be static."""
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(int(d) for d in tensor.shape)
        if not shape:
            raise ModelError(f"input '{tensor.name}' is a scalar: porter builds image classifiers")
        if any(d < 0 for d in shape[1:]):
            raise ModelError(
                f"input '{tensor.name}' has dynamic axes beyond the batch {shape}: export the ONNX "
                f"with a fixed image size"
            )
        rest = shape[1:]
        lo, opt, hi = (options.min_batch, options.opt_batch, options.max_batch)
        if fixed_batch is not None:
            lo = opt = hi = fixed_batch
        if shape[0] >= 0 and not lo == opt == hi == shape[0]:
            raise UsageError(
                f"the ONNX input '{tensor.name}' has a fixed batch of {shape[0]}: export it with a "
                f"dynamic batch axis, or pass --min-batch/--opt-batch/--max-batch {shape[0]}"
            )
        profile.set_shape(tensor.name, (lo, *rest), (opt, *rest), (hi, *rest))


def _configure(trt: ModuleType, config: Any, options: TrtBuildOptions, plan: BuildPlan) -> None:
    if options.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if options.builder_opt_level is not None:
        config.builder_optimization_level = options.builder_opt_level
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.hardware_compatibility is not None:
        # AMPERE_PLUS exists since TensorRT 8.6; SAME_COMPUTE_CAPABILITY was added in 10.9.
        level = getattr(trt.HardwareCompatibilityLevel,
                        _HW_LEVELS[options.hardware_compatibility], None)
        if level is None:
            raise UsageError(
                f"--hardware-compatibility {options.hardware_compatibility} needs TensorRT 10.9 "
                f"or newer (this is {trt.__version__}): upgrade TensorRT or use ampere+"
            )
        config.hardware_compatibility_level = level
    for name in plan.builder_flags:  # classic path only (TensorRT 10); plan_build refused on 11
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.cleared_flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is not None:  # TF32 may not exist in a future major; nothing to clear then
            config.clear_flag(flag)


def _load_timing_cache(config: Any, path: Path | None) -> dict[str, Any]:
    """Attach a timing cache: the file's content when it exists, an empty one otherwise."""
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, False):
        raise UsageError(
            f"timing cache {path} was made by another TensorRT version or GPU and cannot be "
            f"reused: delete it or pass another --timing-cache path"
        )
    return {"path": str(path) if path else None, "loaded_bytes": len(data), "reused": bool(data)}


def _save_timing_cache(config: Any, path: Path | None) -> dict[str, Any]:
    """Merge this build's timings with what is on disk now (another build may have added
    some), then write the file atomically, all under a lock."""
    if path is None:
        return {"saved_bytes": 0}
    from filelock import FileLock

    cache = config.get_timing_cache()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=600):
        if path.is_file():
            on_disk = config.create_timing_cache(path.read_bytes())
            # Entries already in our cache win; the others are appended (ITimingCache.combine).
            if on_disk is not None:
                cache.combine(on_disk, False)
        data = memoryview(cache.serialize()).tobytes()
        atomic_write_bytes(path, data)
    return {"saved_bytes": len(data)}
