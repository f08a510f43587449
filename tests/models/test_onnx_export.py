"""Every architecture exports with torch.onnx and ONNX Runtime reproduces its logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from port.models.registry import create_model, get_entry


def _export_and_compare(name: str, tmp_path: Path) -> None:
    entry = get_entry(name)
    kwargs = {"width": 0.25} if "width" in entry.kwargs else {}
    torch.manual_seed(0)
    model = create_model(name, 10, **kwargs).eval()
    size = 32 if entry.native_size == 32 else 64
    x = torch.randn(2, 3, size, size)
    path = tmp_path / f"{name}.onnx"
    program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"],
                                output_names=["logits"], verbose=False)
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.inference_mode():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet9", "resnet18_cifar"])
def test_cifar_models_export(name: str, tmp_path: Path) -> None:
    _export_and_compare(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_imagenet_models_export(name: str, tmp_path: Path) -> None:
    _export_and_compare(name, tmp_path)
