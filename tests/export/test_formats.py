"""The export format registry: entries, lookup errors, precision validation."""

from __future__ import annotations

import dataclasses

import pytest

from port.errors import UsageError
from port.export.formats import (
    FORMATS,
    ExportFormat,
    format_for_path,
    format_names,
    get_format,
    validate_precision,
)


def test_registry_entries_are_named_dataclasses() -> None:
    assert format_names() == ["onnx", "trt"]
    for name, fmt in FORMATS.items():
        assert isinstance(fmt, ExportFormat) and dataclasses.is_dataclass(fmt)
        assert fmt.name == name and fmt.suffix.startswith(".") and fmt.description
        assert set(fmt.precisions) <= {"fp32", "fp16", "int8"}
    assert FORMATS["onnx"].suffix == ".onnx" and FORMATS["onnx"].needs is None
    assert FORMATS["onnx"].precisions == ("fp32", "fp16", "int8")
    assert FORMATS["trt"].suffix == ".engine" and FORMATS["trt"].needs == "tensorrt+cuda"
    assert FORMATS["trt"].kind == "engine" and FORMATS["onnx"].kind == "onnx"


def test_get_format_is_case_insensitive_and_lists_choices_on_error() -> None:
    assert get_format("ONNX") is FORMATS["onnx"]
    with pytest.raises(UsageError, match=r"format 'tflite': choose one of onnx, trt"):
        get_format("tflite")


def test_validate_precision() -> None:
    assert validate_precision("onnx", "FP16") == "fp16"
    assert validate_precision(FORMATS["trt"], "int8") == "int8"
    with pytest.raises(UsageError, match=r"does not support precision 'bf16'.*fp32, fp16, int8"):
        validate_precision("onnx", "bf16")


def test_format_for_path() -> None:
    assert format_for_path("runs/r/model.int8.onnx").name == "onnx"
    assert format_for_path("model.fp16.ENGINE").name == "trt"
    with pytest.raises(UsageError, match=r"\.onnx, \.engine"):
        format_for_path("model.pt")


def test_onnx_exporter_and_runner_resolve_to_real_objects() -> None:
    from port.engines.onnxrt import OnnxRuntimeRunner
    from port.export.onnx import export_onnx

    assert FORMATS["onnx"].resolve_exporter() is export_onnx
    assert FORMATS["onnx"].resolve_runner() is OnnxRuntimeRunner
