"""Build FP32/FP16/INT8 engines of a small trained ResNet, run them through porter's pycuda
runner and compare with PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from port.engines.trt_sidecar import read_sidecar, sidecar_path
from port.export.tensorrt import build_engine
from port.export.trt_options import TrtBuildOptions
from port.ground.errors import UsageError
from tests.gpu.conftest import Trained
from tests.gpu.helpers import agreement, trt_major

pytestmark = pytest.mark.gpu

# Minimum top-1 agreement with PyTorch FP32 on held-out images of a decisive model.
MIN_AGREEMENT = {"fp32": 0.99, "fp16": 0.98, "int8": 0.95}


def _run(engine: Path, images: np.ndarray, batch: int = 16) -> np.ndarray:
    from port.engines.tensorrt import TensorRTRunner

    outs = []
    with TensorRTRunner(engine) as runner:
        name = runner.input_metadata()[0].name
        out_name = runner.output_names()[0]
        for start in range(0, len(images), batch):
            outs.append(runner.infer({name: images[start:start + batch]})[out_name])
    return np.concatenate(outs)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_strongly_typed_engine_matches_pytorch(trained: Trained, tmp_path: Path,
                                               precision: str) -> None:
    onnx_path = {"fp32": trained.fp32_onnx, "fp16": trained.fp16_onnx,
                 "int8": trained.int8_onnx}[precision]
    engine = tmp_path / f"model_{precision}.engine"
    opts = TrtBuildOptions(precision=precision, min_batch=1, opt_batch=16, max_batch=32)
    metrics = build_engine(onnx_path, engine, opts, trained.card,
                           quantizer="onnxruntime" if precision == "int8" else None)
    assert engine.is_file() and metrics["engine_bytes"] == engine.stat().st_size
    assert metrics["plan"]["path"] == "strongly-typed"
    assert metrics["build_seconds"] > 0 and Path(metrics["log"]).is_file()
    assert metrics["quantizer"] == ("onnxruntime" if precision == "int8" else None)

    logits = _run(engine, trained.images)
    assert logits.shape == trained.reference.shape
    assert agreement(logits, trained.reference) >= MIN_AGREEMENT[precision]
    if precision == "fp32":  # TF32 is cleared: FP32 engines track PyTorch closely
        scale = float(np.abs(trained.reference).max())
        assert float(np.abs(logits - trained.reference).max()) <= 1e-3 * max(scale, 1.0)


def test_sidecar_describes_the_engine(trained: Trained, tmp_path: Path) -> None:
    import tensorrt as trt

    engine = tmp_path / "model_fp16.engine"
    build_engine(trained.fp16_onnx, engine, TrtBuildOptions(precision="fp16", max_batch=8,
                                                            opt_batch=8), trained.card)
    side = read_sidecar(sidecar_path(engine))
    assert side["tensorrt_version"] == trt.__version__
    assert side["precision"] == "fp16"
    assert side["inputs"][0]["name"] == trained.card.input_name
    assert side["inputs"][0]["dtype"] == "float32"  # FP16 graph, FP32 I/O
    assert side["inputs"][0]["profile"]["max"] == [8, 3, 32, 32]
    assert side["outputs"][0]["name"] == trained.card.output_name
    assert side["classes"] == trained.card.classes
    assert side["gpu"]["name"] and side["gpu"]["compute_capability"]
    assert json.loads(sidecar_path(engine).read_text())["engine_sha256"]


def test_classic_fp16_and_calibrated_int8_on_tensorrt_10(trained: Trained,
                                                         tmp_path: Path) -> None:
    if trt_major() != 10:
        pytest.skip("the classic builder-flag path exists on TensorRT 10 only")
    engine = tmp_path / "classic_fp16.engine"
    metrics = build_engine(trained.fp32_onnx, engine, TrtBuildOptions(precision="fp16"),
                           trained.card)
    assert metrics["plan"]["path"] == "classic" and metrics["plan"]["builder_flags"] == ["FP16"]
    assert agreement(_run(engine, trained.images), trained.reference) >= MIN_AGREEMENT["fp16"]

    cache = tmp_path / "calib.cache"
    engine = tmp_path / "classic_int8.engine"
    opts = TrtBuildOptions(precision="int8", calibrator="entropy", calib_cache=cache)
    metrics = build_engine(trained.fp32_onnx, engine, opts, trained.card,
                           calib_images=trained.calib)
    assert metrics["plan"]["calibrator"] == "entropy" and metrics["quantizer"] == "tensorrt"
    assert metrics["calibration"]["batches"] > 0 and cache.is_file()
    assert agreement(_run(engine, trained.images), trained.reference) >= MIN_AGREEMENT["int8"]
    # Second build reads the calibration cache instead of calibrating again.
    again = build_engine(trained.fp32_onnx, tmp_path / "again.engine", opts, trained.card,
                         calib_images=trained.calib)
    assert again["calibration"]["cache_used"]


def test_calibrator_is_refused_on_tensorrt_11(trained: Trained, tmp_path: Path) -> None:
    if trt_major() < 11:
        pytest.skip("TensorRT 10 still has IInt8*Calibrator")
    with pytest.raises(UsageError, match="TensorRT 11 removed implicit INT8 calibration"):
        build_engine(trained.fp32_onnx, tmp_path / "m.engine",
                     TrtBuildOptions(precision="int8", calibrator="entropy"), trained.card,
                     calib_images=trained.calib)


def test_tensorrt_11_refuses_low_precision_from_the_fp32_onnx(trained: Trained,
                                                              tmp_path: Path) -> None:
    if trt_major() < 11:
        pytest.skip("TensorRT 10 builds this through the classic path")
    with pytest.raises(UsageError, match="strongly typed networks only"):
        build_engine(trained.fp32_onnx, tmp_path / "m.engine", TrtBuildOptions(precision="fp16"),
                     trained.card)
