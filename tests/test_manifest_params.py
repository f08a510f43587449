"""Typed params per artifact kind: typed access, defaults for older records, extras kept."""

from __future__ import annotations

from pathlib import Path

from port.manifest import Manifest
from port.manifest.params import ExportParams, ReferenceParams, ReportParams, params_for


def test_round_trip_keeps_every_key_and_types_the_known_ones() -> None:
    raw = {"to": "onnx", "precision": "int8", "card": {"arch": "x"}, "int8_weights": "7bit",
           "calib_method": "entropy", "plan": {"network_flags": 1}}
    typed = ExportParams.from_dict(raw)
    assert (typed.to, typed.precision, typed.int8_weights) == ("onnx", "int8", "7bit")
    assert typed.int8_activations == "int8"  # an older record without the key: the default
    assert typed.extra == {"calib_method": "entropy", "plan": {"network_flags": 1}}
    assert not typed.tensorrt_form()
    back = typed.to_dict()
    assert {k: back[k] for k in raw} == raw


def test_each_stage_reads_its_own_dataclass() -> None:
    assert isinstance(params_for("train", {"data": "synthetic", "epochs": 2}), ReferenceParams)
    assert params_for("import", {"data": "DIR"}).data == "DIR"
    assert isinstance(params_for("evaluate", {}), ReportParams)
    assert params_for("export", None).precision == "fp32"


def test_records_hand_out_typed_params(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.int8.onnx").write_bytes(b"graph")
    manifest = Manifest(run)
    manifest.record("export", "onnx", run / "model.int8.onnx", id="onnx-int8",
                    params=ExportParams(to="onnx", precision="int8", quantizer="onnxruntime",
                                        extra={"calib_method": "minmax"}))
    record = Manifest(run).get("onnx-int8")
    assert record.params["calib_method"] == "minmax"  # the JSON is the same flat object
    assert record.typed_params.quantizer == "onnxruntime"
    assert record.typed_params.precision == "int8" and record.typed_params.tensorrt_form()
