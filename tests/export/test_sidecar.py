"""Writing engine sidecars (port/export/sidecar.py): what a build records next to its engine.

Reading them back and the compatibility rules are port/engines/trt_sidecar.py's, tested in
tests/engines/test_trt_sidecar.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from port.data.preprocess import CIFAR10_MEAN, CIFAR10_STD, Preprocess
from port.engines.trt_sidecar import card_from_sidecar, read_sidecar, sidecar_path
from port.export.sidecar import build_sidecar, write_sidecar
from port.ground.errors import ModelError
from port.models.card import ModelCard

A100 = ("NVIDIA A100-SXM4-80GB", (8, 0))


def _card() -> ModelCard:
    return ModelCard(
        arch="resnet18_cifar", num_classes=3, classes=["cat", "dog", "ship"],
        preprocess=Preprocess.for_size(32, CIFAR10_MEAN, CIFAR10_STD),
    )


def _sidecar(**change: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        engine_name="model_fp16.engine",
        inputs=[{"name": "input", "dtype": "float32", "shape": [-1, 3, 32, 32],
                 "profile": {"min": [1, 3, 32, 32], "opt": [16, 3, 32, 32],
                             "max": [32, 3, 32, 32]}}],
        outputs=[{"name": "logits", "dtype": "float32", "shape": [-1, 3]}],
        precision="fp16",
        tensorrt_version="10.3.0",
        gpu_name=A100[0],
        gpu_cc=A100[1],
        hardware_compatibility=None,
        version_compatible=False,
        source_onnx_sha256="ab" * 32,
        card=_card(),
        quantizer=None,
        engine_sha256="cd" * 32,
        build={"plan": {"path": "strongly-typed"}},
    )
    kwargs.update(change)
    return build_sidecar(**kwargs)


def test_sidecar_carries_what_an_app_needs_without_porter(tmp_path: Path) -> None:
    side = _sidecar(precision="int8", quantizer="modelopt")
    path = write_sidecar(sidecar_path(tmp_path / "model_int8.engine"), side)
    raw = json.loads(path.read_text())
    assert raw["inputs"][0]["name"] == "input"
    assert raw["inputs"][0]["profile"]["max"] == [32, 3, 32, 32]
    assert raw["outputs"][0] == {"name": "logits", "dtype": "float32", "shape": [-1, 3]}
    assert raw["precision"] == "int8" and raw["quantizer"] == "modelopt"
    assert raw["tensorrt_version"] == "10.3.0"
    assert raw["gpu"] == {"name": A100[0], "compute_capability": "8.0"}
    assert raw["classes"] == ["cat", "dog", "ship"]
    assert raw["preprocess"]["mean"] == list(CIFAR10_MEAN) and raw["preprocess"]["crop"] == 32
    assert raw["layout"] == "NCHW" and raw["source_onnx_sha256"] == "ab" * 32
    back = read_sidecar(path)
    assert back == raw
    assert card_from_sidecar(back) == _card()
    assert not list(tmp_path.glob(".*"))  # no temp file left behind by the atomic write


def test_profiles_are_kept_for_inputs_only_and_shapes_become_ints() -> None:
    side = _sidecar(
        inputs=[{"name": "input", "dtype": "float32", "shape": (-1, 3, 32, 32),
                 "profile": {"min": (1, 3, 32, 32), "opt": (16, 3, 32, 32),
                             "max": (32, 3, 32, 32)}}],
        outputs=[{"name": "logits", "dtype": "float32", "shape": (-1, 3),
                  "profile": {"min": (1, 3), "opt": (16, 3), "max": (32, 3)}}],
    )
    assert side["inputs"][0]["profile"]["opt"] == [16, 3, 32, 32]
    assert "profile" not in side["outputs"][0]
    assert json.loads(json.dumps(side)) == side


def test_an_incomplete_sidecar_is_never_written(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="lists no inputs or no outputs"):
        _sidecar(outputs=[])
    side = _sidecar()
    del side["tensorrt_version"]
    target = tmp_path / "m.engine.json"
    with pytest.raises(ModelError, match="has no 'tensorrt_version'"):
        write_sidecar(target, side)
    assert not target.exists()
