"""Layerwise comparison through TensorRT debug tensors (IDebugListener), on a real GPU engine.

Skipped with the reason where TensorRT, pycuda or a GPU is missing (tests/gpu/conftest.py).
"""

from __future__ import annotations

import onnx
import pytest

from port.evaluate.layerwise import OnnxSource, TrtDebugSource, compare_layers
from tests.gpu.conftest import Trained

GPU_NEEDS = "tensorrt"
pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(("which", "tolerance"), [("fp32", 1e-3), ("fp16", 2e-2)])
def test_debug_tensors_match_onnxruntime_layer_by_layer(trained: Trained, which: str,
                                                        tolerance: float) -> None:
    from port.engines.trt_debug import debug_tensors_supported

    why = debug_tensors_supported()
    if why:
        pytest.skip(why)
    path = trained.fp32_onnx if which == "fp32" else trained.fp16_onnx
    images = trained.images[:16]
    reference = OnnxSource(onnx.load(str(trained.fp32_onnx)), trained.card, what="fp32")
    ref = reference.keyed(reference.run(images))
    engine = TrtDebugSource(path, trained.card)
    engine.prepare(images)
    got = engine.run(images)
    assert len(got) >= 10, sorted(got)  # TensorRT reported the marked tensors
    result = compare_layers(ref, got, order=reference.order, tensors=engine.tensors,
                            tolerance=tolerance)
    assert result["first_divergence"] is None, result["layers"]
    assert result["compared"] >= 10
