"""INT8 on ONNX Runtime's CPU provider: does this CPU saturate, and which kernels a graph runs on.

On x86 CPUs without VNNI (SSE4.1, AVX2, AVX-512 without VNNI) ONNX Runtime's default U8S8
kernels add pairs of u8*s8 products in saturating 16-bit lanes (see ``port.ground.cpu``): an
INT8 graph with full-range weights then computes something else than the same file on TensorRT,
on a GPU or on a VNNI CPU. Two remedies exist, both measured in ``tests/engines/test_int8_cpu.py``:

- **exact kernels**: the session option ``session.x64quantprecision=1`` makes ORT rewrite the
  int8 weights to uint8 (``Avx2WeightS8ToU8Transformer``: ``w + 128`` with the zero point moved,
  the same products exactly) and run its U8U8 kernels, which do not saturate. Same file, so the
  row still checks the graph TensorRT builds; slower kernels. ORT applies the option only where
  its U8S8 kernels differ from its U8U8 ones (``MlasPlatformU8S8Overflow``), so porter sets it
  only where it measured saturation.
- **7-bit weights** (``porter export --int8-weights 7bit``, ORT's ``reduce_range``, which writes
  |w| <= 64): every pair sum stays within 2 * 255 * 64 = 32,640 <= 32,767, so the fast kernels
  are exact; the graph loses one bit of weight precision, so it is an ORT-CPU deployment form,
  not the graph meant for TensorRT.

Whether this CPU saturates is *measured*, not guessed from flags: :func:`ort_u8s8_saturates` runs
a one-convolution QDQ graph whose exact answer is known and whose pair sums overflow 16 bits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from port.ground.cpu import cpu_info

# --int8-cpu-kernels choices: auto = exact kernels where this CPU saturates and the graph can.
INT8_KERNEL_MODES = ("auto", "exact", "fast")
PRECISION_CONFIG_KEY = "session.x64quantprecision"  # ORT kOrtSessionOptionsAvx2PrecisionMode
_PROBE_CHANNELS = 64  # input channels of the probe conv: 32 u8*s8 pairs per output
_PROBE_OUT = 8


@dataclass(frozen=True)
class Int8Kernels:
    """How an INT8 graph runs on ONNX Runtime's CPU provider, and why (goes into report rows)."""

    requested: str  # auto | exact | fast
    exact_kernels: bool  # session.x64quantprecision=1 was set
    cpu_saturates: bool  # measured: ORT's default U8S8 kernels saturate on this CPU
    weight_bits: int | None  # 7 or 8 (largest |int8 weight| of the graph), None when unknown
    saturating: bool  # this run's arithmetic can saturate: its accuracy measures the CPU
    kernels: str  # what ran, in words
    why: str  # one sentence for the report
    # Which graph ran: {"graph": "cpu rewrite" | "as exported", "why": ..., counts}
    # (port.engines.int8_cpu_graph); None where the CPU provider did not run it first.
    graph: dict[str, Any] | None = None

    def session_config(self) -> dict[str, str]:
        """ORT session config entries that make this choice."""
        return {PRECISION_CONFIG_KEY: "1"} if self.exact_kernels else {}

    def to_dict(self) -> dict[str, Any]:
        """Plain data for report.json (with the CPU it was decided on)."""
        info = cpu_info()
        return {**asdict(self), "cpu": info["model"], "cpu_int8": info["int8"]}


def resolve_int8_kernels(requested: str = "auto", *, cpu_saturates: bool,
                         weight_bits: int | None = None) -> Int8Kernels:
    """Decide the kernels for an INT8 graph (pure: the inputs are measured elsewhere).

    ``auto`` runs the exact U8U8 kernels exactly when the CPU saturates and the graph's weights
    can make it saturate (8-bit or unknown); ``exact`` always sets the option; ``fast`` never.
    """
    if requested not in INT8_KERNEL_MODES:
        from port.ground.errors import UsageError

        raise UsageError(f"unknown INT8 CPU kernel mode '{requested}': choose one of "
                         f"{', '.join(INT8_KERNEL_MODES)}")
    can_saturate = cpu_saturates and weight_bits != 7
    exact = requested == "exact" or (requested == "auto" and can_saturate)
    saturating = can_saturate and not exact
    if not cpu_saturates:
        kernels = "ORT default int8 kernels" + (" with the U8U8 option" if exact else "")
        why = ("this CPU sums int8 products in 32 bits, so ONNX Runtime's int8 kernels are exact "
               "here")
    elif exact:
        kernels = f"ORT exact U8U8 kernels ({PRECISION_CONFIG_KEY}=1)"
        why = ("this CPU has no VNNI, so ONNX Runtime's default U8S8 kernels saturate; the "
               "exact U8U8 kernels ran the same file, so the row measures the model, not the CPU")
    elif weight_bits == 7:
        kernels = "ORT default U8S8 kernels"
        why = ("7-bit weights keep ONNX Runtime's U8S8 pair sums within 16 bits on this CPU "
               "without VNNI, so the fast kernels are exact for this graph")
    else:
        kernels = "ORT default U8S8 kernels (saturating)"
        why = ("this CPU has no VNNI and --int8-cpu-kernels fast kept ONNX Runtime's U8S8 "
               "kernels, which saturate: accuracy understates what TensorRT or a VNNI CPU "
               "computes from this file, so the row is not gated")
    return Int8Kernels(requested=requested, exact_kernels=exact, cpu_saturates=cpu_saturates,
                       weight_bits=weight_bits, saturating=saturating, kernels=kernels, why=why)


# -- the measurement -------------------------------------------------------------------------
def saturation_probe_model(weight: int = 127) -> bytes:
    """A QDQ graph ``y = Conv(x, w)`` (1x1, 64 -> 8 channels) with every weight = ``weight``.

    With x = 1.0 quantized to 127 (uint8 255 once ORT shifts activations to U8) and w = 127,
    each pair of products is 2 * 255 * 127 = 64,770 before the zero-point correction: beyond
    int16, so saturating kernels visibly lose it. The exact output is ``64 * weight / 127``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inv = np.float32(1.0 / 127.0)

    def scalar(name: str, value: Any, dtype: Any) -> Any:
        return numpy_helper.from_array(np.array(value, dtype=dtype), name)

    inits = [
        scalar("x_scale", inv, np.float32), scalar("x_zero", 0, np.int8),
        numpy_helper.from_array(
            np.full((_PROBE_OUT, _PROBE_CHANNELS, 1, 1), weight, dtype=np.int8), "w_q"),
        scalar("w_scale", inv, np.float32), scalar("w_zero", 0, np.int8),
        scalar("y_scale", 1.0, np.float32), scalar("y_zero", 0, np.int8),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"]),
        helper.make_node("Conv", ["x_dq", "w_dq"], ["y_f"]),
        helper.make_node("QuantizeLinear", ["y_f", "y_scale", "y_zero"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "porter-int8-saturation-probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, _PROBE_CHANNELS, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, _PROBE_OUT, 2, 2])], inits)
    # IR 8 / opset 13: old enough for every ONNX Runtime porter supports.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model).SerializeToString()


def run_probe(weight: int = 127, *, exact_kernels: bool = False) -> float:
    """Largest |error| of the probe graph on ONNX Runtime's CPU provider (0.0 when exact)."""
    from port.engines.ort_session import create_session

    session = create_session(saturation_probe_model(weight), what="the int8 saturation probe",
                             threads=1,
                             config={PRECISION_CONFIG_KEY: "1"} if exact_kernels else None)
    x = np.ones((1, _PROBE_CHANNELS, 2, 2), dtype=np.float32)
    y = session.run(None, {"x": x})[0]
    exact = round(_PROBE_CHANNELS * weight / 127.0)  # the output Q step is 1.0
    return float(np.max(np.abs(y - exact)))


@lru_cache(maxsize=1)
def ort_u8s8_saturates() -> bool:
    """Measured once per process: do ONNX Runtime's default int8 CPU kernels saturate here?"""
    return run_probe(127) > 0.5  # one output quantization step: not rounding, a wrong sum


def int8_weight_bits(model_path: str | Path) -> int | None:
    """7 or 8: the width of the graph's int8 weights (largest |q| of the int8 initializers that
    feed a DequantizeLinear). 7 means |q| <= 64, ORT's ``reduce_range`` form, the widest for
    which 2 * 255 * |q| fits a signed 16-bit lane. ``None`` when it has none (not a QDQ INT8
    graph) or when the ``onnx`` package is absent (an app's light install: the caller then
    assumes 8 bits)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return None

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    largest = None
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        tensor = inits[node.input[0]]
        if tensor.data_type != onnx.TensorProto.INT8 or tensor.data_location == 1:
            continue  # activations' Q params, or weights stored outside the file
        values = numpy_helper.to_array(tensor).astype(np.int16)
        if values.size:
            peak = int(np.max(np.abs(values)))
            largest = peak if largest is None else max(largest, peak)
    if largest is None:
        return None
    return 7 if largest <= 64 else 8
