"""The export stage's CPU-side decisions, including the TensorRT path's GPU-free parts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rich.console import Console

from port.export.context import ExportContext
from port.export.trt_job import trt_int8_source
from port.ground.errors import UsageError
from port.manifest import Manifest
from port.models.registry import create_model
from port.stages.export import ExportRequest, run_export
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
    ok = ExportRequest.from_flags("onnx", "int8", {"calib_images": 10,
                                                    "int8_activations": "UINT8"})
    assert ok.options == {"calib_images": 10, "int8_activations": "uint8"}  # choices normalised
    ExportRequest.from_flags("trt", "fp16", {"keep_fp32": ["a"], "workspace": "1GiB"})
    with pytest.raises(UsageError, match="--workspace does not apply to --to onnx"):
        ExportRequest.from_flags("onnx", "fp32", {"workspace": "1GiB"})
    with pytest.raises(UsageError, match="--calib-images applies to --precision int8"):
        ExportRequest.from_flags("onnx", "fp16", {"calib_images": 10})
    with pytest.raises(UsageError, match="--int8-activations does not apply to --to trt"):
        ExportRequest.from_flags("trt", "int8", {"int8_activations": "uint8"})
    with pytest.raises(UsageError, match="--calib-method KL is not known: choose one of minmax"):
        ExportRequest.from_flags("onnx", "int8", {"calib_method": "KL"})


def test_tensorrt_int8_gets_a_symmetric_qdq_graph_when_the_run_has_uint8(run: Path) -> None:
    run_export(run, ExportRequest.from_flags("onnx", "int8", {"calib_images": 64,
                                                              "int8_activations": "uint8"}),
               console=QUIET)
    manifest = Manifest(run)
    assert manifest.get("onnx-int8").params["int8_activations"] == "uint8"
    source, quantizer = trt_int8_source(_ctx(manifest, {"calib_images": 64}))
    assert quantizer == "onnxruntime"  # modelopt is not installed here
    assert source.id == "onnx-int8-sym" and source.params["int8_activations"] == "int8"
    assert (run / source.path).name == "model.int8-sym.onnx"
    assert [p["id"] for p in source.parents] == ["onnx-fp32"]
    # Asked again, the fresh symmetric graph is reused, not re-made.
    again, _ = trt_int8_source(_ctx(manifest, {}))
    assert again.created == source.created


def _ctx(manifest: Manifest, options: dict) -> ExportContext:
    from port.stages.common import reference_card

    ref = manifest.get("model")
    return ExportContext(manifest, ref, reference_card(manifest, ref), options, QUIET)
