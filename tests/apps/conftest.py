"""One small real run shared by the app, C++ and serving tests: a narrow CIFAR ResNet trained
for one epoch on real CIFAR-10 JPEGs, exported to FP32 ONNX by the real CLI (in-process)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from port.cli import app

TRAIN = ["--epochs", "1", "--limit", "200", "--val-limit", "100", "--arch", "resnet18_cifar",
         "--width", "0.125", "--batch-size", "64", "--workers", "0", "--seed", "0",
         "--warmup-epochs", "0"]


@dataclass(frozen=True)
class AppRun:
    """The run directory, its FP32 ONNX, and real validation images (paths and classes)."""

    run: Path
    onnx: Path
    images: list[Path]
    classes: list[str]


def porter_in_process(*args: str | Path) -> None:
    """The real CLI, in this process (torch is imported once for the whole session)."""
    app(args=[str(a) for a in args], prog_name="porter", standalone_mode=False)


@pytest.fixture(scope="session")
def app_run(cifar_subset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AppRun:
    """Train (1 epoch) and export a tiny model on the real CIFAR-10 subset, once."""
    run = tmp_path_factory.mktemp("apps") / "run"
    porter_in_process("train", "--run", run, "--data", cifar_subset_dir, *TRAIN)
    porter_in_process("export", "--run", run, "--to", "onnx")
    val = cifar_subset_dir / "test"
    classes = sorted(p.name for p in val.iterdir() if p.is_dir())
    # Two images per class, in a fixed order: real JPEGs of every class.
    images = [sorted((val / c).iterdir())[i] for c in classes for i in range(2)]
    return AppRun(run, run / "model.fp32.onnx", images, classes)
