"""THE registry of artifact formats and precisions: every other list of them derives from here.

What derives from it: ``porter export``'s ``--to``/``--precision`` choices and flags (and which
format and precision each flag applies to), name normalisation, the export stage's dispatch,
the artifact ids and file names, which artifact kinds ``porter evaluate --compare`` runs and on
which backend, ``engines.load``'s suffix map and runner classes, what a backend needs installed,
``porter doctor``'s targets, the accuracy gate of each precision, and the check that a file
holds the precision its record claims.

Code is named by ``"module:attribute"`` strings and imported only when used, so reading the
registry imports neither torch, onnxruntime nor tensorrt (it sits on porter's ground floor).

Adding a format or a precision is one edit here: a :class:`Format` entry (suffixes, kind,
backend, runner, needs, options, one exporter per precision, the precision reader) or a
:class:`Precision` entry (its default gate); a test walks every format x precision x letter
case and checks that an exporter, a runner and a gate exist for each.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

from port.ground.errors import UsageError


# -- precisions -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    """One numeric precision an artifact can carry, and the default gate it must pass."""

    name: str
    description: str
    # The default accuracy gate (port.gates.PrecisionGate limits; None = unchecked).
    # fp32 must compute the same function; fp16/int8 keep a fraction of the reference top-1,
    # MLPerf Inference's convention (99.9% "high accuracy", 99% for quantised models).
    gate: Mapping[str, float | None]
    # False for a precision only a backend computes in (bf16: OpenVINO's opt-in rows): it has a
    # gate but no file carries it, so it is no --precision choice.
    exportable: bool = True


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "32-bit float: the same function as the reference",
                  gate={"min_agreement": 0.999, "max_top1_drop_pp": 0.1}),
        Precision("fp16", "16-bit float graph with FP32 inputs/outputs",
                  gate={"min_top1_ratio": 0.999}),
        Precision("int8", "8-bit integer (explicit QuantizeLinear/DequantizeLinear)",
                  gate={"min_top1_ratio": 0.99}),
        # bfloat16 keeps FP32's range with 8 mantissa bits (FP16 has 11): the FP16 gate's
        # 99.9% of the reference top-1, measured on the row, not assumed.
        Precision("bf16", "bfloat16 arithmetic on an FP32/FP16 file (a runtime's choice)",
                  gate={"min_top1_ratio": 0.999}, exportable=False),
    )
}
# The precisions a file can carry (--precision choices); bf16 is computed, never exported.
PRECISION_NAMES: tuple[str, ...] = tuple(p.name for p in PRECISIONS.values() if p.exportable)
# From the strictest gate to the loosest: a row is gated as the looser of what its file carries
# and what its backend computes in (an FP32 file computed in bf16 is gated as bf16).
GATE_ORDER: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")


# Runtimes' own spellings of a compute precision -> porter's (OpenVINO says f32, f16, bf16).
_COMPUTE_NAMES = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "i8": "int8", "u8": "int8"}


def compute_name(text: str | None) -> str | None:
    """A runtime's compute precision in porter's vocabulary: ``f32`` -> ``fp32``,
    ``int8+f32`` -> ``int8+fp32`` (int8 kernels with the rest in FP32); None stays None."""
    if text is None:
        return None
    return "+".join(_COMPUTE_NAMES.get(p, p) for p in str(text).strip().lower().split("+"))


def gated_precision(carried: str, computed: str | None) -> str:
    """The precision whose gate a row must pass: the looser of ``carried`` (the file's) and
    each part of ``computed`` (what the backend really computed in, e.g. ``int8+bf16``; None or
    unknown parts: the file's)."""
    if carried not in GATE_ORDER:
        return carried
    parts = [p for p in (compute_name(computed) or "").split("+") if p in GATE_ORDER]
    return max([carried, *parts], key=GATE_ORDER.index)


# -- export options (flags) -------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One ``porter export`` flag: its type, help, choices and the precisions that use it."""

    name: str  # Python name; the flag is --name-with-dashes
    type: Any  # int | float | str | bool | Path | list[str] (comma-separated on the CLI)
    help: str
    precisions: frozenset[str] | None = None  # None: every precision of the format
    choices: tuple[str, ...] | None = None  # normalised to lower case at the CLI boundary
    # Backend (evaluate) options only: the value when the flag is absent, and the runner
    # constructor's keyword it feeds (None: the option's own name).
    default: Any = None
    kwarg: str | None = None

    @property
    def flag(self) -> str:
        """The command-line spelling, e.g. ``--calib-images``."""
        return "--" + self.name.replace("_", "-")

    def checked(self, value: Any) -> Any:
        """``value`` lower-cased and checked where the option has choices (``UsageError``
        listing them); otherwise as given."""
        if self.choices is None:
            return value
        text = str(value).strip().lower()
        if text not in self.choices:
            raise UsageError(f"{self.flag} {value} is not known: choose one of "
                             f"{', '.join(self.choices)}")
        return text


_INT8 = frozenset({"int8"})
_FP16 = frozenset({"fp16"})
# Written once, shared by the formats that take them.
_DATA = Option("data", str, "Data for the parity batch (default: the run's).")
_CALIB = (
    Option("calib_data", str, "Calibration data (default: the run's training split).", _INT8),
    Option("calib_images", int, "Number of calibration images (default 500 or the split).",
           _INT8),
    Option("calib_method", str, "Calibration method.", _INT8,
           choices=("minmax", "entropy", "percentile")),
    Option("calib_seed", int, "Seed for choosing the calibration images.", _INT8),
)
_KEEP_FP32 = Option("keep_fp32", list[str], "Node names kept in FP32, comma-separated (the FP16 "
                    "graph a TensorRT FP16 engine is built from too); 'auto' keeps the layers "
                    "that lose most in FP32, one per step, until the FP16 gate passes.", _FP16)
_FP32_FALLBACK = (
    Option("exclude", list[str], "INT8: node names left unquantized (FP32), comma-separated; "
           "'auto' keeps the layers that lose most in FP32, one per step, until the INT8 gate "
           "passes.", _INT8),
    Option("max_fp32_layers", int, "With --keep-fp32 auto / --exclude auto: most search steps "
           "(layers tried in FP32, one per step; default 8).", _FP16 | _INT8),
)

ONNX_OPTIONS = (
    Option("opset", int, "ONNX opset."),
    Option("exporter", str, "torch.onnx exporter.", choices=("dynamo", "torchscript")),
    _DATA, *_CALIB, _KEEP_FP32, *_FP32_FALLBACK,
    Option("int8_activations", str, "int8: symmetric, TensorRT-ready (default); uint8: faster "
           "on ONNX Runtime's CPU only.", _INT8, choices=("int8", "uint8")),
    Option("int8_weights", str, "full: TensorRT, GPUs, VNNI CPUs (default); 7bit: ONNX "
           "Runtime's fast kernels on x86 CPUs without VNNI.", _INT8, choices=("full", "7bit")),
)
TRITON_OPTIONS = (
    Option("model_repo", Path, "Triton: the model repository folder to write (required; "
           "outside any other run)."),
    Option("instances", int, "Triton: model instances per device (instance_group count)."),
)
# The IR is converted from the run's ONNX of the same precision; these make that ONNX when the
# run has none yet (as --to trt does).
OPENVINO_OPTIONS = (_DATA, *_CALIB, _KEEP_FP32)
TRT_OPTIONS = (
    _DATA, *_CALIB, _KEEP_FP32,
    Option("min_batch", int, "Optimisation profile: smallest batch."),
    Option("opt_batch", int, "Optimisation profile: batch to tune for."),
    Option("max_batch", int, "Optimisation profile: largest batch."),
    Option("workspace", str, "Workspace memory limit, e.g. 4GiB."),
    Option("timing_cache", Path, "Timing cache file, reused and updated across builds."),
    Option("builder_opt_level", int, "Builder optimisation level 0-5."),
    Option("version_compatible", bool, "Build an engine newer TensorRT versions can run."),
    Option("hardware_compatibility", str, "Run on other GPU generations.",
           choices=("ampere+", "same-cc")),
    Option("calibrator", str, "Classic TensorRT 10 INT8 calibration (instead of QDQ).", _INT8,
           choices=("entropy", "minmax")),
    Option("calib_cache", Path, "Calibration cache of the classic calibrator.", _INT8),
)


def options_dataclass(name: str, options: tuple[Option, ...]) -> type:
    """A frozen dataclass with one optional field per option; each field's metadata holds the
    precisions that use it (``metadata["precisions"]``) and its help."""
    return make_dataclass(
        name,
        [(o.name, o.type | None, field(default=None, metadata={
            "precisions": o.precisions, "help": o.help, "choices": o.choices}))
         for o in options],
        frozen=True,
    )


# -- backends (runtimes that run artifacts) -----------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """One runtime porter runs artifacts on: its runner, what it needs, how it is probed.

    A backend is a *row maker*: ``porter evaluate --compare`` gives every artifact one row per
    backend of its format that is chosen (``--backends``) and can run here. Entries that share a
    runner class differ in ``fixed`` (e.g. OpenVINO computing in bfloat16 is its own opt-in
    entry, so a bf16 row is never mistaken for an FP32 one).
    """

    name: str  # what --backends and report rows say; also engines.load(backend=...)
    description: str  # one line for --help and doctor
    runner: str  # "module:Class" of the Runner (imported when used)
    # pip distributions whose installed version the environment record and doctor report (the
    # first installed wins: e.g. onnxruntime-gpu provides the onnxruntime module).
    distributions: tuple[str, ...] = ()
    # Python modules the runner needs beyond porter's dependencies, and what to do without them.
    needs: tuple[tuple[str, str], ...] = ()
    hardware: str | None = None  # "cuda-gpu" when it only runs on an NVIDIA GPU
    # `porter evaluate` flags that configure this backend's runner (Option.kwarg, Option.default).
    options: tuple[Option, ...] = ()
    # Runner keywords this entry always passes (what sets it apart from a sibling entry).
    fixed: Mapping[str, Any] = field(default_factory=dict)
    # The precision it computes in when that is its point (an opt-in bf16 row is gated as bf16).
    compute: str | None = None
    # True: a row of `evaluate --compare` when --backends is not given (and it can run here).
    default: bool = True
    # "module:function" returning a JSON-able dict for doctor ({"version", "devices", "error"}).
    probe: str | None = None

    def runner_class(self) -> Any:
        """The Runner class (imported now)."""
        return resolve(self.runner)

    def version(self) -> str | None:
        """The installed version (distribution metadata only: nothing is imported)."""
        from port.ground.dists import dist_version

        return dist_version(*self.distributions) if self.distributions else None

    def runner_kwargs(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Constructor keywords: the options' defaults, the given option values, then ``fixed``."""
        out: dict[str, Any] = {}
        for option in self.options:
            value = (given or {}).get(option.name)
            value = option.default if value is None else value
            if value is not None:
                out[option.kwarg or option.name] = value
        return {**out, **self.fixed}


_OV_FIX = ("install porter's openvino extra (pip install 'porter[openvino]') or drop it from "
           "--backends")
_OV_DEVICE = Option("openvino_device", str, "OpenVINO rows: the device to compile for (CPU, GPU, "
                    "NPU, AUTO).", default="CPU", kwarg="device")
def _openvino_backend(name: str, description: str, hint: str, **rest: Any) -> Backend:
    """One OpenVINO entry: the same runner, packages and device flag; ``hint`` is the inference
    precision it always compiles with (what sets the entries apart)."""
    return Backend(name=name, description=description,
                   runner="port.engines.openvino:OpenVinoRunner", distributions=("openvino",),
                   needs=(("openvino", _OV_FIX),), options=(_OV_DEVICE,),
                   fixed={"inference_precision": hint}, **rest)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            name="torch", description="PyTorch eager (the trained reference)",
            runner="port.engines.torch_runner:TorchRunner", distributions=("torch",),
        ),
        Backend(
            name="onnxruntime", description="ONNX Runtime (CPU; CUDA/TensorRT providers when "
                                            "onnxruntime-gpu is installed)",
            runner="port.engines.onnxrt:OnnxRuntimeRunner",
            distributions=("onnxruntime", "onnxruntime-gpu"),
            options=(
                Option("int8_cpu_kernels", str, "INT8 graphs on ONNX Runtime's CPU: auto = exact "
                       "U8U8 kernels where this CPU has no VNNI and would saturate.",
                       choices=("auto", "exact", "fast"), default="auto", kwarg="int8_kernels"),
                Option("int8_cpu_graph", str, "INT8 graphs on ONNX Runtime's CPU: cpu = run the "
                       "file's CPU form (ReLU-side Q/DQ pairs as uint8, fused by ORT; the file is "
                       "unchanged), file = run it as written.", choices=("cpu", "file"),
                       default="cpu", kwarg="int8_graph"),
            ),
            probe="port.hostinfo:probe_onnxruntime",
        ),
        _openvino_backend("openvino", "OpenVINO, computing in FP32 (inference precision hint "
                          "f32, set explicitly)", "f32", probe="port.hostinfo:probe_openvino"),
        _openvino_backend("openvino-bf16", "OpenVINO computing in bfloat16 (its default on CPUs "
                          "with AVX512_BF16/AMX; opt-in row)", "bf16", compute="bf16",
                          default=False),
        _openvino_backend("openvino-f16", "OpenVINO computing in FP16 (GPUs, NPUs, ARM and "
                          "AVX512_FP16 CPUs; opt-in row)", "f16", compute="fp16", default=False),
        Backend(
            name="tensorrt", description="NVIDIA TensorRT engine runtime (GPU only)",
            runner="port.engines.tensorrt:TensorRTRunner",
            distributions=("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11"),
            needs=(("tensorrt", "install TensorRT (see README, GPU set-up) or evaluate the "
                                ".onnx instead"),
                   ("pycuda.driver", "install pycuda (see README, GPU set-up) or evaluate the "
                                     ".onnx instead")),
            hardware="cuda-gpu", probe="port.hostinfo:probe_tensorrt",
        ),
    )
}


def normalize_backend(text: str) -> Backend:
    """The backend ``text`` names (any letter case); ``UsageError`` listing the choices."""
    entry = BACKENDS.get(str(text).strip().lower())
    if entry is None:
        raise UsageError(f"unknown backend '{text}': choose one of {', '.join(BACKENDS)}")
    return entry


def parse_backends(text: str | None) -> tuple[str, ...] | None:
    """``--backends a,b`` as registry names, in the user's order (None: not given)."""
    if text is None:
        return None
    names = [normalize_backend(part).name for part in str(text).split(",") if part.strip()]
    if not names:
        raise UsageError(f"--backends needs backend names, e.g. onnxruntime,openvino: choose "
                         f"from {', '.join(BACKENDS)}")
    return tuple(dict.fromkeys(names))


def backend_options() -> dict[str, Option]:
    """Every `porter evaluate` backend option by name, once (sibling backends share some)."""
    out: dict[str, Option] = {}
    for entry in BACKENDS.values():
        for option in entry.options:
            out.setdefault(option.name, option)
    return out


def normalize_backend_options(given: Mapping[str, Any]) -> dict[str, Any]:
    """Backend option values lower-cased where they have choices and checked (``UsageError``
    listing the choices); ``None`` values dropped."""
    known = backend_options()
    out: dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            continue
        out[name] = known[name].checked(value)
    return out


# -- formats ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Format:
    """One artifact format: how it is named, made, recognised and run."""

    name: str  # what the user types after --to; also the artifact id prefix
    description: str  # one line for --help and doctor
    kind: str  # manifest artifact kind
    suffixes: tuple[str, ...]  # file suffixes, lower case; the first is what porter writes
    # Every backend (BACKENDS) that runs this format, the one engines.load picks first; empty
    # for a format porter makes but does not run itself (a Triton model repository): evaluate,
    # engines.load and the suffix map leave it out.
    backends: tuple[str, ...]
    precisions: tuple[str, ...] = PRECISION_NAMES
    # precision -> "module:function" making it (export stage level); empty: not exportable.
    exporters: Mapping[str, str] = field(default_factory=dict)
    options: tuple[Option, ...] = ()
    # "module:function" reading the precision a file really carries (the record's proof).
    precision_of: str | None = None
    # "module:function" making the side `porter evaluate --layerwise` compares from an artifact
    # of this format (port.evaluate.layerwise_job.SideInput -> Side); None: not comparable.
    layerwise: str | None = None

    @property
    def exportable(self) -> bool:
        """Whether ``porter export --to NAME`` makes this format."""
        return bool(self.exporters)

    @property
    def runnable(self) -> bool:
        """Whether porter runs this format's artifacts (``evaluate``, ``engines.load``)."""
        return bool(self.backends)

    @property
    def backend(self) -> str:
        """The backend that runs this format unless told otherwise (``engines.load``)."""
        if not self.backends:
            raise UsageError(f"porter does not run --to {self.name} artifacts "
                             f"({self.description})")
        return self.backends[0]

    @property
    def needs(self) -> tuple[tuple[str, str], ...]:
        """What the default backend needs installed (doctor's verdict for --to targets)."""
        return BACKENDS[self.backend].needs if self.backends else ()

    @property
    def hardware(self) -> str | None:
        """The default backend's hardware need (``cuda-gpu`` for TensorRT)."""
        return BACKENDS[self.backend].hardware if self.backends else None

    @property
    def options_type(self) -> type:
        """The options dataclass of this format (fields say which precisions use them)."""
        return _options_type(self.name)

    def artifact_id(self, precision: str) -> str:
        """Manifest id of this format's export at ``precision``, e.g. ``onnx-int8``."""
        return f"{self.name}-{precision}"

    def file_name(self, precision: str, variant: str | None = None) -> str:
        """File porter writes, e.g. ``model.int8.onnx`` (``variant``: ``model.int8-sym.onnx``)."""
        tag = precision if variant is None else f"{precision}-{variant}"
        return f"model.{tag}{self.suffixes[0]}"

    def exporter(self, precision: str) -> Any:
        """The function that exports this format at ``precision`` (imported now)."""
        return resolve(self.exporters[precision])

    def runner_class(self) -> Any:
        """The default backend's Runner class (imported now); ``UsageError`` for a format porter
        does not run."""
        return BACKENDS[self.backend].runner_class()

    def read_precision(self, path: str | Path) -> str | None:
        """The precision the file at ``path`` carries, read from its content (None: unknown)."""
        return resolve(self.precision_of)(path) if self.precision_of else None


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            name="onnx",
            description="ONNX graph with porter metadata; fp16 as an FP16 graph, int8 as QDQ",
            kind="onnx", suffixes=(".onnx",),
            backends=("onnxruntime", "openvino", "openvino-bf16", "openvino-f16"),
            exporters={"fp32": "port.export.onnx_job:export_onnx_fp32",
                       "fp16": "port.export.onnx_job:export_onnx_fp16",
                       "int8": "port.export.onnx_job:export_onnx_int8"},
            options=ONNX_OPTIONS,
            precision_of="port.export.onnx_files:onnx_precision",
            layerwise="port.evaluate.layerwise_job:onnx_side",
        ),
        Format(
            name="openvino",
            description="OpenVINO IR (.xml + .bin) converted from the ONNX of the same "
                        "precision, weights unchanged, porter's card in the IR",
            kind="openvino", suffixes=(".xml",),
            backends=("openvino", "openvino-bf16", "openvino-f16"),
            exporters=dict.fromkeys(PRECISION_NAMES, "port.export.openvino_job:export_openvino"),
            options=OPENVINO_OPTIONS,
            precision_of="port.export.openvino_ir:ir_precision",
        ),
        Format(
            name="trt",
            description="TensorRT engine built from the ONNX of the same precision (GPU only)",
            kind="engine", suffixes=(".engine", ".plan"), backends=("tensorrt",),
            exporters=dict.fromkeys(PRECISION_NAMES, "port.export.trt_job:export_trt"),
            options=TRT_OPTIONS,
            precision_of="port.engines.trt_sidecar:sidecar_precision",
            layerwise="port.evaluate.layerwise_job:engine_side",
        ),
        Format(
            name="triton",
            description="Triton Inference Server model repository of the run's ONNX files and "
                        "engines at the precision",
            kind="triton", suffixes=(".triton.json",), backends=(),
            exporters=dict.fromkeys(PRECISION_NAMES, "port.export.triton_job:export_triton"),
            options=TRITON_OPTIONS,
        ),
        Format(
            name="checkpoint",
            description="PyTorch checkpoint (weights + model card): the reference, not an export",
            kind="checkpoint", suffixes=(".pt", ".pth"), backends=("torch",),
            precisions=("fp32",), layerwise="port.evaluate.layerwise_job:checkpoint_side",
        ),
    )
}


def resolve(ref: str) -> Any:
    """Import ``"module:attribute"`` and return the attribute."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


_OPTION_TYPES: dict[str, type] = {}


def _options_type(name: str) -> type:
    if name not in _OPTION_TYPES:
        fmt = FORMATS[name]
        _OPTION_TYPES[name] = options_dataclass(f"{name.capitalize()}Options", fmt.options)
    return _OPTION_TYPES[name]


# -- lookups, normalised once ------------------------------------------------------------------
def export_formats() -> list[Format]:
    """The formats ``porter export --to`` makes, in registry order."""
    return [f for f in FORMATS.values() if f.exportable]


def normalize_format(text: str) -> Format:
    """The exportable format ``text`` names (any letter case); ``UsageError`` listing choices."""
    fmt = FORMATS.get(str(text).strip().lower())
    if fmt is None or not fmt.exportable:
        names = ", ".join(f.name for f in export_formats())
        raise UsageError(f"unknown export format '{text}' for --to: choose one of {names}")
    return fmt


def normalize_precision(fmt: Format, text: str | None) -> str:
    """``text`` as a precision ``fmt`` carries (any letter case; None = fp32); else
    ``UsageError`` listing what ``fmt`` supports."""
    if text is None:
        return "fp32"
    precision = str(text).strip().lower()
    if precision not in fmt.precisions:
        raise UsageError(f"--to {fmt.name} does not support precision '{text}': choose one of "
                         f"{', '.join(fmt.precisions)}")
    return precision


def all_options() -> dict[str, Option]:
    """Every export option by name, once (formats share some)."""
    out: dict[str, Option] = {}
    for fmt in export_formats():
        for option in fmt.options:
            out.setdefault(option.name, option)
    return out


def normalize_options(fmt: Format, precision: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The options of ``porter export`` checked against ``fmt``/``precision`` and normalised.

    A flag the format or precision does not use is refused (never ignored); a choice is
    lower-cased and checked. ``None`` values (not given) are dropped.
    """
    known = {o.name: o for o in fmt.options}
    out: dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            continue
        option = known.get(name)
        if option is None:
            users = [f.name for f in export_formats() if any(o.name == name for o in f.options)]
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} does not apply to --to {fmt.name} (only to --to "
                             f"{', '.join(users) or 'nothing'}): remove it")
        if option.precisions is not None and precision not in option.precisions:
            raise UsageError(f"{option.flag} applies to --precision "
                             f"{'/'.join(sorted(option.precisions))}, not {precision}: remove it "
                             "or change --precision")
        out[name] = option.checked(value)
    return out


def option_choices(name: str) -> tuple[str, ...]:
    """The choices of export option ``name`` (for modules that validate their own arguments)."""
    choices = all_options()[name].choices
    if choices is None:
        raise KeyError(f"export option {name} has no fixed choices")
    return choices


def format_for_kind(kind: str) -> Format | None:
    """The format whose artifacts have manifest kind ``kind`` (None when porter has none)."""
    return next((f for f in FORMATS.values() if f.kind == kind), None)


def exported_kinds() -> tuple[str, ...]:
    """Manifest kinds that ``porter export`` makes and porter runs (``evaluate --compare``)."""
    return tuple(dict.fromkeys(f.kind for f in export_formats() if f.runnable))


def suffix_backends() -> dict[str, str]:
    """File suffix -> the backend that runs it by default, for every format porter runs."""
    return {s: f.backend for f in FORMATS.values() if f.runnable for s in f.suffixes}


def backend_formats() -> dict[str, list[Format]]:
    """Backend name -> the formats it runs (every registered backend, in registry order)."""
    return {name: [f for f in FORMATS.values() if name in f.backends] for name in BACKENDS}


def format_for_path(path: str | Path) -> Format:
    """The format porter runs whose suffix ``path`` ends with; ``UsageError`` listing them."""
    suffix = Path(path).suffix.lower()
    runnable = [f for f in FORMATS.values() if f.runnable]
    for fmt in runnable:
        if suffix in fmt.suffixes:
            return fmt
    known = ", ".join(s for f in runnable for s in f.suffixes)
    raise UsageError(f"cannot run '{Path(path).name}': porter runs {known} files")


def option_fields(fmt: Format) -> dict[str, frozenset[str] | None]:
    """Field name -> precisions using it, read back from the options dataclass."""
    return {f.name: f.metadata["precisions"] for f in fields(fmt.options_type)}
