"""port.ground.atomic: the final name only ever holds a complete file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from port.ground.atomic import atomic_path, atomic_write_bytes, atomic_write_text


def test_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    assert atomic_write_text(target, "one") == 3
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_failure_inside_the_block_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("check failed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


# Whole-file replacement by rename is port.ground.atomic's job alone (DESIGN.md: one file-writing
# routine). The one exception swaps a complete directory tree into place, which port.ground.atomic's
# single-file writer does not do.
_RENAMES_A_DIRECTORY = {"port/data/archive.py"}


def test_only_port_atomic_replaces_files_by_rename() -> None:
    repo = Path(__file__).resolve().parents[1]
    offenders = []
    for path in sorted((repo / "port").rglob("*.py")):
        rel = path.relative_to(repo).as_posix()
        if rel == "port/ground/atomic.py" or rel in _RENAMES_A_DIRECTORY:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and (node.value.id, node.attr) in {("os", "replace"), ("os", "rename"),
                                                       ("tempfile", "mkstemp")}):
                offenders.append(f"{rel}:{node.lineno} {node.value.id}.{node.attr}")
    assert offenders == [], "write through port.ground.atomic instead: " + ", ".join(offenders)


def test_atomic_files_get_the_users_normal_mode(tmp_path: Path) -> None:
    """Not mkstemp's 0600: a model served by another user must be readable (umask decides)."""
    import os

    old = os.umask(0o022)
    try:
        new = tmp_path / "new.json"
        atomic_write_text(new, "{}")
        assert new.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / "kept.json"
        kept.write_text("x")
        kept.chmod(0o640)
        atomic_write_text(kept, "y")  # a re-write keeps the mode the file had
        assert kept.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
