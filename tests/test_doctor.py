"""`porter doctor`: the probe runs anywhere; the target verdicts follow from a probe dict."""

from __future__ import annotations

import copy
import importlib.util
import json
from typing import Any

import pytest
from rich.console import Console

from port.doctor import Target, probe, render, targets, trt_min_cc, trt_missing


@pytest.fixture(scope="module")
def here() -> dict[str, Any]:
    return probe()


def _gpu_probe(trt_version: str = "10.8.0", cc: str = "8.6", modelopt: bool = False
               ) -> dict[str, Any]:
    """A hand-made probe of a GPU machine with TensorRT and pycuda."""
    return {
        "python": "3.11.7", "platform": "Linux", "executable": "/usr/bin/python3",
        "torch": {"installed": True, "version": "2.5.0", "cuda": "12.4", "cuda_available": True,
                  "devices": [{"index": 0, "name": "NVIDIA RTX A6000", "compute_capability": cc,
                               "total_memory_bytes": 48 * 1024**3}], "error": None},
        "driver": {"version": "550.54.15", "source": "nvidia-smi"},
        "tensorrt": {"installed": True, "version": trt_version, "error": None},
        "pycuda": {"installed": True, "version": "2024.1"},
        "onnx": {"installed": True, "version": "1.17.0"},
        "onnxruntime": {"installed": True, "version": "1.20.0",
                        "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]},
        "modelopt": {"installed": modelopt, "version": "0.21.0" if modelopt else None},
    }


def _by_key(found: list[Target]) -> dict[tuple[str, str], Target]:
    return {(t.to, t.precision): t for t in found}


def test_probe_runs_here_and_is_json(here: dict[str, Any]) -> None:
    json.dumps(here)  # the CLI's --json output
    assert here["torch"]["installed"] and here["torch"]["version"]
    assert here["onnxruntime"]["installed"]
    assert "CPUExecutionProvider" in here["onnxruntime"]["providers"]
    assert here["tensorrt"]["installed"] == (importlib.util.find_spec("tensorrt") is not None)
    assert here["pycuda"]["installed"] == (importlib.util.find_spec("pycuda") is not None)


def test_onnx_targets_always_work_on_a_cpu(here: dict[str, Any]) -> None:
    found = _by_key(targets(here))
    for precision in ("fp32", "fp16", "int8"):
        assert found[("onnx", precision)].available
    assert "QDQ" in found[("onnx", "int8")].why


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                    reason="this machine has TensorRT")
def test_trt_is_unavailable_here_and_says_what_is_missing(here: dict[str, Any]) -> None:
    found = _by_key(targets(here))
    for precision in ("fp32", "fp16", "int8"):
        target = found[("trt", precision)]
        assert not target.available
        assert "TensorRT (not installed)" in target.why


def test_no_gpu_no_tensorrt_no_pycuda_are_all_named() -> None:
    p = _gpu_probe()
    p["tensorrt"] = {"installed": False, "version": None, "error": None}
    p["pycuda"] = {"installed": False, "version": None}
    p["torch"]["devices"], p["torch"]["cuda_available"] = [], False
    why = _by_key(targets(p))[("trt", "fp16")].why
    assert why == "needs TensorRT (not installed), pycuda (not installed), a CUDA GPU (none found)"


def test_a_gpu_with_tensorrt_10_makes_every_trt_target_available() -> None:
    found = _by_key(targets(_gpu_probe("10.8.0")))
    for precision in ("fp32", "fp16", "int8"):
        assert found[("trt", precision)].available, found[("trt", precision)].why
    assert "--calibrator entropy|minmax" in found[("trt", "int8")].why
    assert "onnxruntime quantizer" in found[("trt", "int8")].why
    assert "classic BuilderFlag.FP16" in found[("trt", "fp16")].why
    assert "CUDAExecutionProvider" in found[("onnx", "fp16")].why


def test_tensorrt_11_int8_is_qdq_only_and_prefers_modelopt() -> None:
    found = _by_key(targets(_gpu_probe("11.1.0", modelopt=True)))
    int8 = found[("trt", "int8")]
    assert int8.available
    assert "modelopt quantizer" in int8.why and "--calibrator was removed" in int8.why
    assert "classic" not in found[("trt", "fp16")].why


def test_compute_capability_floor_follows_the_tensorrt_version() -> None:
    assert trt_min_cc("10.4.0") == (7, 0) and trt_min_cc("10.5.0") == (7, 5)
    assert trt_min_cc("11.0.0") == (7, 5)
    assert not trt_missing(_gpu_probe("10.3.0", cc="7.0"))  # V100 on TensorRT 10.3: fine
    missing = trt_missing(_gpu_probe("10.8.0", cc="7.0"))  # Volta dropped in 10.5
    assert missing and "compute capability >= 7.5" in missing[0] and "7.0" in missing[0]


def test_old_or_broken_tensorrt_is_reported() -> None:
    p = _gpu_probe("8.6.1")
    assert "TensorRT 10 or 11 (found 8.6.1)" in trt_missing(p)[0]
    p = copy.deepcopy(_gpu_probe())
    p["tensorrt"]["error"] = "libnvinfer.so.10: cannot open shared object file"
    assert "import fails: libnvinfer" in trt_missing(p)[0]


def test_render_shows_machine_and_targets(here: dict[str, Any]) -> None:
    for found in (here, _gpu_probe()):
        console = Console(width=200, record=True)
        console.print(render(found, targets(found)))
        text = console.export_text()
        assert "This machine" in text and "Export targets" in text
        assert "onnxruntime" in text and "trt" in text
    assert "NVIDIA RTX A6000, compute capability 8.6" in text


def test_cpu_and_its_measured_int8_kernels_are_reported(here: dict[str, Any]) -> None:
    from port.ground.cpu import cpu_info

    cpu = here["cpu"]
    assert cpu["flags"] == cpu_info()["flags"] and cpu["model"]
    # Measured by ONNX Runtime, predicted from the flags: the same answer.
    assert cpu["ort_int8_saturates"] == cpu_info()["int8_u8s8_saturates"]
    saturating = copy.deepcopy(here)
    saturating["cpu"]["ort_int8_saturates"] = True
    int8 = next(t for t in targets(saturating) if (t.to, t.precision) == ("onnx", "int8"))
    assert "exact U8U8 kernels" in int8.why
    console = Console(record=True, width=300)
    console.print(render(saturating, targets(saturating)))
    assert "saturating" in console.export_text()
