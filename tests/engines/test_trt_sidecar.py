"""Reading engine sidecars and the TensorRT/GPU compatibility rules (port/engines/trt_sidecar.py).

The sidecars here are written out by hand, in the format an app reads; making them from a build
is tested with the writer in tests/export/test_sidecar.py.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from port.data.preprocess import CIFAR10_MEAN, CIFAR10_STD, Preprocess
from port.engines.trt_sidecar import (
    card_from_sidecar,
    check_compatible,
    parse_cc,
    parse_version,
    read_sidecar,
    sidecar_path,
    validate_sidecar,
)
from port.ground.errors import ModelError
from port.models.card import ModelCard

A100 = ("NVIDIA A100-SXM4-80GB", (8, 0))
L4 = ("NVIDIA L4", (8, 9))
T4 = ("Tesla T4", (7, 5))


def _card() -> ModelCard:
    return ModelCard(
        arch="resnet18_cifar", num_classes=3, classes=["cat", "dog", "ship"],
        preprocess=Preprocess.for_size(32, CIFAR10_MEAN, CIFAR10_STD),
    )


def _sidecar(*, tensorrt_version: str = "10.3.0", gpu: tuple[str, tuple[int, int]] = A100,
             hardware_compatibility: str | None = None,
             version_compatible: bool = False) -> dict[str, Any]:
    """A complete sidecar of an FP16 engine built with TensorRT ``tensorrt_version`` on ``gpu``."""
    return {
        "format": 1,
        "engine": "model.fp16.engine",
        "engine_sha256": "cd" * 32,
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 3, 32, 32],
                    "profile": {"min": [1, 3, 32, 32], "opt": [16, 3, 32, 32],
                                "max": [32, 3, 32, 32]}}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 3]}],
        "layout": "NCHW",
        "precision": "fp16",
        "quantizer": None,
        "tensorrt_version": tensorrt_version,
        "gpu": {"name": gpu[0], "compute_capability": f"{gpu[1][0]}.{gpu[1][1]}"},
        "hardware_compatibility": hardware_compatibility,
        "version_compatible": version_compatible,
        "source_onnx_sha256": "ab" * 32,
        "card": _card().to_dict(),
        "build": {},
    }


def _write(tmp_path: Path, sidecar: dict[str, Any]) -> Path:
    path = tmp_path / "model.fp16.engine.json"
    path.write_text(json.dumps(sidecar))
    return path


def test_sidecar_path_appends_json_to_the_engine_name() -> None:
    assert sidecar_path(Path("runs/r/model.fp16.engine")) == Path("runs/r/model.fp16.engine.json")
    assert sidecar_path("m.plan") == Path("m.plan.json")


def test_a_complete_sidecar_reads_back_with_its_card(tmp_path: Path) -> None:
    side = _sidecar()
    back = read_sidecar(_write(tmp_path, side))
    assert back == side
    assert card_from_sidecar(back) == _card()


def test_read_sidecar_refuses_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found: rebuild the engine"):
        read_sidecar(tmp_path / "none.engine.json")
    bad = tmp_path / "bad.engine.json"
    bad.write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_sidecar(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ModelError, match="not a JSON object"):
        read_sidecar(bad)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("tensorrt_version"), "has no 'tensorrt_version'"),
        (lambda s: s.update(version_compatible="yes"), "'version_compatible' has the wrong type"),
        (lambda s: s["gpu"].update(compute_capability="eight"), r"MAJOR\.MINOR"),
        (lambda s: s.update(format=99), "upgrade porter"),
        (lambda s: s.update(outputs=[]), "lists no inputs or no outputs"),
        (lambda s: s["inputs"][0].pop("dtype"), "lacks 'dtype'"),
        (lambda s: s["inputs"][0]["profile"].pop("max"), "incomplete profile"),
        (lambda s: s["gpu"].pop("name"), "'gpu' needs 'name'"),
        (lambda s: s["card"].pop("classes"), "model card is incomplete"),
    ],
)
def test_incomplete_sidecars_are_refused_naming_the_problem(tmp_path: Path, edit: Any,
                                                            message: str) -> None:
    side = copy.deepcopy(_sidecar())
    edit(side)
    with pytest.raises(ModelError, match=message) as info:
        read_sidecar(_write(tmp_path, side))
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match=message):
        validate_sidecar(side)


def test_parse_cc() -> None:
    assert parse_cc("8.6") == (8, 6)
    assert parse_cc((9, 0)) == (9, 0)
    with pytest.raises(ModelError, match=r"MAJOR\.MINOR"):
        parse_cc("sm86")


def test_parse_version_is_the_shared_parser_but_strict() -> None:
    assert parse_version("10.3.0.26") == (10, 3, 0, 26)
    assert parse_version("10.8.0.post1") == (10, 8, 0)
    assert parse_version("11.0.0") == (11, 0, 0)
    # The shared parser returns () here; a sidecar's version without digits is broken.
    with pytest.raises(ModelError, match="'unknown' is not a version number"):
        parse_version("unknown")


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
        check_compatible(vc, "12.0.0", A100[1], A100[0])


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
    sc = _sidecar(hardware_compatibility="same-cc", gpu=L4)
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
