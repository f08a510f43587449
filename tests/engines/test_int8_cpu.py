"""INT8 on ONNX Runtime's CPU provider: the saturation probe, the kernel choice, the runner.

These tests depend on the instruction set. Each one states the expectation for the CPU it runs on
(read from CPUID by ``port.ground.cpu``): x86 without VNNI saturates, x86 with VNNI/AMX and ARM
do not.
Nothing is skipped: a machine of either kind checks its own branch, and the two branches have
been run on a VNNI CPU and under an emulated Haswell (qemu-x86_64 -cpu Haswell).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from port.engines.int8_cpu import (
    PRECISION_CONFIG_KEY,
    int8_weight_bits,
    ort_u8s8_saturates,
    resolve_int8_kernels,
    run_probe,
    saturation_probe_model,
)
from port.engines.onnxrt import OnnxRuntimeRunner
from port.ground.cpu import cpu_info, describe, int8_verdict
from port.ground.errors import UsageError

SATURATES = bool(cpu_info()["int8_u8s8_saturates"])


def test_measured_saturation_matches_the_cpu_flags() -> None:
    # The flags predict what ONNX Runtime's kernels do; the probe measures it. They must agree,
    # or porter would record one thing about the CPU and run another.
    assert ort_u8s8_saturates() == SATURATES, describe()


@pytest.mark.parametrize(("weight", "exact"), [(127, False), (127, True), (64, False), (64, True)])
def test_probe_graph_with_full_and_7bit_weights(weight: int, exact: bool) -> None:
    error = run_probe(weight, exact_kernels=exact)
    if SATURATES and weight == 127 and not exact:
        # 2 * 255 * 127 per pair overflows int16: far from the exact 64, not a rounding step.
        assert error > 10, f"expected saturation on {describe()}"
    else:
        # VNNI/ARM always; without VNNI the exact U8U8 kernels or 7-bit weights.
        assert error == 0.0, f"expected exact int8 arithmetic on {describe()}"


def test_int8_verdict_from_flags() -> None:
    assert int8_verdict("x86", {"avx2", "avx512bw"}) [1] is True
    assert int8_verdict("x86", {"avx2", "avx_vnni"})[1] is False
    assert int8_verdict("x86", {"avx512bw", "avx512_vnni"})[1] is False
    assert int8_verdict("arm", {"asimd", "asimddp"})[1] is False
    assert int8_verdict("riscv", set())[1] is None
    info = cpu_info()
    assert info["arch"] in ("x86", "arm") and info["model"]
    assert info["int8"] == int8_verdict(info["arch"], set(info["flags"]))[0]


def test_resolve_int8_kernels_table() -> None:
    auto_sat = resolve_int8_kernels("auto", cpu_saturates=True, weight_bits=8)
    assert auto_sat.exact_kernels and not auto_sat.saturating
    assert auto_sat.session_config() == {PRECISION_CONFIG_KEY: "1"}
    assert "model, not the CPU" in auto_sat.why
    unknown = resolve_int8_kernels("auto", cpu_saturates=True, weight_bits=None)
    assert unknown.exact_kernels  # unknown weights are treated as full range
    seven = resolve_int8_kernels("auto", cpu_saturates=True, weight_bits=7)
    assert not seven.exact_kernels and not seven.saturating and seven.session_config() == {}
    forced = resolve_int8_kernels("fast", cpu_saturates=True, weight_bits=8)
    assert forced.saturating and not forced.exact_kernels and "not gated" in forced.why
    vnni = resolve_int8_kernels("auto", cpu_saturates=False, weight_bits=8)
    assert not vnni.exact_kernels and not vnni.saturating
    assert resolve_int8_kernels("exact", cpu_saturates=False).exact_kernels
    with pytest.raises(UsageError, match="auto, exact, fast"):
        resolve_int8_kernels("turbo", cpu_saturates=False)


def _write_probe(tmp_path: Path, weight: int) -> Path:
    path = tmp_path / f"probe{weight}.onnx"
    path.write_bytes(saturation_probe_model(weight))
    return path


def test_weight_bits_read_from_the_file(tmp_path: Path) -> None:
    assert int8_weight_bits(_write_probe(tmp_path, 127)) == 8
    assert int8_weight_bits(_write_probe(tmp_path, 63)) == 7
    assert int8_weight_bits(_write_probe(tmp_path, -64)) == 7  # ORT's reduce_range: |q| <= 64
    assert int8_weight_bits(_write_probe(tmp_path, -65)) == 8
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "fp32",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(onnx.helper.make_model(graph), str(fp32))
    assert int8_weight_bits(fp32) is None


@pytest.mark.parametrize("mode", ["auto", "exact", "fast"])
def test_runner_reports_and_applies_its_int8_choice(tmp_path: Path, mode: str) -> None:
    path = _write_probe(tmp_path, 127)
    x = np.ones((1, 64, 2, 2), dtype=np.float32)
    with OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"], int8_kernels=mode) as runner:
        y = runner.infer({"x": x})["y"]
        details = runner.details()["int8_cpu"]
    assert details["requested"] == mode and details["cpu_saturates"] == SATURATES
    assert details["cpu"] == cpu_info()["model"]
    expect_saturated = SATURATES and mode == "fast"
    assert details["saturating"] is expect_saturated
    if expect_saturated:
        assert np.max(np.abs(y - 64.0)) > 10
    else:
        np.testing.assert_array_equal(y, np.full_like(y, 64.0))


def test_runner_has_no_int8_details_for_a_float_graph(tmp_path: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "fp32",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "fp32.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)],
                                     ir_version=8), str(path))
    with OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"]) as runner:
        assert runner.details() == {} and runner.int8 is None
