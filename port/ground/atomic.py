"""Atomic file writes: a crash or a kill leaves either the old file or the new one, never half.

Every artifact porter records is written this way (temp file in the same directory, fsync,
``os.replace``, fsync of the directory), so the manifest can never register a torn file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Every temporary file of this module is named ``.<target name>.<random>.porter-tmp<suffix>``:
# what a killed writer leaves is recognisable, and the next writer of the run sweeps it
# (port.manifest.lock.sweep_leftovers).
TEMP_MARK = ".porter-tmp"


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename inside ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        # Some filesystems (FUSE, network mounts) refuse fsync on a directory: the rename has
        # still happened, so the write must not fail after the fact.
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` only on success.

    For writers that want a file name (``torch.save``, ``onnx.save``, ``savefig``). The temp
    file is fsynced before the rename and removed if the block raises.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f"{TEMP_MARK}{suffix}",
                                dir=target.parent)
    # mkstemp makes 0600 files; an artifact gets the mode a plain open() would give it (the
    # target's current mode, else 0666 minus the umask) so a service running as another user
    # can read the model, as with any file the user writes.
    os.fchmod(fd, _file_mode(target))
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)


def _umask() -> int:
    """The process umask, read without changing it where Linux exposes it."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting, restored at once
    os.umask(mask)
    return mask


def _file_mode(target: Path) -> int:
    """Permission bits for a new version of ``target``."""
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_umask()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> int:
    """Write ``data`` to ``path`` atomically; returns the number of bytes."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> int:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the number of bytes."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def replace_in_order(moves: list[tuple[Path, Path]]) -> None:
    """Move finished files into place, each fsynced first, in the order given, then fsync the
    folders: for artifacts made of several files (an OpenVINO IR's ``.bin`` then ``.xml``),
    where the file a reader opens goes last so it never names a weights file not yet there."""
    for source, _ in moves:
        with open(source, "rb+") as handle:
            os.fsync(handle.fileno())
    for source, target in moves:
        os.replace(source, target)
    for folder in dict.fromkeys(target.parent for _, target in moves):
        fsync_dir(folder)

