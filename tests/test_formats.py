"""The format registry: every format x precision x letter case has an exporter, a runner and a
gate, and everything that lists formats or precisions derives from the registry."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from port import engines
from port.formats import (
    BACKENDS,
    FORMATS,
    PRECISIONS,
    Format,
    export_formats,
    exported_kinds,
    format_for_kind,
    format_for_path,
    normalize_format,
    normalize_options,
    normalize_precision,
    option_fields,
    resolve,
)
from port.gates import Gates
from port.ground.errors import UsageError

CASES = [(fmt.name, precision) for fmt in export_formats() for precision in fmt.precisions]


def _spellings(name: str) -> list[str]:
    return sorted({name, name.upper(), name.capitalize(), name.swapcase()})


@pytest.mark.parametrize(("to", "precision"), CASES)
def test_every_format_and_precision_in_any_case_has_exporter_runner_and_gate(
        to: str, precision: str) -> None:
    for to_text in _spellings(to):
        for precision_text in _spellings(precision):
            fmt = normalize_format(to_text)
            assert fmt is FORMATS[to]
            assert normalize_precision(fmt, precision_text) == precision
    exporter = fmt.exporter(precision)
    assert list(inspect.signature(exporter).parameters)[:3] == ["ctx", "fmt", "precision"]
    assert Gates().for_precision(precision) is not None
    if not fmt.runnable:  # made, never run by porter (a Triton repository): no runner, no reader
        with pytest.raises(UsageError, match=f"does not run --to {fmt.name}"):
            fmt.runner_class()
        return
    runner = fmt.runner_class()
    assert issubclass(runner, engines.Runner) and runner.backend == fmt.backend
    assert fmt.precision_of and callable(resolve(fmt.precision_of))


def test_unknown_names_are_refused_with_the_choices() -> None:
    with pytest.raises(UsageError, match="choose one of onnx, openvino, trt, triton"):
        normalize_format("tflite")
    with pytest.raises(UsageError, match="choose one of onnx, openvino, trt, triton"):
        normalize_format("checkpoint")  # a format porter reads, not one it exports
    with pytest.raises(UsageError, match="choose one of fp32, fp16, int8"):
        normalize_precision(FORMATS["onnx"], "bf16")
    assert normalize_precision(FORMATS["trt"], None) == "fp32"


def test_options_dataclass_fields_say_which_precisions_use_them() -> None:
    for fmt in export_formats():
        assert dataclasses.is_dataclass(fmt.options_type)
        by_field = option_fields(fmt)
        assert set(by_field) == {o.name for o in fmt.options}
    assert option_fields(FORMATS["onnx"])["calib_images"] == frozenset({"int8"})
    assert option_fields(FORMATS["onnx"])["keep_fp32"] == frozenset({"fp16"})
    assert option_fields(FORMATS["trt"])["workspace"] is None  # every precision


def test_option_checks_derive_from_the_registry() -> None:
    onnx = FORMATS["onnx"]
    assert normalize_options(onnx, "int8", {"calib_method": "Entropy", "opset": None}) == {
        "calib_method": "entropy"}
    with pytest.raises(UsageError, match="only to --to trt"):
        normalize_options(onnx, "fp32", {"workspace": "1GiB"})
    with pytest.raises(UsageError, match="applies to --precision int8, not fp16"):
        normalize_options(onnx, "fp16", {"calib_seed": 3})


def test_evaluate_engines_and_doctor_derive_from_the_registry() -> None:
    runnable = [f for f in FORMATS.values() if f.runnable]
    assert set(exported_kinds()) == {f.kind for f in export_formats() if f.runnable}
    assert {s: f.backend for f in runnable for s in f.suffixes} == engines.SUFFIXES
    assert set(engines.RUNNERS) == set(BACKENDS)
    # every backend a format lists is registered, and every registered backend runs a format
    assert {b for f in runnable for b in f.backends} == set(BACKENDS)
    for fmt in FORMATS.values():
        assert format_for_kind(fmt.kind) is fmt
    for fmt in runnable:
        for suffix in fmt.suffixes:
            assert format_for_path(Path(f"x/model.fp32{suffix.upper()}")) is fmt
    from port.doctor import targets

    listed = {(t.to, t.precision) for t in targets({})}
    assert listed == set(CASES)
    assert set(Gates().to_dict()) == set(PRECISIONS)


def test_a_new_format_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    # A format added to the registry alone shows up in --to, in evaluate's kinds, in doctor and
    # in the options check, with no other file touched.
    from port.formats import Backend

    monkeypatch.setitem(BACKENDS, "tflite", Backend(
        name="tflite", description="TensorFlow Lite interpreter", runner="port.engines.base:Runner",
        needs=(("tflite_runtime", "pip install tflite-runtime"),)))
    extra = Format(name="tflite", description="TensorFlow Lite flatbuffer", kind="tflite",
                   suffixes=(".tflite",), backends=("tflite",), precisions=("fp32", "int8"),
                   exporters={"fp32": "port.export.onnx_job:export_onnx_fp32"})
    monkeypatch.setitem(FORMATS, "tflite", extra)
    assert normalize_format("TFLite") is extra
    assert "tflite" in exported_kinds()
    from port.doctor import targets

    rows = [t for t in targets({}) if t.to == "tflite"]
    assert [t.precision for t in rows] == ["fp32", "int8"]
    assert all(not t.available and "tflite_runtime" in t.why for t in rows)
    with pytest.raises(UsageError, match="does not apply to --to tflite"):
        normalize_options(extra, "fp32", {"opset": 17})


def test_a_format_without_a_runner_is_exported_but_never_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A deployment bundle (like the Triton repository) is one entry with runner=None: --to and
    # doctor list it, evaluate's kinds, engines.load's suffixes and runners leave it out.
    bundle = Format(name="bundle", description="a folder for some server", kind="bundle",
                    suffixes=(".bundle.json",), backends=(),
                    precisions=("fp32",),
                    exporters={"fp32": "port.export.triton_job:export_triton"})
    monkeypatch.setitem(FORMATS, "bundle", bundle)
    assert normalize_format("Bundle") is bundle and not bundle.runnable
    assert "bundle" not in exported_kinds()
    from port.formats import backend_formats, suffix_backends

    assert all(bundle not in fmts for fmts in backend_formats().values())
    assert ".bundle.json" not in suffix_backends()
    with pytest.raises(UsageError, match=r"porter runs \.onnx"):
        format_for_path("x/model.fp32.bundle.json")
    from port.doctor import targets

    assert [(t.to, t.precision, t.available) for t in targets({}) if t.to == "bundle"] == [
        ("bundle", "fp32", True)]
    # The real one: the Triton model repository.
    assert not FORMATS["triton"].runnable and FORMATS["triton"].exportable
    assert "triton" not in exported_kinds() and "triton" not in engines.RUNNERS
