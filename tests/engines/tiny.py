"""A tiny real classifier and the helpers that save it in every format the runners take."""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from port.data.preprocess import CIFAR10_MEAN, CIFAR10_STD, Preprocess
from port.models.card import ModelCard
from port.models.registry import create_model

NUM_CLASSES = 10
SIZE = 32
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Tiny:
    """One model and its artifacts; ``expected(x)`` is the eager torch output for a batch."""

    model: torch.nn.Module
    card: ModelCard
    checkpoint: Path
    onnx: Path
    images: np.ndarray  # (3, 3, SIZE, SIZE) float32

    def expected(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(x)).numpy()


def tiny_model() -> tuple[torch.nn.Module, ModelCard]:
    """A real CIFAR ResNet-18 at 1/16 width (4..32 channels) with non-trivial BN statistics."""
    torch.manual_seed(0)
    model = create_model("resnet18_cifar", NUM_CLASSES, width=0.0625)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # fresh BN is identity; make folding matter
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    card = ModelCard(
        arch="resnet18_cifar", num_classes=NUM_CLASSES, classes=[f"c{i}" for i in range(10)],
        preprocess=Preprocess.for_size(SIZE, CIFAR10_MEAN, CIFAR10_STD),
        model_kwargs={"width": 0.0625},
    )
    return model.eval(), card


def export_onnx(model: torch.nn.Module, card: ModelCard, path: Path) -> Path:
    """Plain TorchScript-based export with a dynamic batch axis (enough for a fixture)."""
    with warnings.catch_warnings():  # the legacy exporter's deprecation notice is expected
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.zeros(1, *card.input_shape),), str(path), dynamo=False,
            input_names=[card.input_name], output_names=[card.output_name],
            dynamic_axes={card.input_name: {0: "batch"}, card.output_name: {0: "batch"}},
            opset_version=17,
        )
    return path


def tensorrt_missing() -> str | None:
    """Why the TensorRT runner cannot run here, or None when it can."""
    for module in ("tensorrt", "pycuda"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


def build_engine(onnx_path: Path, out: Path, max_batch: int = 4) -> Path:
    """A TensorRT engine of ``onnx_path`` with a dynamic-batch profile 1..max_batch (GPU only)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10+
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if hasattr(trt.BuilderFlag, "TF32"):  # keep FP32 maths exact enough to compare with torch
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    inp = network.get_input(0)
    chw = tuple(inp.shape)[1:]
    profile.set_shape(inp.name, (1, *chw), (max_batch, *chw), (max_batch, *chw))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path}")
    out.write_bytes(bytes(plan))
    return out
