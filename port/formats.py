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

from port.errors import UsageError


# -- precisions -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    """One numeric precision an artifact can carry, and the default gate it must pass."""

    name: str
    description: str
    # The default accuracy gate (port.evaluate.gates.PrecisionGate limits; None = unchecked).
    # fp32 must compute the same function; fp16/int8 keep a fraction of the reference top-1,
    # MLPerf Inference's convention (99.9% "high accuracy", 99% for quantised models).
    gate: Mapping[str, float | None]


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "32-bit float: the same function as the reference",
                  gate={"min_agreement": 0.999, "max_top1_drop_pp": 0.1}),
        Precision("fp16", "16-bit float graph with FP32 inputs/outputs",
                  gate={"min_top1_ratio": 0.999}),
        Precision("int8", "8-bit integer (explicit QuantizeLinear/DequantizeLinear)",
                  gate={"min_top1_ratio": 0.99}),
    )
}
PRECISION_NAMES: tuple[str, ...] = tuple(PRECISIONS)


# -- export options (flags) -------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One ``porter export`` flag: its type, help, choices and the precisions that use it."""

    name: str  # Python name; the flag is --name-with-dashes
    type: Any  # int | float | str | bool | Path | list[str] (comma-separated on the CLI)
    help: str
    precisions: frozenset[str] | None = None  # None: every precision of the format
    choices: tuple[str, ...] | None = None  # normalised to lower case at the CLI boundary

    @property
    def flag(self) -> str:
        """The command-line spelling, e.g. ``--calib-images``."""
        return "--" + self.name.replace("_", "-")


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


# -- formats ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Format:
    """One artifact format: how it is named, made, recognised and run."""

    name: str  # what the user types after --to; also the artifact id prefix
    description: str  # one line for --help and doctor
    kind: str  # manifest artifact kind
    suffixes: tuple[str, ...]  # file suffixes, lower case; the first is what porter writes
    backend: str  # the runner's backend name (report rows, engines.load)
    # "module:Class" of the Runner; None for a format porter makes but does not run itself (a
    # Triton model repository): evaluate, engines.load and the suffix map leave it out.
    runner: str | None
    # Python modules the runner needs beyond porter's dependencies, and what to do without them.
    needs: tuple[tuple[str, str], ...] = ()
    hardware: str | None = None  # "cuda-gpu" when it only runs on an NVIDIA GPU
    precisions: tuple[str, ...] = PRECISION_NAMES
    # precision -> "module:function" making it (export stage level); empty: not exportable.
    exporters: Mapping[str, str] = field(default_factory=dict)
    options: tuple[Option, ...] = ()
    # "module:function" reading the precision a file really carries (the record's proof).
    precision_of: str | None = None

    @property
    def exportable(self) -> bool:
        """Whether ``porter export --to NAME`` makes this format."""
        return bool(self.exporters)

    @property
    def runnable(self) -> bool:
        """Whether porter runs this format's artifacts (``evaluate``, ``engines.load``)."""
        return self.runner is not None

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
        """The Runner class (imported now); ``UsageError`` for a format porter does not run."""
        if self.runner is None:
            raise UsageError(f"porter does not run --to {self.name} artifacts ({self.description})")
        return resolve(self.runner)

    def read_precision(self, path: str | Path) -> str | None:
        """The precision the file at ``path`` carries, read from its content (None: unknown)."""
        return resolve(self.precision_of)(path) if self.precision_of else None


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            name="onnx",
            description="ONNX graph with porter metadata; fp16 as an FP16 graph, int8 as QDQ",
            kind="onnx", suffixes=(".onnx",), backend="onnxruntime",
            runner="port.engines.onnxrt:OnnxRuntimeRunner",
            exporters={"fp32": "port.export.onnx_job:export_onnx_fp32",
                       "fp16": "port.export.onnx_job:export_onnx_fp16",
                       "int8": "port.export.onnx_job:export_onnx_int8"},
            options=ONNX_OPTIONS,
            precision_of="port.export.onnx_files:onnx_precision",
        ),
        Format(
            name="trt",
            description="TensorRT engine built from the ONNX of the same precision (GPU only)",
            kind="engine", suffixes=(".engine", ".plan"), backend="tensorrt",
            runner="port.engines.tensorrt:TensorRTRunner",
            needs=(("tensorrt", "install TensorRT (see README, GPU set-up) or evaluate the "
                                ".onnx instead"),
                   ("pycuda.driver", "install pycuda (see README, GPU set-up) or evaluate the "
                                     ".onnx instead")),
            hardware="cuda-gpu",
            exporters=dict.fromkeys(PRECISION_NAMES, "port.export.trt_job:export_trt"),
            options=TRT_OPTIONS,
            precision_of="port.engines.trt_sidecar:sidecar_precision",
        ),
        Format(
            name="triton",
            description="Triton Inference Server model repository of the run's ONNX files and "
                        "engines at the precision",
            kind="triton", suffixes=(".triton.json",), backend="triton", runner=None,
            exporters=dict.fromkeys(PRECISION_NAMES, "port.export.triton_job:export_triton"),
            options=TRITON_OPTIONS,
        ),
        Format(
            name="checkpoint",
            description="PyTorch checkpoint (weights + model card): the reference, not an export",
            kind="checkpoint", suffixes=(".pt", ".pth"), backend="torch",
            runner="port.engines.torch_runner:TorchRunner",
            precisions=("fp32",),
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
        if option.choices is not None:
            value = str(value).strip().lower()
            if value not in option.choices:
                raise UsageError(f"{option.flag} {given[name]} is not known: choose one of "
                                 f"{', '.join(option.choices)}")
        out[name] = value
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
    """File suffix -> runner backend name, for every format porter runs (``engines.load``)."""
    return {s: f.backend for f in FORMATS.values() if f.runnable for s in f.suffixes}


def backend_formats() -> dict[str, Format]:
    """Runner backend name -> its format (formats porter runs)."""
    return {f.backend: f for f in FORMATS.values() if f.runnable}


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
