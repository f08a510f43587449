"""TensorRT build options and the build plan: pure Python, decided before TensorRT is imported.

Everything here runs (and is tested) on a CPU. Each check lives in one place: a
:class:`TrtBuildOptions` refuses conflicting or out-of-range flags when it is made (so every
instance is valid); :func:`plan_build` refuses what the installed TensorRT major version or the
ONNX file cannot do and decides *how* the engine is built; :func:`check_build_gpu` refuses what
the build GPU cannot do:

* **strongly typed** (TensorRT 11 always, TensorRT 10 by default): the network takes its types
  from the ONNX graph, so FP16 comes from an FP16 ONNX and INT8 from a QDQ ONNX. TensorRT 11
  removed ``BuilderFlag.FP16/INT8`` and the ``IInt8*Calibrator`` classes (TensorRT 10.x -> 11.x
  Python migration guide, "Removed Python APIs and Replacements").
* **classic** (TensorRT 10 only): an FP32 ONNX plus builder precision flags, and for INT8 an
  ``IInt8EntropyCalibrator2`` / ``IInt8MinMaxCalibrator`` fed through pycuda buffers.

A request the installed version cannot honour is refused with the reason, never rewritten.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from port.formats import FORMATS, option_choices
from port.ground.errors import BackendUnavailable, UsageError

PRECISIONS = FORMATS["trt"].precisions

# --hardware-compatibility value -> TensorRT's HardwareCompatibilityLevel name.
HARDWARE_LEVELS = {"ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}
HARDWARE_COMPATIBILITY = tuple(HARDWARE_LEVELS)
CALIBRATORS = option_choices("calibrator")
OPT_LEVELS = range(0, 6)  # IBuilderConfig.builder_optimization_level accepts 0..5 (default 3)
SUPPORTED_MAJORS = (10, 11)  # newer majors are treated like 11: strongly typed only

# The TensorRT build flags (the registry's --to trt options that are not shared with the ONNX
# exporters): what options_from_flags reads.
TRT_OPTION_KEYS = frozenset(
    o.name for o in FORMATS["trt"].options if o not in FORMATS["onnx"].options
)

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Bytes from ``"4GiB"``, ``"512MiB"``, ``"1.5G"``, ``"2GB"`` or a plain integer.

    Binary units (KiB/MiB/GiB, or a bare K/M/G as trtexec's ``--memPoolSize`` reads them) are
    powers of 1024; KB/MB/GB are powers of 1000.
    """
    if isinstance(text, bool):
        raise UsageError(f"--workspace needs a size like 4GiB or 512MiB, got {text!r}")
    if isinstance(text, int):
        value, unit = float(text), ""
    else:
        match = _SIZE_RE.match(str(text))
        if not match or match.group(2).lower() not in _SIZE_UNITS:
            raise UsageError(
                f"--workspace needs a size like 4GiB or 512MiB (units B, KiB, MiB, GiB, TiB, "
                f"KB, MB, GB), got '{text}'"
            )
        value, unit = float(match.group(1)), match.group(2).lower()
    size = int(value * _SIZE_UNITS[unit])
    if size <= 0:
        raise UsageError(f"--workspace must be larger than 0 bytes, got '{text}'")
    return size


def format_size(nbytes: int) -> str:
    """``4294967296`` -> ``'4GiB'`` (exact binary units when they fit, else bytes)."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if nbytes % factor == 0:
            return f"{nbytes // factor}{unit}"
    return f"{nbytes}B"


@dataclass(frozen=True)
class TrtBuildOptions:
    """What the user asked for with ``porter export --to trt``.

    Checked when made (``UsageError`` naming the first bad flag), so every instance is valid;
    ``dataclasses.replace`` checks again.
    """

    precision: str = "fp16"
    # One optimisation profile over the batch axis. The defaults cover `porter evaluate`'s
    # default latency batch sizes (1 and 32) and tune for a mid-size batch, as trtexec users do.
    min_batch: int = 1
    opt_batch: int = 16
    max_batch: int = 32
    workspace_bytes: int | None = None  # None: TensorRT's default (all device memory)
    timing_cache: Path | None = None  # loaded before, merged and saved after every build
    builder_opt_level: int | None = None  # None: TensorRT's default (3)
    version_compatible: bool = False  # BuilderFlag.VERSION_COMPATIBLE: runs on newer TensorRT
    hardware_compatibility: str | None = None  # None | "ampere+" | "same-cc"
    calibrator: str | None = None  # classic INT8 on TensorRT 10: "entropy" | "minmax"
    calib_cache: Path | None = None  # calibration cache read/written by the classic calibrator

    def __post_init__(self) -> None:
        _check_flags(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for manifest ``params`` and the sidecar."""
        d = asdict(self)
        for key in ("timing_cache", "calib_cache"):
            d[key] = None if d[key] is None else str(d[key])
        return d


def _as_int(value: Any, key: str) -> int:
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        raise UsageError(f"{flag} needs an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{flag} needs an integer, got {value!r}") from None


def options_from_flags(precision: str | None, options: Mapping[str, Any]) -> TrtBuildOptions:
    """``TrtBuildOptions`` from ``porter export --to trt``'s option dict (``workspace`` as text),
    checked on the way. Keys outside :data:`TRT_OPTION_KEYS` are not read here: the export
    stage decides what they mean."""
    kwargs: dict[str, Any] = {}
    if precision is not None:
        kwargs["precision"] = precision
    for key in ("min_batch", "opt_batch", "max_batch", "builder_opt_level"):
        if options.get(key) is not None:
            kwargs[key] = _as_int(options[key], key)
    # Only --min-batch/--max-batch given: keep opt inside the range instead of failing on
    # the default opt (16) with e.g. --max-batch 8.
    if "opt_batch" not in kwargs and ("min_batch" in kwargs or "max_batch" in kwargs):
        lo = kwargs.get("min_batch", TrtBuildOptions.min_batch)
        hi = kwargs.get("max_batch", TrtBuildOptions.max_batch)
        kwargs["opt_batch"] = min(max(TrtBuildOptions.opt_batch, lo), hi)
    if options.get("workspace") is not None:
        kwargs["workspace_bytes"] = parse_size(options["workspace"])
    for key in ("timing_cache", "calib_cache"):
        if options.get(key) is not None:
            kwargs[key] = Path(options[key])
    if options.get("version_compatible") is not None:
        kwargs["version_compatible"] = bool(options["version_compatible"])
    for key in ("hardware_compatibility", "calibrator"):
        if options.get(key) is not None:
            kwargs[key] = str(options[key]).lower()
    return TrtBuildOptions(**kwargs)


def _check_flags(options: TrtBuildOptions) -> None:
    """Raise ``UsageError`` for the first conflicting or out-of-range flag (no TensorRT needed)."""
    if options.precision not in PRECISIONS:
        raise UsageError(
            f"--precision {options.precision!r} is not a TensorRT precision: choose one of "
            f"{', '.join(PRECISIONS)}"
        )
    for key in ("min_batch", "opt_batch", "max_batch"):
        value = getattr(options, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be a positive integer, got {value!r}")
    if not options.min_batch <= options.opt_batch <= options.max_batch:
        raise UsageError(
            f"the optimisation profile needs --min-batch <= --opt-batch <= --max-batch, got "
            f"{options.min_batch} / {options.opt_batch} / {options.max_batch}"
        )
    if options.workspace_bytes is not None and options.workspace_bytes <= 0:
        raise UsageError(f"--workspace must be larger than 0, got {options.workspace_bytes}")
    if options.builder_opt_level is not None and options.builder_opt_level not in OPT_LEVELS:
        raise UsageError(
            f"--builder-opt-level must be 0-5 (TensorRT's default is 3), got "
            f"{options.builder_opt_level}"
        )
    if (
        options.hardware_compatibility is not None
        and options.hardware_compatibility not in HARDWARE_COMPATIBILITY
    ):
        raise UsageError(
            f"--hardware-compatibility {options.hardware_compatibility!r} is unknown: choose "
            f"{' or '.join(HARDWARE_COMPATIBILITY)}"
        )
    if options.calibrator is not None and options.calibrator not in CALIBRATORS:
        raise UsageError(
            f"--calibrator {options.calibrator!r} is unknown: choose {' or '.join(CALIBRATORS)}"
        )
    if options.calibrator is not None and options.precision != "int8":
        raise UsageError(
            f"--calibrator only applies to --precision int8 (got --precision "
            f"{options.precision}): drop --calibrator or build INT8"
        )
    if options.calib_cache is not None and options.calibrator is None:
        raise UsageError(
            "--calib-cache is the classic calibrator's cache: pass --calibrator entropy|minmax "
            "with it, or drop it"
        )


def check_build_gpu(options: TrtBuildOptions, gpu_cc: tuple[int, int]) -> None:
    """Refuse options the build GPU (compute capability ``gpu_cc``) cannot honour:
    ``--hardware-compatibility ampere+`` must be built on an Ampere or newer GPU."""
    if options.hardware_compatibility == "ampere+" and gpu_cc < (8, 0):
        raise UsageError(
            f"--hardware-compatibility ampere+ can only be built on an Ampere or newer GPU "
            f"(compute capability >= 8.0); this GPU is {gpu_cc[0]}.{gpu_cc[1]}: build on a newer "
            f"GPU or drop the flag"
        )


@dataclass(frozen=True)
class BuildPlan:
    """How the engine will be built; recorded in the manifest and the sidecar."""

    path: str  # "strongly-typed" | "classic"
    strongly_typed: bool  # the network takes its types from the ONNX graph
    onnx_precision: str  # what the ONNX it is built from carries: fp32 | fp16 | int8 (QDQ)
    network_flags: tuple[str, ...] = ()  # NetworkDefinitionCreationFlag names to set
    builder_flags: tuple[str, ...] = ()  # BuilderFlag names to set (classic path only)
    cleared_flags: tuple[str, ...] = ()  # BuilderFlag names to clear
    calibrator: str | None = None  # classic INT8 calibrator, if any
    reason: str = ""

    @property
    def needs_calibrator(self) -> bool:
        """Whether the build needs calibration images (TensorRT 10's classic INT8 path)."""
        return self.calibrator is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("network_flags", "builder_flags", "cleared_flags"):
            d[key] = list(d[key])
        return d


def required_onnx_precision(options: TrtBuildOptions, trt_major: int) -> str:
    """Which ONNX artifact the export stage should hand to the builder.

    The precision lives in the ONNX file (FP16 graph, or QDQ for INT8), except for TensorRT 10's
    classic INT8 calibration, which starts from the FP32 ONNX.
    """
    if options.calibrator is not None and trt_major == 10:
        return "fp32"
    return options.precision


def plan_build(
    options: TrtBuildOptions, trt_major: int | None, onnx_precision: str | None = None
) -> BuildPlan:
    """Decide the build path for this TensorRT version and ONNX file, or refuse with the reason.

    ``onnx_precision`` is what the ONNX already carries: ``fp32``, ``fp16`` (FP16 graph) or
    ``int8`` (QDQ nodes). ``None`` means "not chosen yet": the plan then names the ONNX the
    export stage should build from (:func:`required_onnx_precision`). ``options`` were checked
    when they were made; this adds what depends on the TensorRT version and the ONNX.
    """
    if trt_major is None:
        raise BackendUnavailable(
            "TensorRT is not installed: install the GPU extra (see README) or export --to onnx"
        )
    if trt_major < SUPPORTED_MAJORS[0]:
        raise UsageError(
            f"TensorRT {trt_major}.x is not supported: install TensorRT 10 or 11 "
            f"(see README, GPU set-up)"
        )
    if options.calibrator is not None and trt_major >= 11:
        raise UsageError(
            "TensorRT 11 removed implicit INT8 calibration (IInt8*Calibrator): omit "
            "--calibrator to build from the QDQ ONNX"
        )
    if onnx_precision is None:
        onnx_precision = required_onnx_precision(options, trt_major)
    if onnx_precision not in PRECISIONS:
        raise ValueError(f"onnx_precision must be one of {PRECISIONS}, got {onnx_precision!r}")
    want = options.precision
    # FP32 means IEEE FP32 here, like the ONNX Runtime CPU reference it is compared with; TF32
    # (on by default on Ampere+) would move the logits by ~1e-3 for no reason the user asked.
    cleared = ("TF32",) if want == "fp32" else ()
    strongly_typed = BuildPlan(
        path="strongly-typed",
        strongly_typed=True,
        onnx_precision=onnx_precision,
        # TensorRT 10 needs the flag; TensorRT 11 networks are strongly typed whatever the flags
        # (the flag is deprecated and ignored there). EXPLICIT_BATCH is implied since 10.
        network_flags=("STRONGLY_TYPED",) if trt_major < 11 else (),
        cleared_flags=cleared,
        reason=(
            f"strongly typed network from the {onnx_precision.upper()}"
            f"{' (QDQ)' if onnx_precision == 'int8' else ''} ONNX: the graph carries the precision"
        ),
    )

    if trt_major >= 11:
        if onnx_precision != want:
            raise UsageError(
                f"TensorRT {trt_major} builds strongly typed networks only, so --precision {want} "
                f"needs the {_onnx_name(want)} ONNX, not the {_onnx_name(onnx_precision)} one: "
                f"run `porter export --to onnx --precision {want}` first"
            )
        return strongly_typed

    # TensorRT 10: strongly typed by default, the classic weakly typed path when asked for.
    if options.calibrator is not None:
        if onnx_precision != "fp32":
            raise UsageError(
                f"--calibrator calibrates an FP32 network, but this ONNX is already "
                f"{_onnx_name(onnx_precision)}: build from the FP32 ONNX, or omit --calibrator"
            )
        return BuildPlan(
            path="classic",
            strongly_typed=False,
            onnx_precision="fp32",
            builder_flags=("INT8",),
            cleared_flags=cleared,
            calibrator=options.calibrator,
            reason=(
                f"classic INT8: BuilderFlag.INT8 with the {options.calibrator} calibrator on the "
                f"FP32 ONNX (TensorRT 10)"
            ),
        )
    if onnx_precision == want:
        return strongly_typed
    if want == "fp16" and onnx_precision == "fp32":
        return BuildPlan(
            path="classic",
            strongly_typed=False,
            onnx_precision="fp32",
            builder_flags=("FP16",),
            cleared_flags=cleared,
            reason="classic FP16: BuilderFlag.FP16 on the FP32 ONNX lets TensorRT 10 pick FP16 "
                   "kernels",
        )
    if want == "int8" and onnx_precision == "fp32":
        raise UsageError(
            "INT8 from the FP32 ONNX needs a calibrator on TensorRT 10: pass --calibrator "
            "entropy|minmax, or build from the QDQ ONNX "
            "(`porter export --to onnx --precision int8`)"
        )
    raise UsageError(
        f"--precision {want} cannot be built from the {_onnx_name(onnx_precision)} ONNX: "
        f"build from the {_onnx_name(want)} ONNX (`porter export --to onnx --precision {want}`)"
    )


def _onnx_name(precision: str) -> str:
    return {"fp32": "FP32", "fp16": "FP16", "int8": "INT8 QDQ"}[precision]
