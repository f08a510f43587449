"""Engine sidecars: build, write, read back, and the TensorRT/GPU compatibility rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from port.data.preprocess import CIFAR10_MEAN, CIFAR10_STD, Preprocess
from port.errors import ModelError
from port.export.sidecar import (
    build_sidecar,
    card_from_sidecar,
    check_compatible,
    parse_version,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from port.models.card import ModelCard

A100 = ("NVIDIA A100-SXM4-80GB", (8, 0))
L4 = ("NVIDIA L4", (8, 9))
T4 = ("Tesla T4", (7, 5))


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


def test_sidecar_path_appends_json_to_the_engine_name() -> None:
    assert sidecar_path(Path("runs/r/model_fp16.engine")) == Path("runs/r/model_fp16.engine.json")


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


def test_read_sidecar_refuses_missing_broken_and_incomplete_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        read_sidecar(tmp_path / "none.engine.json")
    bad = tmp_path / "bad.engine.json"
    bad.write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_sidecar(bad)
    side = _sidecar()
    del side["tensorrt_version"]
    bad.write_text(json.dumps(side))
    with pytest.raises(ModelError, match="has no 'tensorrt_version'"):
        read_sidecar(bad)
    side = _sidecar()
    side["gpu"]["compute_capability"] = "eight"
    bad.write_text(json.dumps(side))
    with pytest.raises(ModelError, match=r"MAJOR\.MINOR"):
        read_sidecar(bad)
    side = _sidecar()
    side["format"] = 99
    bad.write_text(json.dumps(side))
    with pytest.raises(ModelError, match="upgrade porter"):
        read_sidecar(bad)


def test_parse_version() -> None:
    assert parse_version("10.3.0.26") == (10, 3, 0, 26)
    assert parse_version("10.8.0.post1") == (10, 8, 0)
    assert parse_version("11.0.0") == (11, 0, 0)


# -- compatibility ---------------------------------------------------------------------------
def test_same_version_and_gpu_loads() -> None:
    check_compatible(_sidecar(), "10.3.0", A100[1], A100[0])
    check_compatible(_sidecar(), "10.3.0.26", A100[1], A100[0])  # build number on one side only
    # Another board with the same compute capability: TensorRT loads it (and may warn).
    check_compatible(_sidecar(), "10.3.0", (8, 0), "NVIDIA A100-PCIE-40GB")


def test_another_tensorrt_version_is_refused_naming_both_sides_and_the_fix() -> None:
    with pytest.raises(ModelError) as info:
        check_compatible(_sidecar(), "10.8.0", A100[1], A100[0])
    msg = str(info.value)
    assert "another TensorRT version" in msg
    assert "TensorRT 10.3.0" in msg and "TensorRT 10.8.0" in msg
    assert "rebuild it here" in msg and "--version-compatible" in msg
    assert "\n" not in msg


def test_an_older_runtime_is_refused_and_no_flag_is_offered() -> None:
    with pytest.raises(ModelError) as info:
        check_compatible(_sidecar(tensorrt_version="10.8.0"), "10.3.0", A100[1], A100[0])
    assert "--version-compatible" not in str(info.value)
    with pytest.raises(ModelError):
        check_compatible(_sidecar(tensorrt_version="10.8.0", version_compatible=True), "10.3.0",
                         A100[1], A100[0])


def test_version_compatible_engines_load_in_newer_runtimes_of_documented_majors() -> None:
    vc = _sidecar(version_compatible=True)
    check_compatible(vc, "10.8.0", A100[1], A100[0])
    check_compatible(vc, "11.1.0", A100[1], A100[0])  # TensorRT 10 VC plans run on 11
    with pytest.raises(ModelError, match="another TensorRT version"):
        check_compatible(_sidecar(version_compatible=True, tensorrt_version="10.3.0"), "12.0.0",
                         A100[1], A100[0])


def test_another_gpu_is_refused_and_ampere_plus_is_offered_between_ampere_gpus() -> None:
    with pytest.raises(ModelError) as info:
        check_compatible(_sidecar(), "10.3.0", L4[1], L4[0])
    msg = str(info.value)
    assert "another GPU" in msg and A100[0] in msg and L4[0] in msg
    assert "compute capability 8.0" in msg and "compute capability 8.9" in msg
    assert "--hardware-compatibility ampere+" in msg


def test_ampere_plus_engines_run_on_any_ampere_or_newer_gpu_only() -> None:
    hc = _sidecar(hardware_compatibility="ampere+")
    check_compatible(hc, "10.3.0", L4[1], L4[0])
    check_compatible(hc, "10.3.0", (9, 0), "NVIDIA H100")
    with pytest.raises(ModelError) as info:
        check_compatible(hc, "10.3.0", T4[1], T4[0])
    assert "--hardware-compatibility" not in str(info.value)  # nothing makes it run on Turing


def test_same_cc_engines_need_the_same_compute_capability() -> None:
    sc = _sidecar(hardware_compatibility="same-cc", gpu_name=L4[0], gpu_cc=L4[1])
    check_compatible(sc, "10.3.0", (8, 9), "NVIDIA GeForce RTX 4090")
    with pytest.raises(ModelError, match="another GPU"):
        check_compatible(sc, "10.3.0", A100[1], A100[0])


def test_both_mismatches_are_named_together() -> None:
    with pytest.raises(ModelError) as info:
        check_compatible(_sidecar(), "10.8.0", L4[1], L4[0])
    msg = str(info.value)
    assert "another TensorRT version and another GPU" in msg
    assert "--version-compatible" in msg and "--hardware-compatibility ampere+" in msg


def test_flags_are_offered_only_when_they_fix_every_mismatch() -> None:
    # Older runtime (no flag helps) on another Ampere GPU (a flag would help): rebuild only.
    with pytest.raises(ModelError) as info:
        check_compatible(_sidecar(tensorrt_version="10.8.0"), "10.3.0", L4[1], L4[0])
    assert str(info.value).endswith("rebuild it here with `porter export --to trt`")
