"""The one way porter opens an ONNX Runtime session (runner, parity, FP16 pre-flight, INT8 check).

Keeping it in one place keeps three things consistent everywhere a graph runs: ORT's load errors
become one-line ``ModelError``s, its console chatter is off, and an INT8 graph on the CPU runs on
the kernels :mod:`port.engines.int8_cpu` chose (exact ones where this CPU would saturate), so an
export-time check and ``porter evaluate`` measure the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from port.ground.errors import ModelError, first_line

CPU_ONLY = ("CPUExecutionProvider",)


def create_session(
    model: str | Path | bytes,
    *,
    what: str,
    providers: Sequence[Any] = CPU_ONLY,
    threads: int | None = None,
    optimize: bool = True,
    save_optimized_to: str | Path | None = None,
    config: Mapping[str, str] | None = None,
    hint: str = "re-export it with a supported opset",
) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``model`` (a path or serialised bytes).

    ``optimize=False`` keeps every node as written (tensor-by-tensor checks need that);
    ``config`` holds session config entries (e.g. ``Int8Kernels.session_config()``);
    ``what`` names the model in errors and ``hint`` says what to do when ORT cannot load it.
    """
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: provider fallbacks are reported by the caller
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if save_optimized_to is not None:
        options.optimized_model_filepath = str(save_optimized_to)
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    source = str(model) if isinstance(model, str | Path) else bytes(model)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=list(providers))
    except ort_errors.InvalidProtobuf:
        raise ModelError(f"{what} is not a valid ONNX model (truncated?): re-export it") from None
    except (ort_errors.InvalidArgument, ort_errors.InvalidGraph, ort_errors.NoModel,
            ort_errors.NotImplemented, ort_errors.Fail, ort_errors.RuntimeException) as exc:
        why = first_line(exc)
        if "No graph was found" in why or "Protobuf parsing failed" in why:
            raise ModelError(f"{what} is not a valid ONNX model (truncated?): re-export it"
                             ) from None
        raise ModelError(f"ONNX Runtime cannot load {what} ({why}): {hint}") from None
