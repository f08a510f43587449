"""Build a TensorRT engine from an ONNX file (``porter export --to trt``).

The decisions are made first, in pure Python: the options were checked when they were made and
``trt_options.plan_build`` decides the build path for the installed TensorRT and this ONNX. The
build itself is a composition of the loaders next to the runner (``port.engines.trt_loaders``,
Polygraphy's ``backend/trt/loader.py`` shape): network from ONNX (with the optimisation
profile), build config, serialised build (timing cache read and merged under its file lock),
engine from bytes to read the I/O back. This module adds what only a build needs: the build log,
the atomic write of the raw plan and its JSON sidecar (``port.export.sidecar``), and the
metrics for the manifest.

INT8 scales come from a QDQ ONNX. :func:`choose_quantizer` decides, once, which quantizer makes
it and says why: NVIDIA Model Optimizer's ONNX quantizer (``modelopt.onnx.quantization.quantize``)
when installed, since it places Q/DQ nodes where TensorRT fuses them, otherwise ONNX Runtime's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from port.engines.cuda import PYCUDA_MISSING, CudaContext, DeviceInfo, device_count
from port.engines.trt_loaders import (
    TENSORRT_MISSING,
    BatchRange,
    CreateConfig,
    EngineBytesFromNetwork,
    EngineFromBytes,
    NetworkFromOnnx,
    SerializedEngine,
    engine_io,
    import_tensorrt,
    make_logger,
)
from port.engines.trt_sidecar import sidecar_path
from port.export.onnx_files import onnx_precision
from port.export.sidecar import build_sidecar, write_sidecar
from port.export.trt_options import (
    HARDWARE_LEVELS,
    BuildPlan,
    TrtBuildOptions,
    check_build_gpu,
    plan_build,
)
from port.ground.atomic import atomic_write_bytes
from port.ground.digest import sha256_bytes, sha256_file
from port.ground.dists import parse_version
from port.ground.errors import BackendUnavailable, ModelError, UsageError, first_line
from port.hostinfo import tensorrt_version
from port.models.card import ModelCard

_MODELOPT_METHODS = {"entropy": "entropy", "minmax": "max"}  # porter name -> modelopt name


# --------------------------------------------------------------------------------------------
# What an ONNX file carries, and what this machine has (CPU only)
# --------------------------------------------------------------------------------------------
def installed_trt_major() -> int:
    """The installed TensorRT major version, checking everything a build needs first.

    ``BackendUnavailable`` names the first thing missing: TensorRT, pycuda, or a CUDA GPU.
    """
    version = None
    if importlib.util.find_spec("tensorrt") is not None:
        version = tensorrt_version()
    if version is None:
        raise BackendUnavailable(TENSORRT_MISSING)
    if importlib.util.find_spec("pycuda") is None:
        raise BackendUnavailable(PYCUDA_MISSING)
    if device_count() == 0:
        raise BackendUnavailable(
            "no CUDA GPU found: TensorRT needs one; run `porter doctor`, or export --to onnx"
        )
    parts = parse_version(version)
    if not parts:
        raise BackendUnavailable(
            f"the installed TensorRT reports version '{version}': reinstall TensorRT 10 or 11 "
            f"(see README, GPU set-up)"
        )
    return parts[0]


# --------------------------------------------------------------------------------------------
# INT8: which quantizer makes the QDQ ONNX
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantizerChoice:
    """Which quantizer makes the QDQ ONNX of a TensorRT INT8 engine, and why."""

    name: str  # "modelopt" | "onnxruntime"
    why: str


def modelopt_available() -> bool:
    """Whether NVIDIA Model Optimizer is installed (checked without importing it)."""
    return importlib.util.find_spec("modelopt") is not None


def choose_quantizer(method: str, *, have_modelopt: bool | None = None) -> QuantizerChoice:
    """The one place that decides who quantizes for TensorRT INT8, with the reason.

    modelopt places Q/DQ nodes the way TensorRT fuses them, so it wins when installed, unless
    the calibration method is one only ONNX Runtime implements (percentile). Nothing falls back
    after this: what it returns is what runs (a broken modelopt install is refused by
    :func:`quantize_with_modelopt`, never silently replaced).
    """
    if have_modelopt is None:
        have_modelopt = modelopt_available()
    if not have_modelopt:
        return QuantizerChoice(
            name="onnxruntime",
            why="NVIDIA modelopt is not installed: using ONNX Runtime's QDQ model",
        )
    if method not in _MODELOPT_METHODS:
        return QuantizerChoice(
            name="onnxruntime",
            why=f"modelopt has no '{method}' calibration: using ONNX Runtime's QDQ model",
        )
    return QuantizerChoice(name="modelopt",
                           why="modelopt places Q/DQ nodes where TensorRT fuses them")


def quantize_with_modelopt(
    fp32_onnx: Path, out_path: Path, calib_images: np.ndarray, *, method: str, card: Any = None
) -> Path:
    """Quantize ``fp32_onnx`` into ``out_path`` with ``modelopt.onnx.quantization.quantize``.

    ``method`` is porter's calibration name (``entropy``/``minmax``; :func:`choose_quantizer`
    only picks modelopt for those). ``BackendUnavailable`` when modelopt's ONNX quantizer cannot
    be imported.
    """
    import onnx

    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as exc:
        state = ("is installed but its ONNX quantizer cannot be imported" if modelopt_available()
                 else "is not installed")
        raise BackendUnavailable(
            f"NVIDIA modelopt {state} ({first_line(exc)}): install `nvidia-modelopt[onnx]` (see "
            f"README, GPU set-up)"
        ) from None
    from port.engines.adapter import GraphIO

    # modelopt feeds the calibration array to the graph as it is: give it the graph's own
    # image input (not an initializer listed as an input), layout and dtype; a fixed-batch
    # graph is fed whole batches of its size (a short last one padded with real images).
    io = GraphIO.for_onnx(onnx.load(str(fp32_onnx), load_external_data=False), card)
    batches = list(io.graph_batches(calib_images, io.batch or len(calib_images)))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    quantize(
        onnx_path=str(fp32_onnx),
        quantize_mode="int8",
        calibration_data={io.input_name: np.ascontiguousarray(np.concatenate(batches))},
        calibration_method=_MODELOPT_METHODS[method],
        calibration_eps=_modelopt_eps(),
        # Keep the layers modelopt does not quantize in FP32: --precision int8 means INT8 where
        # quantized and FP32 elsewhere, the same contract as the ONNX Runtime QDQ model.
        high_precision_dtype="fp32",
        output_path=str(out_path),
    )
    if not out_path.is_file():
        raise ModelError(f"modelopt did not write {out_path}: see its log above")
    return out_path


def _modelopt_eps() -> list[str]:
    """Calibrate on the GPU when onnxruntime-gpu is present, on the CPU otherwise."""
    import onnxruntime as ort

    gpu = "CUDAExecutionProvider" in ort.get_available_providers()
    return ["cuda:0", "cpu"] if gpu else ["cpu"]


# --------------------------------------------------------------------------------------------
# The build: loaders composed, then the plan, its sidecar and the metrics
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
    for options the installed TensorRT or this GPU cannot honour, ``ModelError`` when TensorRT
    cannot parse the ONNX or build it.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    log_path = Path(log_path) if log_path else out_path.with_name(out_path.name + ".log")
    onnx_prec = onnx_precision(onnx_path)
    trt = import_tensorrt()
    # Every refusal that needs no GPU comes before the CUDA context is opened.
    plan = plan_build(options, parse_version(trt.__version__)[0], onnx_prec)
    if plan.needs_calibrator and calib_images is None:
        raise UsageError(
            "--calibrator needs calibration images: the export stage passes the run's "
            "training split (or --calib-data)"
        )
    if calib_images is not None:
        from port.engines.adapter import GraphIO

        # The classic calibrator copies batches as they are: give it the graph's own layout
        # (an NHWC graph would otherwise calibrate on transposed pixels of the same size).
        calib_images = GraphIO.for_onnx(onnx_path, card).to_graph(calib_images)
    with CudaContext(device_index) as ctx:
        gpu = ctx.info
        assert gpu is not None
        check_build_gpu(options, gpu.compute_capability)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(
            f"porter TensorRT build {time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
            f"onnx: {onnx_path} ({onnx_prec})\nTensorRT {trt.__version__} on {gpu.name} "
            f"(sm {gpu.cc_text})\nplan: {plan.reason}\noptions: {options.to_dict()}\n",
            encoding="utf-8",
        )
        with contextlib.closing(make_logger(log_path)) as logger, ctx.active():
            return _build(onnx_path, out_path, options=options, plan=plan, card=card,
                          calib_images=calib_images, quantizer=quantizer, gpu=gpu,
                          logger=logger, log_path=log_path, trt_version=trt.__version__)


def _build(
    onnx_path: Path,
    out_path: Path,
    *,
    options: TrtBuildOptions,
    plan: BuildPlan,
    card: ModelCard,
    calib_images: np.ndarray | None,
    quantizer: str | None,
    gpu: DeviceInfo,
    logger: Any,
    log_path: Path,
    trt_version: str,
) -> dict[str, Any]:
    """Serialise, write the plan atomically, describe it in its sidecar; the metrics."""
    started = time.perf_counter()
    built, calib_info = _serialize(onnx_path, out_path.name, options=options, plan=plan,
                                   calib_images=calib_images, logger=logger, log_path=log_path)
    build_seconds = time.perf_counter() - started
    engine_sha = sha256_bytes(built.data)
    atomic_write_bytes(out_path, built.data)
    sidecar = _sidecar(built.data, engine_name=out_path.name, engine_sha=engine_sha,
                       onnx_path=onnx_path, options=options, plan=plan, card=card,
                       quantizer=quantizer, gpu=gpu, logger=logger, trt_version=trt_version)
    side = write_sidecar(sidecar_path(out_path), sidecar)
    return {
        "build_seconds": round(build_seconds, 3),
        "engine_bytes": len(built.data),
        "engine_sha256": engine_sha,
        "tensorrt_version": trt_version,
        "precision": options.precision,
        "quantizer": sidecar["quantizer"],
        "plan": plan.to_dict(),
        "gpu": gpu.name,
        "compute_capability": gpu.cc_text,
        "timing_cache": built.timing_cache,
        "calibration": calib_info,
        "warnings": len(logger.warnings),
        "log": str(log_path),
        "sidecar": str(side),
    }


def _serialize(
    onnx_path: Path,
    engine_name: str,
    *,
    options: TrtBuildOptions,
    plan: BuildPlan,
    calib_images: np.ndarray | None,
    logger: Any,
    log_path: Path,
) -> tuple[SerializedEngine, dict[str, Any] | None]:
    """Network from ONNX -> build config -> serialised build (the loaders, composed), and what
    the classic calibrator did (``None`` without one)."""
    network = NetworkFromOnnx(
        path=onnx_path, logger=logger, flags=plan.network_flags, log_path=log_path,
        batches=BatchRange(min=options.min_batch, opt=options.opt_batch, max=options.max_batch),
    )()
    calibrator, calib_batch = None, None
    if plan.calibrator is not None:
        from port.export.trt_calibrator import make_calibrator

        assert calib_images is not None
        calib_batch = min(options.opt_batch, int(calib_images.shape[0]))
        calibrator = make_calibrator(kind=plan.calibrator, images=calib_images,
                                     input_name=network.input_names[0], batch_size=calib_batch,
                                     cache_path=options.calib_cache)
    try:
        config = CreateConfig(
            logger=logger,
            workspace_bytes=options.workspace_bytes,
            builder_opt_level=options.builder_opt_level,
            version_compatible=options.version_compatible,
            hardware_level=HARDWARE_LEVELS.get(options.hardware_compatibility or ""),
            set_flags=plan.builder_flags,
            clear_flags=plan.cleared_flags,
            calibrator=calibrator,
            calibration_batch=calib_batch,
        )(network)
        built = EngineBytesFromNetwork(network=network, config=config, logger=logger,
                                       timing_cache=options.timing_cache, what=engine_name,
                                       log_path=log_path)()
    finally:
        if calibrator is not None:
            calibrator.free()
    if calibrator is None:
        return built, None
    return built, {"batches": calibrator.batches_served, "cache_used": calibrator.cache_used}


def _sidecar(
    plan_bytes: bytes,
    *,
    engine_name: str,
    engine_sha: str,
    onnx_path: Path,
    options: TrtBuildOptions,
    plan: BuildPlan,
    card: ModelCard,
    quantizer: str | None,
    gpu: DeviceInfo,
    logger: Any,
    trt_version: str,
) -> dict[str, Any]:
    """The sidecar of a plan, with its I/O read back from the engine itself: it describes what
    was built, not what was asked for."""
    # A version-compatible plan embeds host code; this one was just built here: trusted.
    loaded = EngineFromBytes(data=plan_bytes, logger=logger, what=engine_name,
                             allow_host_code=options.version_compatible)()
    io = engine_io(loaded.engine)
    del loaded  # free the engine before the context is popped
    return build_sidecar(
        engine_name=engine_name,
        inputs=[t.to_dict() for t in io if t.is_input],
        outputs=[t.to_dict() for t in io if not t.is_input],
        precision=options.precision,
        tensorrt_version=trt_version,
        gpu_name=gpu.name,
        gpu_cc=gpu.compute_capability,
        hardware_compatibility=options.hardware_compatibility,
        version_compatible=options.version_compatible,
        source_onnx_sha256=sha256_file(onnx_path),
        card=card,
        quantizer=_quantizer_name(plan, quantizer),
        engine_sha256=engine_sha,
        build={"plan": plan.to_dict(), "options": options.to_dict()},
    )


def _quantizer_name(plan: BuildPlan, quantizer: str | None) -> str | None:
    """Who computed the INT8 scales, for the sidecar: TensorRT's classic calibrator, the
    quantizer that made the QDQ ONNX, or nobody (FP32/FP16)."""
    if plan.calibrator is not None:
        return "tensorrt"
    if plan.onnx_precision == "int8":
        return quantizer or "onnxruntime"
    return None
