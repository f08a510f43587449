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


# One ImageNet ResNet per block type: resnet34 is resnet18's BasicBlock with more blocks, and
# resnet101/152 are resnet50's Bottleneck with more (the export of resnet152 alone took 21 s of
# the suite). Their structure is torchvision's, checked key for key and shape for shape below.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_imagenet_models_export(name: str, tmp_path: Path) -> None:
    _export_and_compare(name, tmp_path)


@pytest.mark.parametrize("name", ["resnet34", "resnet101", "resnet152"])
def test_deeper_imagenet_models_are_torchvisions(name: str) -> None:
    import torchvision

    ours = create_model(name, 10).state_dict()
    theirs = getattr(torchvision.models, name)(weights=None, num_classes=10).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in theirs.items()}
