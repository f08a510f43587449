"""ONNX Runtime runner (Polygraphy's ``backend/onnxrt/runner.py`` shape).

The loader is a ``.onnx`` path or a zero-argument callable returning the model as bytes, a path,
or an ``onnx.ModelProto``. Execution providers are either given explicitly or picked from what
this onnxruntime build offers, best first: TensorRT (with its engine cache in a directory next to
the model, so the slow engine build happens once), CUDA, CPU. :attr:`device` names the provider
that actually runs the graph (ORT silently falls back when a provider fails to initialise).
``onnxruntime`` is imported inside :meth:`activate`, never at package import.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from port.engines.base import Loader, Runner, TensorMeta
from port.errors import BackendUnavailable, ModelError

ProviderSpec = str | tuple[str, dict[str, Any]]

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
AUTO_ORDER = (TRT_EP, CUDA_EP, CPU_EP)  # fastest first; the CPU always works

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
    ORT use every core).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        loader: Loader,
        providers: Sequence[ProviderSpec] | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__(loader)
        self.providers = list(providers) if providers is not None else None
        self.threads = threads
        self._session: Any = None
        self._inputs: list[TensorMeta] = []
        self._outputs: list[str] = []
        self._device: str | None = None

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

    def output_names(self) -> list[str]:
        """The session's output names, in graph order."""
        self._require_session()
        return list(self._outputs)

    def metadata(self) -> dict[str, str]:
        """The model's ``metadata_props`` (porter writes its ModelCard there)."""
        return dict(self._require_session().get_modelmeta().custom_metadata_map)

    # -- lifecycle -------------------------------------------------------------------------
    def _activate(self) -> None:
        import onnxruntime as ort

        model, path = self._resolve_loader()
        what = str(path) if path is not None else "the in-memory ONNX model"
        providers = self._pick_providers(ort, path)
        options = ort.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = int(self.threads)
        options.log_severity_level = 3  # errors only: provider fallbacks are reported via device
        session = _create_session(ort, model, options, providers, what)
        self._inputs = [_tensor_meta(i, what) for i in session.get_inputs()]
        self._outputs = [o.name for o in session.get_outputs()]
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


def _create_session(
    ort: Any, model: str | bytes, options: Any, providers: list[ProviderSpec], what: str
) -> Any:
    """``InferenceSession``, with ORT's load failures turned into one-line ``ModelError``s."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    try:
        return ort.InferenceSession(model, sess_options=options, providers=providers)
    except ort_errors.InvalidProtobuf:
        raise ModelError(f"{what} is not a valid ONNX model (truncated?): re-export it") from None
    except (ort_errors.InvalidArgument, ort_errors.InvalidGraph, ort_errors.NoModel,
            ort_errors.NotImplemented, ort_errors.Fail) as exc:
        why = _one_line(exc)
        if "No graph was found" in why or "Protobuf parsing failed" in why:
            raise ModelError(
                f"{what} is not a valid ONNX model (truncated?): re-export it"
            ) from None
        raise ModelError(
            f"ONNX Runtime cannot load {what} ({why}): re-export it with a supported opset"
        ) from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text.replace("[ONNXRuntimeError] : ", "")
    return text[:200]


def _tensor_meta(arg: Any, what: str) -> TensorMeta:
    """TensorMeta of an ORT NodeArg; a symbolic/unknown/non-positive dim is dynamic (None)."""
    dtype = _ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise ModelError(
            f"{what}: input '{arg.name}' has type {arg.type}, which porter cannot feed: "
            "re-export with float32 inputs"
        )
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in (arg.shape or ()))
    return TensorMeta(arg.name, dtype, shape)
