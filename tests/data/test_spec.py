"""--data parsing: every text form, canonical text round trips, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from port.data.sources import default_data_root
from port.data.spec import DataSpec, parse_data_spec
from port.ground.errors import DataError


def _folder(root: Path, val: str = "val", classes: tuple[str, ...] = ("a", "b")) -> Path:
    for split in ("train", val):
        for c in classes:
            (root / split / c).mkdir(parents=True)
    return root


def test_synthetic_and_cifar_forms(tmp_path: Path) -> None:
    assert parse_data_spec("synthetic") == DataSpec("synthetic", None, False)
    c10 = parse_data_spec("cifar10", download=True)
    assert (c10.kind, c10.root, c10.download) == ("cifar10", None, True)
    assert c10.data_root == default_data_root("cifar10") == Path.home() / ".cache/porter/cifar10"
    c100 = parse_data_spec(f"cifar100:{tmp_path}")
    assert (c100.kind, c100.root) == ("cifar100", tmp_path.resolve())
    assert c100.data_root == tmp_path.resolve()


@pytest.mark.parametrize("text", ["synthetic", "cifar10", "cifar100", "cifar10:/data/c10"])
def test_canonical_text_round_trips(text: str) -> None:
    spec = parse_data_spec(text)
    assert str(spec) == text
    assert parse_data_spec(str(spec)) == spec


def test_folder_with_val_or_test(tmp_path: Path) -> None:
    a = _folder(tmp_path / "a", val="val")
    b = _folder(tmp_path / "b", val="test")
    for root in (a, b):
        spec = parse_data_spec(str(root))
        assert (spec.kind, spec.root) == ("folder", root.resolve())
        assert str(spec) == str(root.resolve())
        assert parse_data_spec(str(spec)) == spec


def test_relative_folder_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _folder(tmp_path / "imgs")
    monkeypatch.chdir(tmp_path)
    assert parse_data_spec("imgs").root == (tmp_path / "imgs").resolve()


def _error(text: str) -> str:
    with pytest.raises(DataError) as info:
        parse_data_spec(text)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_errors_say_what_and_how(tmp_path: Path) -> None:
    assert "not found" in _error(str(tmp_path / "nope"))
    assert "unknown data spec 'imagenet'" in _error("imagenet")
    assert "cifar10:DIR" in _error("cifar10:")

    (tmp_path / "no_train" / "val" / "a").mkdir(parents=True)
    assert "no train/" in _error(str(tmp_path / "no_train"))

    (tmp_path / "no_val" / "train" / "a").mkdir(parents=True)
    assert "no val/ or test/" in _error(str(tmp_path / "no_val"))

    (tmp_path / "no_classes" / "train").mkdir(parents=True)
    (tmp_path / "no_classes" / "val").mkdir(parents=True)
    assert "no class folders" in _error(str(tmp_path / "no_classes"))

    (tmp_path / "file.txt").write_text("x")
    assert "not a directory" in _error(str(tmp_path / "file.txt"))


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(DataError, match="unknown data kind"):
        DataSpec("imagenet")
