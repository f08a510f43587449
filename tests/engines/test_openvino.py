"""OpenVINO, porter's second runtime, on porter's own FP32, FP16 and INT8 ONNX files and IRs.

Real OpenVINO (the `openvino` extra `make test` installs) against real ONNX Runtime on the same
files: the logits agree, the precision each computed in is read back from the compiled model
and never assumed, an opt-in entry the device cannot honour is unavailable (not mislabelled),
and bad files are porter's one-line errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import port
from port import engines
from port.engines.openvino import OpenVinoRunner
from port.ground.errors import BackendUnavailable, ModelError, UsageError
from tests.engines.tiny import SIZE, Tiny

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed")


def _capabilities() -> list[str]:
    return [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


@pytest.fixture(scope="module")
def files(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """porter's FP32 ONNX of the tiny model (card in its metadata), its FP16 and INT8 graphs
    made by porter's converters, and the FP32 and INT8 OpenVINO IRs made by porter."""
    from port.export.fp16 import convert_fp16
    from port.export.onnx import export_onnx
    from port.export.openvino_ir import convert_to_ir
    from port.export.quantize import quantize_int8
    from port.models.card_codec import read_metadata

    d = tmp_path_factory.mktemp("openvino")
    rng = np.random.default_rng(1)
    calib = rng.standard_normal((32, 3, SIZE, SIZE), dtype=np.float32)
    out = {"fp32": d / "model.fp32.onnx", "fp16": d / "model.fp16.onnx",
           "int8": d / "model.int8.onnx"}
    export_onnx(tiny.model, tiny.card, out["fp32"], sample=tiny.images, exporter="torchscript")
    convert_fp16(out["fp32"], out["fp16"], sample_images=tiny.images, card=tiny.card)
    quantize_int8(out["fp32"], out["int8"], calib, progress=False, card=tiny.card)
    for precision in ("fp32", "int8"):
        xml = d / f"model.{precision}.xml"
        porter_strings = {k: v for k, v in read_metadata(out[precision]).items()
                          if k.startswith("porter.")}
        convert_to_ir(out[precision], xml, card_metadata=porter_strings)
        out[f"ir-{precision}"] = xml
    return out


def _logits(path: Path, backend: str, x: np.ndarray) -> tuple[np.ndarray, dict]:
    with engines.load(path, backend=backend) as runner:
        name = runner.input_metadata()[0].name
        got = next(iter(runner.infer({name: x}).values()))
        return got, runner.details()


@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-4), ("fp16", 5e-2),
                                                      ("int8", 0.5)])
def test_openvino_agrees_with_onnxruntime_on_porter_files(files: dict[str, Path], tiny: Tiny,
                                                          precision: str,
                                                          tolerance: float) -> None:
    x = tiny.images
    got, details = _logits(files[precision], "openvino", x)
    want, _ = _logits(files[precision], "onnxruntime", x)
    assert got.shape == want.shape == (3, tiny.card.num_classes)
    diff = float(np.max(np.abs(got - want)))
    assert diff < tolerance, f"{precision}: OpenVINO differs from ONNX Runtime by {diff}"
    # The f32 hint is pinned: FP32/FP16 files compute in f32, INT8 in int8 kernels + f32.
    computed = details["compute_precision"]
    assert computed == ("int8+f32" if precision == "int8" else "f32"), details
    assert details["openvino"]["inference_precision_hint"] == "f32"
    if precision == "fp32":  # same graph, same arithmetic: also close to eager torch
        assert float(np.max(np.abs(got - tiny.expected(x)))) < 1e-4


def test_ir_runs_like_its_onnx_and_carries_the_card(files: dict[str, Path], tiny: Tiny) -> None:
    for precision in ("fp32", "int8"):
        from_ir, _ = _logits(files[f"ir-{precision}"], "openvino", tiny.images)
        from_onnx, _ = _logits(files[precision], "openvino", tiny.images)
        np.testing.assert_allclose(from_ir, from_onnx, atol=1e-5)
    with engines.load(files["ir-fp32"]) as runner:  # .xml: OpenVINO by its suffix
        assert runner.backend == "openvino"
        card = runner.model_card()
    assert card is not None and card.classes == tiny.card.classes
    assert card.preprocess == tiny.card.preprocess


def test_bf16_entry_computes_in_bf16_and_says_so(files: dict[str, Path], tiny: Tiny) -> None:
    if "BF16" not in _capabilities():
        pytest.skip(f"this CPU has no bf16 arithmetic ({', '.join(_capabilities())})")
    got, details = _logits(files["fp32"], "openvino-bf16", tiny.images)
    f32, _ = _logits(files["fp32"], "openvino", tiny.images)
    assert details["compute_precision"] == "bf16", details
    # bfloat16's 8-bit mantissa shows in the logits: the row is bf16, not an FP32 row.
    assert 1e-4 < float(np.max(np.abs(got - f32))) < 0.5


def test_f16_entry_computes_in_f16_or_is_unavailable(files: dict[str, Path],
                                                     tiny: Tiny) -> None:
    if "FP16" in _capabilities():
        _, details = _logits(files["fp32"], "openvino-f16", tiny.images)
        assert details["compute_precision"] == "f16", details
    else:  # OpenVINO would quietly run bf16 (or f32): porter refuses to call that an f16 row
        with pytest.raises(BackendUnavailable, match="cannot compute in f16") as err:
            _logits(files["fp32"], "openvino-f16", tiny.images)
        assert "\n" not in str(err.value)


def test_port_load_on_openvino_predicts_like_onnxruntime(files: dict[str, Path]) -> None:
    images = np.random.default_rng(2).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    with port.load(files["fp32"], backend="openvino") as on_ov, \
            port.load(files["fp32"]) as on_ort:
        assert [p.label for p in on_ov.predict(images)] == \
            [p.label for p in on_ort.predict(images)]
        np.testing.assert_allclose(on_ov.logits(images), on_ort.logits(images), atol=1e-4)
    with pytest.raises(UsageError, match="unknown backend"):
        port.load(files["fp32"], backend="openvino-int4")


def test_bad_files_and_feeds_are_one_line_errors(files: dict[str, Path], tiny: Tiny,
                                                 tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not a protobuf at all" * 8)
    with pytest.raises(ModelError, match="OpenVINO cannot read") as err:
        engines.load(corrupt, backend="openvino").activate()
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match="not found"):
        engines.load(tmp_path / "absent.onnx", backend="openvino")
    ir = tmp_path / "lonely.xml"
    ir.write_bytes(files["ir-fp32"].read_bytes())  # the .xml without its .bin
    with pytest.raises(ModelError, match=r"lonely\.bin"):
        engines.load(ir).activate()
    with engines.load(files["fp32"], backend="openvino") as runner:
        name = runner.input_metadata()[0].name
        for feed in ({name: np.zeros((1, 3, 8, 8), np.float32)},
                     {"image": tiny.images}, {name: tiny.images.astype(np.float64)}):
            with pytest.raises(UsageError) as bad:
                runner.infer(feed)
            assert "\n" not in str(bad.value)
    with pytest.raises(UsageError, match="unknown OpenVINO inference precision"):
        OpenVinoRunner(files["fp32"], inference_precision="int4")
    # An entry's fixed setting is its identity: asking "openvino" for bf16 names the entry that
    # computes in bf16 instead of quietly running f32 (or quietly running bf16 as "openvino").
    with pytest.raises(UsageError, match="always runs with inference_precision=f32: use "
                                         "openvino-bf16 or openvino-f16"):
        engines.load(files["fp32"], backend="openvino", inference_precision="bf16")


def test_a_device_this_machine_lacks_is_unavailable(files: dict[str, Path]) -> None:
    with pytest.raises(BackendUnavailable, match="OpenVINO device NPU is not available"):
        engines.load(files["fp32"], backend="openvino", device="NPU").activate()
