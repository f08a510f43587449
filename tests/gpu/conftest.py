"""GPU tests: marked ``gpu``, skipped with the reason when CUDA, pycuda or TensorRT are absent.

Run them with ``make test-gpu`` on a machine with an NVIDIA GPU, TensorRT 10 or 11, pycuda and
(optionally) NVIDIA modelopt. Everything here uses real components: a small ResNet trained for a
few seconds on the GPU, exported with ``torch.onnx.export``, converted to FP16 with ONNX
Runtime's converter and to INT8 QDQ with porter's ONNX Runtime quantizer, built into engines by
porter's builder and run through porter's pycuda runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.gpu.helpers import cuda_missing, gpu_missing, pycuda_missing

HERE = Path(__file__).resolve().parent
NUM_CLASSES = 10
SIZE = 32


@pytest.hookimpl(tryfirst=True)  # before `-m gpu` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this folder ``gpu`` and skip it, with the reason, where it cannot run.

    A module says what it needs with ``GPU_NEEDS``: ``"tensorrt"`` (the default: TensorRT,
    pycuda and a CUDA GPU), ``"pycuda"`` (pycuda and a CUDA GPU) or ``"cuda"`` (a CUDA device
    for torch, e.g. the training paths).
    """
    reasons: dict[str, str | None] = {}
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.gpu)
        needs = getattr(item.module, "GPU_NEEDS", "tensorrt")
        if needs not in reasons:
            reasons[needs] = {"cuda": cuda_missing, "pycuda": pycuda_missing}.get(
                needs, gpu_missing)()
        if reasons[needs]:
            item.add_marker(pytest.mark.skip(reason=reasons[needs]))


@dataclass
class Trained:
    """A small trained classifier, its ONNX files and held-out data."""

    model: object  # torch.nn.Module, eval mode, on the CPU
    card: object  # ModelCard
    fp32_onnx: Path
    fp16_onnx: Path
    int8_onnx: Path
    calib: np.ndarray  # float32 NCHW, from the training distribution
    images: np.ndarray  # held-out float32 NCHW
    reference: np.ndarray  # PyTorch FP32 logits of ``images`` (CPU: no TF32)


def _synthetic(n: int, rng: np.random.Generator, prototypes: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Class prototypes plus noise: learnable in seconds, so the model is decisive."""
    labels = rng.integers(0, NUM_CLASSES, n)
    noise = rng.standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)
    return (prototypes[labels] + 0.8 * noise).astype(np.float32), labels


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    import onnx
    import torch
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from port.data.preprocess import CIFAR10_MEAN, CIFAR10_STD, Preprocess
    from port.export.quantize import quantize_int8
    from port.models.card import ModelCard
    from port.models.registry import create_model

    d = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(0)
    prototypes = rng.standard_normal((NUM_CLASSES, 3, SIZE, SIZE)).astype(np.float32)
    x_train, y_train = _synthetic(4096, rng, prototypes)
    images, _ = _synthetic(256, rng, prototypes)

    torch.manual_seed(0)
    model = create_model("resnet18_cifar", NUM_CLASSES, width=0.25).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    xs, ys = torch.from_numpy(x_train).cuda(), torch.from_numpy(y_train).cuda()
    model.train()
    for step in range(150):  # a few seconds on any recent GPU
        idx = torch.randint(0, len(xs), (128,), device="cuda")
        loss = torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step == 149:
            assert loss.item() < 0.5, f"the fixture model did not learn (loss {loss.item():.3f})"
    model = model.cpu().eval()

    card = ModelCard(arch="resnet18_cifar", num_classes=NUM_CLASSES,
                     classes=[f"class{i}" for i in range(NUM_CLASSES)],
                     preprocess=Preprocess.for_size(SIZE, CIFAR10_MEAN, CIFAR10_STD),
                     model_kwargs={"width": 0.25})
    fp32 = d / "model.onnx"
    torch.onnx.export(
        model, (torch.zeros(1, 3, SIZE, SIZE),), str(fp32), dynamo=False, opset_version=17,
        input_names=[card.input_name], output_names=[card.output_name],
        dynamic_axes={card.input_name: {0: "batch"}, card.output_name: {0: "batch"}},
    )
    fp16 = d / "model_fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(fp16))
    int8 = d / "model_int8.onnx"
    quantize_int8(fp32, int8, x_train[:512], method="minmax", progress=False)
    with torch.inference_mode():
        reference = model(torch.from_numpy(images)).numpy()
    return Trained(model, card, fp32, fp16, int8, x_train[:512], images, reference)

