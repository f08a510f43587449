"""Backend-specific behaviour of the runners and of engines.load (the shared contract is in
test_contract.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from port import engines
from port.engines.onnxrt import CPU_EP, OnnxRuntimeRunner
from port.engines.torch_runner import TorchRunner
from port.ground.errors import BackendUnavailable, ModelError, UsageError
from tests.engines.tiny import REPO, Tiny, tensorrt_missing, tiny_model


# -- parity ----------------------------------------------------------------------------------
def test_onnxruntime_agrees_with_torch(tiny: Tiny) -> None:
    x = tiny.images
    with TorchRunner(tiny.checkpoint) as t, OnnxRuntimeRunner(tiny.onnx, threads=1) as o:
        ref = t.infer({"input": x})["logits"]
        got = o.infer({"input": x})["logits"]
    diff = float(np.max(np.abs(ref - got)))
    assert diff < 1e-4, f"ORT differs from torch by {diff}"
    assert np.array_equal(ref.argmax(1), got.argmax(1))


# -- torch runner ----------------------------------------------------------------------------
def test_torch_runner_takes_a_callable_loader(tiny: Tiny) -> None:
    runner = TorchRunner(tiny_model)
    assert runner.device == "cpu"
    with pytest.raises(RuntimeError, match="activate"):
        runner.input_metadata()
    with runner:
        out = runner.infer({"input": tiny.images[::-1]})["logits"]  # a negative-stride view
        assert runner.card is not None and runner.card.num_classes == 10
    np.testing.assert_allclose(out, tiny.expected(np.ascontiguousarray(tiny.images[::-1])),
                               atol=1e-5)


def test_torch_runner_reads_card_and_payload_from_checkpoint(tiny: Tiny) -> None:
    with TorchRunner(tiny.checkpoint) as runner:
        assert runner.card == tiny.card
        assert runner.payload["format"] == "porter-model/1"


def test_torch_runner_device_errors(tiny: Tiny) -> None:
    with pytest.raises(UsageError, match="unknown torch device 'gpu'"):
        TorchRunner(tiny_model, device="gpu").activate()
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="needs CUDA"):
            TorchRunner(tiny_model, device="cuda").activate()


def test_torch_runner_missing_checkpoint_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        TorchRunner(tmp_path / "nope.pt").activate()


# -- onnxruntime runner ----------------------------------------------------------------------
def test_truncated_onnx_is_a_one_line_model_error(tiny: Tiny, tmp_path: Path) -> None:
    data = tiny.onnx.read_bytes()
    bad = tmp_path / "cut.onnx"
    for keep in (0, 100, len(data) // 2, len(data) - 10):  # empty, header only, half, tail lost
        bad.write_bytes(data[:keep])
        with pytest.raises(ModelError) as e:
            OnnxRuntimeRunner(bad).activate()
        assert str(e.value) == f"{bad} is not a valid ONNX model (truncated?): re-export it", keep


def test_onnx_runner_loaders_bytes_modelproto_and_missing(tiny: Tiny, tmp_path: Path) -> None:
    import onnx

    x = tiny.images[:2]
    ref = tiny.expected(x)
    for loader in (tiny.onnx.read_bytes, lambda: onnx.load(str(tiny.onnx)), lambda: tiny.onnx):
        with OnnxRuntimeRunner(loader, threads=1) as runner:
            assert runner.output_names() == ["logits"]
            np.testing.assert_allclose(runner.infer({"input": x})["logits"], ref, atol=1e-4)
    with pytest.raises(ModelError, match="not found"):
        OnnxRuntimeRunner(tmp_path / "nope.onnx").activate()
    with pytest.raises(ModelError, match="in-memory ONNX model is not a valid ONNX model"):
        OnnxRuntimeRunner(lambda: b"\x0a\xff\xff").activate()


def test_onnx_runner_providers_and_metadata(tiny: Tiny) -> None:
    import onnxruntime as ort

    runner = OnnxRuntimeRunner(tiny.onnx, providers=[CPU_EP])
    with pytest.raises(RuntimeError, match="activate"):
        _ = runner.device
    with runner:
        assert runner.device == CPU_EP
        assert isinstance(runner.metadata(), dict)
    assert runner.device == CPU_EP  # still reported after deactivate, for reports
    auto = OnnxRuntimeRunner(tiny.onnx)
    with auto:
        assert auto.device == next(p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                               CPU_EP) if p in ort.get_available_providers())
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider not available"):
            OnnxRuntimeRunner(tiny.onnx, providers=["CUDAExecutionProvider"]).activate()


# -- engines.load and the registry -----------------------------------------------------------
def test_load_picks_the_runner_by_suffix(tiny: Tiny, tmp_path: Path) -> None:
    assert isinstance(engines.load(tiny.checkpoint), TorchRunner)
    assert isinstance(engines.load(tiny.onnx, providers=[CPU_EP]), OnnxRuntimeRunner)
    assert isinstance(engines.load(tiny.onnx, backend="onnxruntime"), OnnxRuntimeRunner)
    assert engines.RUNNERS["onnxruntime"] is OnnxRuntimeRunner
    assert set(engines.RUNNERS) == {"torch", "onnxruntime", "openvino", "openvino-bf16",
                                    "openvino-f16", "tensorrt"}
    with pytest.raises(UsageError, match=r"the tensorrt backend does not run \.onnx files"):
        engines.load(tiny.onnx, backend="tensorrt")
    with pytest.raises(UsageError, match=r"porter runs \.onnx, .*\.engine, \.plan, \.pt, \.pth"):
        engines.load(tmp_path / "model.tflite")
    with pytest.raises(UsageError, match="unknown backend 'tvm'"):
        engines.load(tiny.onnx, backend="tvm")
    with pytest.raises(ModelError, match="not found"):
        engines.load(tmp_path / "missing.onnx")


@pytest.mark.skipif(tensorrt_missing() != "tensorrt is not installed",
                    reason="TensorRT is installed here")
def test_load_engine_without_tensorrt_is_backend_unavailable(tmp_path: Path) -> None:
    for suffix in (".engine", ".plan"):
        plan = tmp_path / f"model{suffix}"
        plan.write_bytes(b"not really an engine")
        with pytest.raises(BackendUnavailable, match="needs the 'tensorrt' module") as e:
            engines.load(plan)
        assert "\n" not in str(e.value)


def test_importing_engines_imports_no_backend() -> None:
    code = ("import json, sys, port.engines; "
            "print(json.dumps(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt', 'pycuda') "
            "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout) == []
