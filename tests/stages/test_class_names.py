"""Class names, not only their count, must match between the model and the data (issue 8, item 6).

Driven through the real CLI on ImageFolders made of real CIFAR-10 JPEGs: one with CIFAR's class
folders (the model is imported with them) and one with as many classes under other names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from port.data.preprocess import CIFAR10_MEAN, CIFAR10_STD, Preprocess
from port.ground.errors import UsageError
from port.models.card import ModelCard
from port.models.registry import create_model
from port.stages.common import check_classes
from tests.inprocess import cli

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cli(*args: str | Path) -> tuple[int, str, str]:
    """``porter ARGS`` in this process: (exit code, stdout, stderr)."""
    outcome = cli(*args)
    return outcome.code, outcome.out, outcome.err


def _one_error_line(err: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("porter: error: "), err[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _folder(source: Path, out: Path, rename: dict[str, str], per_class: int = 2) -> Path:
    """A small ImageFolder (train/ and val/) of real JPEGs, class folders renamed by ``rename``."""
    for split, src in (("train", "train"), ("val", "test")):
        for name in NAMES:
            target = out / split / rename.get(name, name)
            target.mkdir(parents=True)
            for jpeg in sorted((source / src / name).iterdir())[:per_class]:
                shutil.copyfile(jpeg, target / jpeg.name)
    return out


@pytest.fixture(scope="module")
def imported_run(cifar_subset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A narrow resnet18_cifar imported with CIFAR-10's class names (from --data)."""
    base = tmp_path_factory.mktemp("names")
    data = _folder(cifar_subset_dir, base / "cifar", {})
    torch.manual_seed(0)
    weights = base / "w.pt"
    torch.save(create_model("resnet18_cifar", 10, width=0.125).state_dict(), weights)
    code, _, err = _cli("import", weights, "--run", base / "run", "--arch", "resnet18_cifar",
                        "--width", "0.125", "--data", data)
    assert code == 0, err
    return base / "run"


def test_other_names_refused_at_evaluate_then_accepted_when_asked(
        imported_run: Path, cifar_subset_dir: Path, tmp_path: Path) -> None:
    # Same count, same order, other names: "plane" where the model says "airplane".
    other = _folder(cifar_subset_dir, tmp_path / "other",
                    {"airplane": "a_plane", "automobile": "b_car"})
    before = (imported_run / "manifest.json").read_text()
    code, _, err = _cli("evaluate", "--run", imported_run, "--data", other, "--batch-sizes", "1")
    assert code == 2
    _one_error_line(err, "2 of 10 differ", "class 0 is 'airplane' in the model but 'a_plane' "
                    "in the data", "--ignore-class-names")
    assert (imported_run / "manifest.json").read_text() == before  # nothing recorded

    code, out, err = _cli("evaluate", "--run", imported_run, "--data", other,
                          "--batch-sizes", "1", "--ignore-class-names")
    assert code == 0, err
    assert "2 class names of the data differ" in out
    report = next(a for a in json.loads((imported_run / "manifest.json").read_text())["artifacts"]
                  if a["stage"] == "evaluate")
    assert report["params"]["ignore_class_names"] is True
    assert report["params"]["class_names_differ"] == 2


def test_other_names_refused_for_the_export_parity_check(
        imported_run: Path, cifar_subset_dir: Path, tmp_path: Path) -> None:
    # The labels' order changes with the names: "zebra" sorts last, so every class after
    # "airplane" moves up one position.
    other = _folder(cifar_subset_dir, tmp_path / "zebra", {"airplane": "zebra"})
    code, _, err = _cli("export", "--run", imported_run, "--to", "onnx", "--data", other)
    assert code == 2
    line = _one_error_line(err, "10 of 10 differ", "class 0 is 'airplane' in the model but "
                           "'automobile' in the data")
    assert "--ignore-class-names" not in line  # export has no such flag: not offered
    assert not list(imported_run.glob("*.onnx"))


def _card(classes: list[str]) -> ModelCard:
    return ModelCard(arch="resnet9", num_classes=len(classes), classes=classes,
                     preprocess=Preprocess.for_size(32, CIFAR10_MEAN, CIFAR10_STD),
                     model_kwargs={})


def test_names_are_compared_only_when_the_model_has_real_ones() -> None:
    # An import without --classes/--data makes up class_0..: those are no names to compare.
    assert check_classes(_card([f"class_{i}" for i in range(3)]), ["x", "y", "z"], "D") == 0
    # Case and blanks aside, equal names are equal.
    assert check_classes(_card(["Cat", "dog "]), ["cat", "dog"], "D") == 0
    # The same names in another order label the images wrongly: refused.
    with pytest.raises(UsageError, match="class 0 is 'cat' in the model but 'dog' in the data"):
        check_classes(_card(["cat", "dog"]), ["dog", "cat"], "D")
    assert check_classes(_card(["cat", "dog"]), ["dog", "cat"], "D", ignore_names=True) == 2
