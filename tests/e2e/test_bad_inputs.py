"""Bad inputs end in exit 2 with one clear line on stderr, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e.helpers import TINY_TRAIN, assert_usage_error, porter


def _folder(root: Path, classes: int, per_class: int = 4, size: int = 32) -> Path:
    """A small ImageFolder tree with train/ and val/ splits of solid-colour images."""
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (size, size), (25 * c, 10 * i, 100)).save(d / f"{i}.png")
    return root


def test_missing_data_dir(tmp_path: Path) -> None:
    result = porter("train", "--run", tmp_path / "run", "--data", tmp_path / "nope", *TINY_TRAIN)
    assert_usage_error(result, "nope")


def test_unknown_arch_lists_choices(tmp_path: Path) -> None:
    result = porter("train", "--run", tmp_path / "run", "--data", "synthetic",
                    "--arch", "resnet7")
    assert_usage_error(result, "resnet7", "resnet18")


def test_unknown_flag_is_one_line(tmp_path: Path) -> None:
    assert_usage_error(porter("train", "--run", tmp_path, "--epoch", "3"), "--epoch")


def test_unknown_export_target(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    assert_usage_error(porter("export", "--run", tmp_path / "run", "--to", "tflite"), "tflite")


def test_run_without_manifest(tmp_path: Path) -> None:
    assert_usage_error(porter("evaluate", "--run", tmp_path / "empty"), "porter train")
    assert_usage_error(porter("status", "--run", tmp_path / "empty"), "manifest")


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data", classes=2)
    bad = data / "train" / "class1" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    result = porter("train", "--run", tmp_path / "run", "--data", data, "--epochs", "1",
                    *TINY_TRAIN)
    assert_usage_error(result, "broken.jpg", "remove or replace", alone=False)


def test_truncated_checkpoint_import(tmp_path: Path) -> None:
    import torch

    from port.models.registry import create_model

    path = tmp_path / "weights.pt"
    torch.save(create_model("resnet18_cifar", 10, width=0.25).state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = porter("import", path, "--run", tmp_path / "run", "--arch", "resnet18_cifar",
                    "--width", "0.25", "--data", "synthetic")
    assert_usage_error(result, "weights.pt")
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_pickled_checkpoint_is_refused(tmp_path: Path) -> None:
    import torch

    from port.models.registry import create_model

    path = tmp_path / "whole_model.pt"
    torch.save(create_model("resnet18_cifar", 10, width=0.25), path)  # a pickled nn.Module
    result = porter("import", path, "--run", tmp_path / "run", "--arch", "resnet18_cifar",
                    "--width", "0.25", "--data", "synthetic")
    assert_usage_error(result, "needs arbitrary unpickling", "runs code", "not corrupt")


def test_class_count_mismatch_on_import(tmp_path: Path) -> None:
    import torch

    from port.models.registry import create_model

    path = tmp_path / "weights.pt"
    torch.save(create_model("resnet18_cifar", 100, width=0.25).state_dict(), path)
    result = porter("import", path, "--run", tmp_path / "run", "--arch", "resnet18_cifar",
                    "--width", "0.25", "--data", "synthetic")
    assert_usage_error(result, "10")


def test_truncated_onnx_import(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07\x12\x07pytorch" + b"\x00" * 10)
    result = porter("import", path, "--run", tmp_path / "run", "--data", "synthetic",
                    "--image-size", "32")
    assert_usage_error(result, "model.onnx")


@pytest.mark.slow
def test_evaluate_with_other_class_count_data(tmp_path: Path) -> None:
    import torch

    from port.models.registry import create_model

    path = tmp_path / "weights.pt"
    torch.save(create_model("resnet18_cifar", 10, width=0.25).state_dict(), path)
    run = tmp_path / "run"
    assert porter("import", path, "--run", run, "--arch", "resnet18_cifar", "--width", "0.25",
                  "--data", "synthetic").code == 0
    before = (run / "manifest.json").read_text()
    other = _folder(tmp_path / "three", classes=3)
    result = porter("evaluate", "--run", run, "--data", other)
    assert_usage_error(result, "3 classes", "10")
    assert (run / "manifest.json").read_text() == before  # nothing recorded was lost
    assert json.loads(before)["artifacts"][0]["stage"] == "import"
