"""ONNX Runtime runner (Polygraphy's ``backend/onnxrt/runner.py`` shape).

The loader is a ``.onnx`` path or a zero-argument callable returning the model as bytes, a path,
or an ``onnx.ModelProto``. Execution providers are either given explicitly or picked from what
this onnxruntime build offers, best first: TensorRT (with its engine cache in a directory next to
the model, so the slow engine build happens once), CUDA, CPU. :attr:`device` names the provider
that actually runs the graph (ORT silently falls back when a provider fails to initialise).
``onnxruntime`` is imported inside :meth:`activate`, never at package import.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from port.engines.base import Loader, Runner, TensorMeta
from port.engines.int8_cpu import Int8Kernels
from port.engines.ort_session import create_session
from port.ground.errors import BackendUnavailable, ModelError, UsageError

ProviderSpec = str | tuple[str, dict[str, Any]]

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
AUTO_ORDER = (TRT_EP, CUDA_EP, CPU_EP)  # fastest first; the CPU always works
INT8_GRAPH_FORMS = ("cpu", "file")  # how an INT8 graph runs on the CPU provider

# ORT type strings (NodeArg.type) -> numpy dtypes porter can feed.
_ORT_DTYPES: dict[str, np.dtype] = {
    f"tensor({name})": np.dtype(dt)
    for name, dt in {
        "float": np.float32, "float16": np.float16, "double": np.float64,
        "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
        "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
        "bool": np.bool_,
    }.items()
}


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX model with ONNX Runtime.

    ``providers``: names or ``(name, options)`` pairs, in preference order; ``None`` picks
    TensorRT > CUDA > CPU among the available ones. ``threads``: intra-op threads (``None`` lets
    ORT use every core). ``int8_kernels``: for an INT8 graph on the CPU provider, ``auto`` runs
    ONNX Runtime's exact U8U8 kernels where this CPU's default ones saturate (no VNNI) and the
    graph's weights can make them; ``exact``/``fast`` force a choice (see
    :mod:`port.engines.int8_cpu`). ``int8_graph``: ``cpu`` (default) runs such a graph in its
    CPU form, the Q/DQ pairs of ReLU outputs as uint8 so ONNX Runtime fuses them (the file is not
    changed; :mod:`port.engines.int8_cpu_graph`), ``file`` as written. What ran and why is in
    :meth:`details`.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        loader: Loader,
        providers: Sequence[ProviderSpec] | None = None,
        threads: int | None = None,
        int8_kernels: str = "auto",
        int8_graph: str = "cpu",
    ) -> None:
        super().__init__(loader)
        self.providers = list(providers) if providers is not None else None
        self.threads = threads
        self.int8_kernels = int8_kernels
        # "cpu": an INT8 graph on the CPU provider runs in its CPU form (port.engines.
        # int8_cpu_graph: ReLU-side Q/DQ pairs as uint8, what ORT fuses); "file": as on disk.
        if int8_graph not in INT8_GRAPH_FORMS:
            raise UsageError(f"unknown INT8 CPU graph form {int8_graph!r}: choose one of "
                             f"{', '.join(INT8_GRAPH_FORMS)}")
        self.int8_graph = int8_graph
        self.int8: Int8Kernels | None = None  # the choice made for an INT8 graph on the CPU
        self._session: Any = None
        self._inputs: list[TensorMeta] = []
        self._output_metas: list[TensorMeta] = []
        self._outputs: list[str] = []
        self._device: str | None = None

    @property
    def timing_mode(self) -> str:  # type: ignore[override]
        """ORT's run() is synchronous; on a GPU provider it also copies inputs/outputs."""
        if self._device is not None and self._device != CPU_EP:
            return ("host to host, synchronous: ONNX Runtime copies inputs to the device and "
                    "outputs back inside each run")
        return Runner.timing_mode

    @property
    def device(self) -> str:
        """The execution provider that runs the graph (first of the session's providers)."""
        if self._device is None:
            raise RuntimeError("OnnxRuntimeRunner.device is known only after activate()")
        return self._device

    def input_metadata(self) -> list[TensorMeta]:
        """The session's inputs; symbolic or unknown dimensions are ``None``."""
        self._require_session()
        return list(self._inputs)

    def output_metadata(self) -> list[TensorMeta]:
        """The session's outputs, in graph order; symbolic or unknown dimensions are ``None``."""
        self._require_session()
        return list(self._output_metas)

    def output_names(self) -> list[str]:
        """The session's output names, in graph order."""
        return [m.name for m in self.output_metadata()]

    def metadata(self) -> dict[str, str]:
        """The model's ``metadata_props`` (porter writes its ModelCard there)."""
        return dict(self._require_session().get_modelmeta().custom_metadata_map)

    def model_card(self) -> Any:
        """The card porter wrote into the graph's ``metadata_props`` (None: a foreign graph)."""
        from port.models.card_codec import card_from_metadata

        return card_from_metadata(self.metadata(), source=self.name)

    # -- lifecycle -------------------------------------------------------------------------
    def _activate(self) -> None:
        import onnxruntime as ort

        model, path = self._resolve_loader()
        what = str(path) if path is not None else "the in-memory ONNX model"
        providers = self._pick_providers(ort, path)
        on_cpu = CPU_EP in _names(providers)
        self.int8 = _int8_choice(self.int8_kernels, model, path) if on_cpu else None
        # Only where the CPU runs the graph: TensorRT/CUDA providers get the file's own graph.
        if self.int8 is not None and self.int8_graph == "cpu" and _names(providers)[0] == CPU_EP:
            from port.engines.int8_cpu_graph import cpu_form

            model, graph = cpu_form(model, what)
            self.int8 = dataclasses.replace(self.int8, graph=graph)
        elif self.int8 is not None and _names(providers)[0] == CPU_EP:
            self.int8 = dataclasses.replace(self.int8, graph={
                "graph": "as exported", "why": "ran the INT8 file as written, not its CPU form"})
        session = create_session(model, what=what, providers=providers, threads=self.threads,
                                 config=self.int8.session_config() if self.int8 else None)
        self._inputs = [_tensor_meta(i, what) for i in session.get_inputs()]
        self._output_metas = [_tensor_meta(o, what, role="output") for o in session.get_outputs()]
        self._outputs = [m.name for m in self._output_metas]
        self._session = session
        self._device = session.get_providers()[0]

    def _resolve_loader(self) -> tuple[str | bytes, Path | None]:
        """The model as a path string or bytes, and its path when there is one."""
        source: Any = self.loader() if callable(self.loader) else self.loader
        if hasattr(source, "SerializeToString"):  # an onnx.ModelProto
            source = source.SerializeToString()
        if isinstance(source, bytes | bytearray | memoryview):
            return bytes(source), None
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            if not path.is_file():
                raise ModelError(
                    f"ONNX model {path} not found: export it first (porter export --to onnx)"
                )
            return str(path), path
        raise TypeError(  # a programming error in the caller
            f"OnnxRuntimeRunner loader must give a path, bytes or ModelProto, got {type(source)}"
        )

    def _pick_providers(self, ort: Any, path: Path | None) -> list[ProviderSpec]:
        available = ort.get_available_providers()
        if self.providers is not None:
            names = [p if isinstance(p, str) else p[0] for p in self.providers]
            absent = [n for n in names if n not in available]
            if absent:
                raise BackendUnavailable(
                    f"ONNX Runtime provider(s) {', '.join(absent)} not available in this "
                    f"onnxruntime build (it has {', '.join(available)}): pick one of those or "
                    "install onnxruntime-gpu"
                )
            return list(self.providers)
        chosen: list[ProviderSpec] = []
        for name in AUTO_ORDER:
            if name not in available:
                continue
            if name == TRT_EP and path is not None:
                # Building a TensorRT engine takes minutes; cache it beside the model, keyed by
                # ORT on the graph, so later sessions reuse it.
                cache = path.parent / f"{path.stem}.ort-trt-cache"
                try:
                    cache.mkdir(exist_ok=True)
                except OSError:  # read-only model dir: still run on TensorRT, just uncached
                    chosen.append(name)
                    continue
                chosen.append((name, {"trt_engine_cache_enable": "True",
                                      "trt_engine_cache_path": str(cache)}))
            else:
                chosen.append(name)
        return chosen

    def details(self) -> dict[str, Any]:
        """``{"int8_cpu": ...}`` for an INT8 graph on the CPU provider (kernels and why)."""
        if self.int8 is None or self._device != CPU_EP:
            return {}
        return {"int8_cpu": self.int8.to_dict()}

    def _deactivate(self) -> None:
        self._session = None  # ORT frees the session (and device memory) with the last reference

    # -- inference -------------------------------------------------------------------------
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(self._outputs, feed)
        return dict(zip(self._outputs, outputs, strict=True))

    def _require_session(self) -> Any:
        if self._session is None:
            raise RuntimeError("OnnxRuntimeRunner needs activate() first")
        return self._session


# op_type strings only an integer-quantized graph holds (protobuf stores them as plain bytes).
_INT8_OPS = (b"QuantizeLinear", b"DequantizeLinear", b"QLinearConv", b"QLinearMatMul",
             b"MatMulInteger", b"ConvInteger")


def _names(providers: Sequence[ProviderSpec]) -> list[str]:
    return [p if isinstance(p, str) else p[0] for p in providers]


def _has_int8_ops(model: str | bytes, path: Path | None) -> bool:
    """Whether the serialised graph names an integer-quantized op. A file is searched through
    a read-only memory map: no copy of a multi-GB model in Python memory, and the pages are the
    ones ONNX Runtime reads next anyway."""
    if path is None:
        assert isinstance(model, bytes)
        return any(op in model for op in _INT8_OPS)
    if path.stat().st_size == 0:
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return any(data.find(op) != -1 for op in _INT8_OPS)


def _int8_choice(requested: str, model: str | bytes, path: Path | None) -> Int8Kernels | None:
    """The INT8 kernel choice for ``model`` on the CPU provider; ``None`` for a float graph.

    The op names are found in the serialised bytes, which costs a scan, not a parse. Whether
    the CPU saturates is measured once per process; the weights' bit width is read from the
    file only where it matters (a CPU whose default kernels saturate).
    """
    from port.engines.int8_cpu import int8_weight_bits, ort_u8s8_saturates, resolve_int8_kernels

    if not _has_int8_ops(model, path):
        return None
    saturates = ort_u8s8_saturates()
    bits = None
    if saturates and path is not None:  # only there do the weights decide anything
        bits = int8_weight_bits(path)
    return resolve_int8_kernels(requested, cpu_saturates=saturates, weight_bits=bits)


def _tensor_meta(arg: Any, what: str, role: str = "input") -> TensorMeta:
    """TensorMeta of an ORT NodeArg; a symbolic/unknown/non-positive dim is dynamic (None)."""
    dtype = _ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise ModelError(
            f"{what}: {role} '{arg.name}' has type {arg.type}, which porter cannot "
            f"{'feed' if role == 'input' else 'read'}: re-export with float32 {role}s"
        )
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in (arg.shape or ()))
    return TensorMeta(arg.name, dtype, shape)
