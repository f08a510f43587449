"""Shared fixtures for the evaluate tests: a small real model, its checkpoint and its ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from port.data.datasets import default_preprocess, load_split, materialize
from port.data.spec import parse_data_spec
from port.models.card import ModelCard
from port.models.registry import create_model


@pytest.fixture(scope="session")
def eval_data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """40 real preprocessed images of the synthetic set, with labels and class names."""
    split = load_split(parse_data_spec("synthetic"), "val", limit=40, seed=0)
    images, labels = materialize(split)
    return images, labels, split.classes


@pytest.fixture(scope="session")
def eval_model(eval_data: tuple[np.ndarray, np.ndarray, list[str]]
               ) -> tuple[torch.nn.Module, ModelCard]:
    """A narrow ResNet-18 (BatchNorm statistics from the images) and its card."""
    images, _, classes = eval_data
    card = ModelCard(arch="resnet18_cifar", num_classes=len(classes), classes=classes,
                     preprocess=default_preprocess(parse_data_spec("synthetic")),
                     model_kwargs={"width": 0.125})
    torch.manual_seed(0)
    net = create_model(card.arch, card.num_classes, **card.model_kwargs)
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(images))
    return net.eval(), card


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory,
              eval_model: tuple[torch.nn.Module, ModelCard],
              eval_data: tuple[np.ndarray, np.ndarray, list[str]]) -> dict[str, Path]:
    """``model.pt`` (porter checkpoint) and ``model.fp32.onnx`` exported from it."""
    from port.export.onnx import export_onnx
    from port.models.checkpoint import save_model

    net, card = eval_model
    run = tmp_path_factory.mktemp("run")
    save_model(run / "model.pt", net, card)
    export_onnx(net, card, run / "model.fp32.onnx", sample=eval_data[0][:8],
                exporter="torchscript")  # the faster exporter; dynamo is tested in tests/export
    return {"checkpoint": run / "model.pt", "onnx": run / "model.fp32.onnx"}


FAST_LATENCY = {"warmup": 1, "min_runs": 3, "min_seconds": 0.0}  # keep tests quick; bench/ times


@pytest.fixture(scope="session")
def torch_and_onnx_evaluation(artifacts: dict[str, Path],
                              eval_data: tuple[np.ndarray, np.ndarray, list[str]]) -> tuple:
    """evaluate_stream() of the checkpoint (torch, reference) against its ONNX (onnxruntime):
    the report and the per-image outputs."""
    from port import engines
    from port.evaluate.compare import ArrayChunks, Candidate, evaluate_stream
    from port.gates import Gates

    ckpt, onnx_path = artifacts["checkpoint"], artifacts["onnx"]
    reference = Candidate("model", "fp32", "checkpoint", ckpt, None, lambda: engines.load(ckpt))
    onnx_fp32 = Candidate("onnx-fp32", "fp32", "onnx", onnx_path, None,
                          lambda: engines.load(onnx_path))
    images, labels, _ = eval_data
    return evaluate_stream(reference, [onnx_fp32], ArrayChunks(images, labels),
                           batch_sizes=(1, 16), gates=Gates(),
                           dataset={"spec": "synthetic", "split": "val"}, progress=False,
                           **FAST_LATENCY)


@pytest.fixture(scope="session")
def torch_and_onnx_report(torch_and_onnx_evaluation: tuple) -> dict:
    """The report of :func:`torch_and_onnx_evaluation`."""
    return torch_and_onnx_evaluation[0]
