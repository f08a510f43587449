"""Which quantizer makes a TensorRT INT8 engine's QDQ ONNX, and what the artifact is called.

The choice is made once (``port.export.tensorrt.choose_quantizer``) and printed with its reason;
an artifact is called ``onnx-int8-modelopt`` only when modelopt really quantized it. Runs on a
CPU: where a test needs "modelopt installed", porter's own probe is told so, and the test checks
that nothing is then named after a quantizer that did not run.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

import port.export.tensorrt as trt_export
from port.export.context import ExportContext
from port.export.trt_job import trt_int8_source
from port.ground.errors import BackendUnavailable
from port.manifest import Manifest
from port.stages.common import reference_card
from port.stages.export import ExportRequest, run_export
from port.stages.importing import ImportRequest, run_import

HAVE_MODELOPT = importlib.util.find_spec("modelopt") is not None


def _tiny_onnx(path: Path) -> Path:
    """A small real classifier (conv, ReLU, pooling, dense; dynamic batch) written with
    onnx.helper: quick to make and to quantize."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(0.3 * rng.standard_normal((8, 3, 3, 3), np.float32), "w"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((8, 10), np.float32), "fc"),
             numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc", "fc_b"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits)
    # IR version 10 (ONNX 1.16): what the installed ONNX Runtime reads.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    """A new run whose reference is an imported ONNX classifier on synthetic data (an imported
    ONNX is the FP32 graph itself, so nothing is exported before quantizing)."""
    run = tmp_path / "run"
    run_import(run, ImportRequest(source=_tiny_onnx(tmp_path / "tiny.onnx"), data="synthetic"),
               console=Console(quiet=True))
    return run


def _source(run: Path, options: dict) -> tuple[str, str, str, Manifest]:
    """(artifact id, quantizer, printed text) of the QDQ ONNX a TensorRT INT8 build would use."""
    out = io.StringIO()
    manifest = Manifest(run)
    ref = manifest.get("model")
    ctx = ExportContext(manifest, ref, reference_card(manifest, ref),
                        {"calib_images": 64, **options}, Console(file=out, width=300))
    record, quantizer = trt_int8_source(ctx)
    return record.id, quantizer, out.getvalue(), manifest


@pytest.mark.skipif(HAVE_MODELOPT, reason="modelopt is installed: it would quantize")
def test_without_modelopt_onnx_runtime_quantizes_and_the_stage_says_why(run: Path) -> None:
    art_id, quantizer, printed, manifest = _source(run, {})
    assert (art_id, quantizer) == ("onnx-int8", "onnxruntime")
    assert "onnxruntime: NVIDIA modelopt is not installed" in printed
    assert manifest.get(art_id).params["quantizer"] == "onnxruntime"


def test_a_method_modelopt_lacks_falls_back_and_is_not_named_modelopt(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trt_export, "modelopt_available", lambda: True)
    art_id, quantizer, printed, manifest = _source(run, {"calib_method": "percentile"})
    assert quantizer == "onnxruntime" and art_id in ("onnx-int8", "onnx-int8-sym")
    assert "modelopt has no 'percentile' calibration" in printed
    assert manifest.get(art_id).params["quantizer"] == "onnxruntime"
    assert manifest.get("onnx-int8-modelopt") is None
    assert not (run / "model.int8-modelopt.onnx").exists()


@pytest.mark.skipif(HAVE_MODELOPT, reason="modelopt is installed and importable here")
def test_modelopt_chosen_but_not_importable_is_refused_and_nothing_is_named_after_it(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trt_export, "modelopt_available", lambda: True)
    with pytest.raises(BackendUnavailable, match=r"nvidia-modelopt\[onnx\]"):
        _source(run, {"calib_method": "minmax"})
    assert Manifest(run).get("onnx-int8-modelopt") is None
    assert not (run / "model.int8-modelopt.onnx").exists()


@pytest.mark.skipif(HAVE_MODELOPT, reason="modelopt is installed: it would quantize")
def test_a_7bit_weight_run_gets_a_full_range_copy_for_tensorrt(run: Path) -> None:
    run_export(run, ExportRequest.from_flags("onnx", "int8",
                                             {"calib_images": 64, "int8_weights": "7bit"}),
               console=Console(quiet=True))
    assert Manifest(run).get("onnx-int8").params["int8_weights"] == "7bit"
    art_id, quantizer, printed, manifest = _source(run, {})
    assert (art_id, quantizer) == ("onnx-int8-sym", "onnxruntime")
    assert "7-bit weights" in printed
    params = manifest.get(art_id).params
    assert (params["int8_weights"], params["int8_activations"]) == ("full", "int8")
    assert (run / "model.int8-sym.onnx").is_file()
