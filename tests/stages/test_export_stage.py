"""The export stage's CPU-side decisions, including the TensorRT path's GPU-free parts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rich.console import Console

from port.errors import UsageError
from port.manifest import Manifest
from port.models.registry import create_model
from port.stages.export import _trt_int8_source, run_export, validate_options
from port.stages.importing import ImportRequest, run_import

QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose reference is an imported (untrained) narrow CIFAR ResNet on synthetic data."""
    root = tmp_path_factory.mktemp("export-stage")
    torch.manual_seed(0)
    weights = root / "w.pt"
    torch.save(create_model("resnet18_cifar", 10, width=0.125).state_dict(), weights)
    run = root / "run"
    run_import(run, ImportRequest(source=weights, arch="resnet18_cifar", width=0.125,
                                  data="synthetic"), console=QUIET)
    return run


def test_flags_are_checked_against_format_and_precision() -> None:
    validate_options("onnx", "int8", {"calib_images": 10, "int8_activations": "uint8"})
    validate_options("trt", "fp16", {"keep_fp32": ["a"], "workspace": "1GiB"})
    with pytest.raises(UsageError, match="--workspace does not apply to --to onnx"):
        validate_options("onnx", "fp32", {"workspace": "1GiB"})
    with pytest.raises(UsageError, match="--calib-images applies to --precision int8"):
        validate_options("onnx", "fp16", {"calib_images": 10})
    with pytest.raises(UsageError, match="--int8-activations does not apply to --to trt"):
        validate_options("trt", "int8", {"int8_activations": "uint8"})


def test_tensorrt_int8_gets_a_symmetric_qdq_graph_when_the_run_has_uint8(run: Path) -> None:
    run_export(run, to="onnx", precision="int8",
               options={"calib_images": 64, "int8_activations": "uint8"}, console=QUIET)
    manifest = Manifest(run)
    assert manifest.get("onnx-int8").params["int8_activations"] == "uint8"
    source, quantizer = _trt_int8_source(manifest, manifest.get("model"), _card(manifest),
                                         {"calib_images": 64}, QUIET)
    assert quantizer == "onnxruntime"  # modelopt is not installed here
    assert source.id == "onnx-int8-sym" and source.params["int8_activations"] == "int8"
    assert (run / source.path).name == "model.int8-sym.onnx"
    assert [p["id"] for p in source.parents] == ["onnx-fp32"]
    # Asked again, the fresh symmetric graph is reused, not re-made.
    again, _ = _trt_int8_source(manifest, manifest.get("model"), _card(manifest), {}, QUIET)
    assert again.created == source.created


def _card(manifest: Manifest) -> object:
    from port.stages.common import reference_card

    return reference_card(manifest, manifest.get("model"))
