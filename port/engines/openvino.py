"""OpenVINO runner: porter's second runtime, for ``.onnx`` graphs and OpenVINO IR (``.xml``).

The loader is a ``.onnx`` or ``.xml`` path (or a zero-argument callable returning one). The
model is compiled once in :meth:`activate` with one InferRequest, reused by every
:meth:`infer`.

Why the inference precision is always set: OpenVINO's CPU plugin computes an FP32 model in
bfloat16 by default on CPUs with AVX512_BF16 or AMX (max |logit difference| 0.02 against 4e-6
with the f32 hint on porter's test machine), and asks nobody. So ``INFERENCE_PRECISION_HINT``
is always passed, and what the compiled model really does is read back: the hint it settled on
(a device without bf16/f16 falls back; on a CPU without AVX512_FP16, f16 becomes bf16) and the
precision each convolution and matrix product ran in, from the compiled model's runtime graph
(:meth:`details`).

``openvino`` is imported inside :meth:`activate` (and :func:`openvino_module`), never at
package import, so ``porter --help`` stays light.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np

from port.engines.base import Loader, Runner, TensorMeta
from port.ground.errors import BackendUnavailable, ModelError, UsageError, first_line

INFERENCE_PRECISIONS = ("f32", "bf16", "f16")  # OpenVINO's spelling (ov.Type names)
SUFFIXES = (".onnx", ".xml")
INSTALL_FIX = "install porter's openvino extra: pip install 'porter[openvino]'"
# Where porter keeps its card in an IR's rt_info (port.export.openvino_ir writes it), and where
# OpenVINO's ONNX frontend keeps a source graph's metadata_props (read_model and convert_model
# copy them there; save_model writes them into the IR too).
RT_INFO_PORTER = "porter"
RT_INFO_FRAMEWORK = "framework"
# Virtual devices that name no hardware themselves (they pick or split across real ones).
_VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")
# Runtime-graph layer types that carry the arithmetic (and so the accuracy): their precision is
# the compute precision. Reorders, reshapes and constants only move data.
_COMPUTE_LAYERS = frozenset({"Convolution", "GroupConvolution", "Deconvolution",
                             "FullyConnected", "MatMul", "Gemm"})
# runtimePrecision spellings -> porter's; u8 and i8 are both integer (int8) kernels.
_RUNTIME_PRECISIONS = {"f32": "f32", "bf16": "bf16", "f16": "f16", "u8": "int8", "i8": "int8"}

# OpenVINO element type names -> numpy dtypes porter can feed or read.
_OV_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(dt)
    for name, dt in {
        "f32": np.float32, "f16": np.float16, "f64": np.float64,
        "i8": np.int8, "i16": np.int16, "i32": np.int32, "i64": np.int64,
        "u8": np.uint8, "u16": np.uint16, "u32": np.uint32, "u64": np.uint64,
        "boolean": np.bool_,
    }.items()
}


def openvino_module() -> Any:
    """``import openvino``, or ``BackendUnavailable`` with the fix when it is not installed."""
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailable(f"OpenVINO is not installed ({first_line(exc)}): "
                                 f"{INSTALL_FIX}") from None
    return openvino


def ov_error(exc: BaseException) -> str:
    """The informative line of an OpenVINO error, at most 200 characters.

    OpenVINO's messages start with C++ source locations ("Exception from src/...cpp:84:",
    "Check '...' failed at ...") and end with what went wrong ("Model can't be parsed",
    "Incorrect weights in bin file!"); porter quotes the last line that is not a location.
    """
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    said = [line for line in lines if line and not line.startswith(("Exception from", "Check '"))]
    return first_line(RuntimeError(said[-1])) if said else first_line(exc)


def check_precision(value: str) -> str:
    """``value`` as one of :data:`INFERENCE_PRECISIONS` (any case), else ``UsageError``."""
    text = str(value).strip().lower()
    if text not in INFERENCE_PRECISIONS:
        raise UsageError(f"unknown OpenVINO inference precision {value!r}: choose one of "
                         f"{', '.join(INFERENCE_PRECISIONS)}")
    return text


def model_path(source: Any, what: str = "OpenVINO model") -> Path:
    """``source`` as the path of an existing ``.onnx`` or ``.xml`` (with its ``.bin``)."""
    path = Path(source)
    if path.suffix.lower() not in SUFFIXES:
        raise ModelError(f"{what} {path.name} is not an .onnx or OpenVINO IR .xml file: pass "
                         "one of those (porter export --to onnx)")
    if not path.is_file():
        raise ModelError(f"{what} {path} not found: export it first (porter export --to onnx)")
    if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
        raise ModelError(f"{what} {path}: its weights file {path.with_suffix('.bin').name} is "
                         "missing: keep the .xml and .bin together, or convert the ONNX again")
    return path


class OpenVinoRunner(Runner):
    """Runs an ONNX graph or an OpenVINO IR with OpenVINO.

    ``device``: the OpenVINO device to compile for (``CPU``, ``GPU``, ``NPU``, ``AUTO``).
    ``inference_precision``: ``f32`` | ``bf16`` | ``f16``, always passed as
    ``INFERENCE_PRECISION_HINT`` (OpenVINO's own default on a bf16-capable CPU is bf16); what the
    device really did is in :meth:`details`. ``threads``: ``INFERENCE_NUM_THREADS`` (``None``:
    OpenVINO's choice, every core).
    """

    backend = "openvino"

    def __init__(
        self,
        loader: Loader,
        *,
        device: str = "CPU",
        inference_precision: str = "f32",
        threads: int | None = None,
    ) -> None:
        super().__init__(loader)
        self.requested_device = str(device).strip().upper()
        if not self.requested_device:
            raise UsageError("empty OpenVINO device name: pass e.g. CPU, GPU or AUTO")
        self.inference_precision = check_precision(inference_precision)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise UsageError(f"OpenVINO threads must be a positive integer, got {threads!r}: "
                             "pass e.g. 1, or leave it out to use every core")
        self.threads = threads
        self._core: Any = None
        self._compiled: Any = None
        self._request: Any = None
        self._path: Path | None = None
        self._inputs: list[TensorMeta] = []
        self._output_metas: list[TensorMeta] = []
        self._outputs: list[str] = []
        self._device: str | None = None
        self._hint: str | None = None  # the INFERENCE_PRECISION_HINT the compiled model reports
        self._layers: dict[str, int] = {}  # compute layers per runtime precision
        self._rt_metadata: dict[str, str] = {}
        self._version: str | None = None

    @property
    def timing_mode(self) -> str:  # type: ignore[override]
        """infer() is synchronous; on a device other than the CPU it also copies the tensors."""
        if self._device is not None and self._device != "CPU":
            return ("host to host, synchronous: OpenVINO copies inputs to the device and "
                    "outputs back inside each infer")
        return Runner.timing_mode

    @property
    def device(self) -> str:
        """The OpenVINO device(s) that run the model (``EXECUTION_DEVICES``), e.g. ``CPU``."""
        if self._device is None:
            raise RuntimeError("OpenVinoRunner.device is known only after activate()")
        return self._device

    def input_metadata(self) -> list[TensorMeta]:
        """The compiled model's inputs; dynamic dimensions are ``None``."""
        self._require_compiled()
        return list(self._inputs)

    def output_metadata(self) -> list[TensorMeta]:
        """The compiled model's outputs, in order; dynamic dimensions are ``None``."""
        self._require_compiled()
        return list(self._output_metas)

    def metadata(self) -> dict[str, str]:
        """The ``porter.*`` strings the model carries in its rt_info: the section porter's IR
        converter writes, else the ONNX metadata_props OpenVINO's frontend kept."""
        self._require_compiled()
        return dict(self._rt_metadata)

    # -- lifecycle -------------------------------------------------------------------------
    def _activate(self) -> None:
        ov = openvino_module()
        source = self.loader() if callable(self.loader) else self.loader
        path = model_path(source)
        core = ov.Core()
        device = self._check_device(core)
        model = read_model(core, path)
        config = {
            "INFERENCE_PRECISION_HINT": self.inference_precision,
            # porter times one synchronous request at a time: LATENCY (with one stream) gives
            # that request every core, where THROUGHPUT would split them into streams that
            # only parallel requests use; NUM_STREAMS=1 pins it so every machine does the same.
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
        }
        if self.threads is not None:
            config["INFERENCE_NUM_THREADS"] = str(self.threads)
        try:
            compiled = core.compile_model(model, device, config)
        except RuntimeError as exc:
            # The file read fine: the device cannot run this graph (e.g. the CPU plugin has no
            # f64 kernels). That is this backend's limit, not a broken model: evaluate shows a
            # skipped row with the reason and the other backends still run it.
            raise BackendUnavailable(f"OpenVINO cannot compile {path.name} for {device} "
                                     f"({ov_error(exc)}): run it on ONNX Runtime (--backends "
                                     "onnxruntime), or try another OpenVINO device") from None
        what = str(path)
        self._inputs = [_tensor_meta(port, what, "input") for port in compiled.inputs]
        self._output_metas = [_tensor_meta(port, what, "output") for port in compiled.outputs]
        self._outputs = [m.name for m in self._output_metas]
        self._rt_metadata = _porter_rt_info(model)
        self._hint = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if self._hint and self._hint != self.inference_precision:
            # The device settled on another precision (f16 on a CPU without AVX512_FP16 becomes
            # bf16): a row named for f16 would report bf16 arithmetic under the wrong name.
            raise BackendUnavailable(
                f"OpenVINO's {device} cannot compute in {self.inference_precision} (it would "
                f"run {path.name} in {self._hint}; its capabilities: "
                f"{', '.join(_capabilities(core, device)) or 'unknown'}): use the backend for "
                f"{self._hint}, or a device with {self.inference_precision} arithmetic")
        self._layers = _compute_layers(compiled)
        self._device = ",".join(compiled.get_property("EXECUTION_DEVICES")) or device
        self._version = ov.__version__
        self._path = path
        self._core, self._compiled = core, compiled
        self._request = compiled.create_infer_request()  # one request, reused by every infer

    def _check_device(self, core: Any) -> str:
        """The requested device if this OpenVINO has it, else ``BackendUnavailable``."""
        device = self.requested_device
        base = device.split(":")[0].split(".")[0]
        available = list(core.available_devices)
        if base in _VIRTUAL_DEVICES or device in available or base in {
                d.split(".")[0] for d in available}:
            return device
        raise BackendUnavailable(f"OpenVINO device {device} is not available here (OpenVINO "
                                 f"sees {', '.join(available) or 'no device'}): choose one of "
                                 "those")

    def _deactivate(self) -> None:
        # OpenVINO frees the compiled model (and device memory) with its last reference.
        self._request = self._compiled = self._core = None

    # -- inference -------------------------------------------------------------------------
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # share_inputs: infer() is synchronous, so OpenVINO may read the caller's arrays in
        # place (no copy in the timed call); share_outputs=False: the request's output tensors
        # are overwritten by the next infer, so each call returns arrays of its own.
        result = self._request.infer(feed, share_inputs=True, share_outputs=False)
        return dict(zip(self._outputs, result.to_tuple(), strict=True))

    # -- what it really did --------------------------------------------------------------------
    def compute_precision(self) -> str:
        """The precision the convolutions and matrix products ran in: ``f32``, ``bf16``,
        ``f16``, or ``int8+<float>`` for an INT8 (Q/DQ, FakeQuantize) model, whose int8 kernels
        run with the rest at the float precision (the hint where no compute layer is float).
        Valid after activate, and still after deactivate (evaluate reads it from a closed row)."""
        self._require_activated()
        seen = sorted(self._layers, key=lambda p: -self._layers[p])
        floats = [p for p in seen if p != "int8"] or [self._hint or self.inference_precision]
        if "int8" in seen:
            return "+".join(["int8", *floats])
        return "+".join(floats)

    def details(self) -> dict[str, Any]:
        """``compute_precision`` and ``openvino``: device, requested and effective
        inference precision hint, compute layers per runtime precision, version (kept after
        deactivate)."""
        self._require_activated()
        info: dict[str, Any] = {
            "device": self._device,
            "inference_precision_hint": self._hint,
            "requested_precision": self.inference_precision,
            "compute_layers": dict(self._layers),
            "version": self._version,
        }
        if self._hint is not None and self._hint != self.inference_precision:
            info["note"] = (f"asked for {self.inference_precision}, {self._device} computes in "
                            f"{self._hint} (the device has no {self.inference_precision} "
                            "arithmetic)")
        return {"compute_precision": self.compute_precision(), "openvino": info}

    def model_card(self) -> Any:
        """The porter :class:`~port.models.card.ModelCard` the artifact carries, or ``None``.

        ``.onnx``: the graph's ``metadata_props`` (porter's codec); ``.xml``: the ``porter``
        section of the IR's rt_info that :func:`port.export.openvino_ir.convert_to_ir` writes
        (else the ONNX metadata OpenVINO copied into ``framework``). Valid after activate.
        """
        from port.models.card_codec import card_from_metadata, read_card

        path = self._path
        if path is None:
            raise RuntimeError("OpenVinoRunner.model_card() needs activate() first")
        if path.suffix.lower() == ".onnx":
            return read_card(path)
        return card_from_metadata(self._rt_metadata, source=str(path))

    def _require_activated(self) -> None:
        if self._path is None:
            raise RuntimeError("OpenVinoRunner needs activate() first")

    def _require_compiled(self) -> Any:
        if self._compiled is None:
            raise RuntimeError("OpenVinoRunner needs activate() first")
        return self._compiled


def read_model(core: Any, path: Path, fix: str = "re-export it (porter export --to onnx)") -> Any:
    """The model at ``path``; a ``.onnx`` through OpenVINO's ONNX frontend alone. An unreadable
    file is a one-line ``ModelError`` ending in ``fix``.

    ``Core.read_model`` tries every frontend on a file it cannot parse, and the TensorFlow one
    prints its own parse errors to stderr (a corrupt .onnx gave two "text_format.cc" lines
    before porter's), so the one-line error contract holds only with the ONNX frontend named.
    """
    from openvino.frontend import FrontEndManager, GeneralFailure

    try:
        if path.suffix.lower() == ".onnx":
            frontend = FrontEndManager().load_by_framework("onnx")
            return frontend.convert(frontend.load(str(path)))
        return core.read_model(str(path))
    except (RuntimeError, GeneralFailure) as exc:  # GeneralFailure is not a RuntimeError
        raise ModelError(f"OpenVINO cannot read {path} ({ov_error(exc)}): {fix}") from None


def _capabilities(core: Any, device: str) -> list[str]:
    """The device's OPTIMIZATION_CAPABILITIES (FP32, BF16, FP16, INT8, ...), [] if unknown."""
    try:
        return [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]
    except RuntimeError:  # a virtual device (AUTO) has none of its own
        return []


def _type_name(value: Any) -> str:
    """An ``ov.Type`` (or its text) as OpenVINO's short name: ``f32``, ``bf16``, ``f16``."""
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name, name)


def _compute_layers(compiled: Any) -> dict[str, int]:
    """How many compute layers of the compiled model ran at each precision (porter's names).

    Read from the runtime graph (``get_runtime_model``: each executed layer's ``layerType`` and
    ``runtimePrecision``), the one place OpenVINO says what it really ran; empty where a device
    does not expose it.
    """
    try:
        runtime = compiled.get_runtime_model()
    except RuntimeError:
        return {}
    counts: collections.Counter[str] = collections.Counter()
    for op in runtime.get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" not in info or "runtimePrecision" not in info:
            continue
        if info["layerType"].astype(str) in _COMPUTE_LAYERS:
            precision = info["runtimePrecision"].astype(str).lower()
            counts[_RUNTIME_PRECISIONS.get(precision, precision)] += 1
    return dict(counts)


def _porter_rt_info(model: Any) -> dict[str, str]:
    """The ``porter.*`` strings in ``model``'s rt_info: the ``porter`` section when there is
    one, else the ``porter.*`` keys of the ``framework`` section (an ONNX's metadata_props)."""
    rt = model.get_rt_info()
    if RT_INFO_PORTER in rt:
        return {key: value.astype(str) for key, value in rt[RT_INFO_PORTER].items()}
    if RT_INFO_FRAMEWORK in rt:
        section = rt[RT_INFO_FRAMEWORK]
        if isinstance(section, dict):
            return {key: value.astype(str) for key, value in section.items()
                    if key.startswith("porter.")}
    return {}


def _tensor_meta(port: Any, what: str, role: str) -> TensorMeta:
    """TensorMeta of a compiled model's input or output port; a dynamic dimension is None."""
    try:
        name = port.get_any_name()
    except RuntimeError:
        raise ModelError(f"{what}: an {role} has no tensor name: re-export the model with named "
                         f"{role}s") from None
    type_name = port.get_element_type().get_type_name()
    dtype = _OV_DTYPES.get(type_name)
    if dtype is None:
        raise ModelError(f"{what}: {role} '{name}' has element type {type_name}, which porter "
                         f"cannot {'feed' if role == 'input' else 'read'}: re-export with float32 "
                         f"{role}s")
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        raise ModelError(f"{what}: {role} '{name}' has no fixed rank: re-export with a ranked "
                         f"{role} (e.g. NCHW)")
    dims = tuple(d.get_length() if d.is_static else None for d in shape)
    return TensorMeta(name, dtype, dims)
