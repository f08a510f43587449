"""Extracting ImageFolder archives: per-class limits, atomic result, refusal of unsafe members."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from port.data.archive import extract_imagefolder_archive
from port.ground.errors import DataError


def _tar(path: Path, members: dict[str, bytes], links: tuple[tuple[str, str], ...] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _members(prefix: str = "") -> dict[str, bytes]:
    out = {}
    for split, n in (("train", 4), ("test", 3)):
        for cls in ("cat", "dog"):
            for i in range(n):
                out[f"{prefix}{split}/{cls}/{i}.jpg"] = f"{split}{cls}{i}".encode()
    out[f"{prefix}README.md"] = b"not an image"
    return out


def test_full_and_per_class_extraction(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", _members())
    full = extract_imagefolder_archive(archive, tmp_path / "full")
    assert len(_tree(full)) == 14 and "README.md" not in _tree(full)
    assert (full / "test/dog/2.jpg").read_bytes() == b"testdog2"

    some = extract_imagefolder_archive(archive, tmp_path / "some", {"train": 2, "test": 1})
    assert _tree(some) == ["test/cat/0.jpg", "test/dog/0.jpg", "train/cat/0.jpg",
                           "train/cat/1.jpg", "train/dog/0.jpg", "train/dog/1.jpg"]
    # Splits not named keep everything.
    train_only = extract_imagefolder_archive(archive, tmp_path / "t", {"train": 1})
    assert len(_tree(train_only)) == 2 + 6
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]  # no temp dirs left


def test_leading_folder_is_dropped(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", _members("cifar/"))
    out = extract_imagefolder_archive(archive, tmp_path / "out", {"train": 1, "test": 1})
    assert _tree(out) == ["test/cat/0.jpg", "test/dog/0.jpg", "train/cat/0.jpg", "train/dog/0.jpg"]


def test_existing_destination_is_reused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", _members())
    dest = extract_imagefolder_archive(archive, tmp_path / "out", {"train": 1, "test": 1})
    archive.unlink()  # a second call does not even need the archive
    assert extract_imagefolder_archive(archive, dest) == dest


@pytest.mark.parametrize("name", ["../evil/train/a/x.jpg", "/abs/train/a/x.jpg"])
def test_path_traversal_is_refused(tmp_path: Path, name: str) -> None:
    archive = _tar(tmp_path / "a.tar.gz", {"train/a/ok.jpg": b"1", name: b"2"})
    with pytest.raises(DataError, match="unsafe path"):
        extract_imagefolder_archive(archive, tmp_path / "x" / "out")
    assert not (tmp_path / "x" / "out").exists() and not (tmp_path / "evil").exists()
    assert list((tmp_path / "x").iterdir()) == []  # the partial tree was removed


def test_links_are_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", {"train/a/ok.jpg": b"1"},
                   links=(("train/a/l.jpg", "/etc/passwd"),))
    with pytest.raises(DataError, match="link"):
        extract_imagefolder_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_archives(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        extract_imagefolder_archive(tmp_path / "missing.tar.gz", tmp_path / "o1")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="not a readable"):
        extract_imagefolder_archive(junk, tmp_path / "o2")
    good = _tar(tmp_path / "good.tar.gz", _members()).read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="not a readable"):
        extract_imagefolder_archive(cut, tmp_path / "o3")
    empty = _tar(tmp_path / "empty.tar.gz", {"README.md": b"x"})
    with pytest.raises(DataError, match="no <split>/<class>/<file>"):
        extract_imagefolder_archive(empty, tmp_path / "o4")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))
