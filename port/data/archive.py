"""Unpacking an ImageFolder ``.tar.gz`` (optionally a few files per class) in one streaming pass.

Used by tests, benchmarks and examples to get a small real data set out of
``../shared/data/cifar10-jpeg.tar.gz`` without unpacking its 60,000 files.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from collections import Counter
from pathlib import Path, PurePosixPath

from port.ground.errors import DataError

SPLIT_NAMES = ("train", "val", "test")


def _member_parts(archive: Path, member: tarfile.TarInfo) -> tuple[str, str, str] | None:
    """``(split, class, file)`` of an image member, ``None`` for members to skip.

    Members are allowed a leading folder (``cifar10/train/cat/1.jpg``). Absolute paths, ``..``
    and links are refused outright: an archive that contains them is not a plain data set.
    """
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise DataError(
            f"{archive} contains an unsafe path '{member.name}': use a trusted ImageFolder archive"
        )
    if member.issym() or member.islnk():
        raise DataError(
            f"{archive} contains a link '{member.name}': use an archive of plain image files"
        )
    if not member.isfile():
        return None  # folders are re-created from file paths; devices/fifos are ignored
    parts = [p for p in path.parts if p not in ("", ".")]
    if len(parts) < 3 or parts[-3] not in SPLIT_NAMES or parts[-1].startswith("."):
        return None
    return parts[-3], parts[-2], parts[-1]


def _stream_into(
    archive: Path, out: Path, per_class: dict[str, int] | None
) -> int:
    """Write the wanted image members of ``archive`` under ``out``; returns how many."""
    kept: Counter[tuple[str, str]] = Counter()
    written = 0
    # "r|gz" reads the archive as a stream: one pass, no seeking, no member index in memory.
    with tarfile.open(archive, mode="r|gz") as tar:
        for member in tar:
            parts = _member_parts(archive, member)
            if parts is None:
                continue
            split, cls, name = parts
            quota = None if per_class is None else per_class.get(split)
            if quota is not None and kept[split, cls] >= quota:
                continue
            src = tar.extractfile(member)
            if src is None:
                continue
            target = out / split / cls / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            kept[split, cls] += 1
            written += 1
    return written


def extract_imagefolder_archive(
    archive: Path, dest: Path, per_class: dict[str, int] | None = None
) -> Path:
    """Extract the ImageFolder tree in ``archive`` (``.tar.gz``) to ``dest`` and return ``dest``.

    ``per_class`` maps a split (``train``, ``val``, ``test``) to how many files to keep per class:
    the first ones in archive order; splits it does not name are kept whole. Members outside
    ``<split>/<class>/<file>`` are skipped; unsafe members (absolute, ``..``, links) raise
    ``DataError``.

    The tree is written to a temporary sibling folder and renamed into place, so ``dest`` only
    ever exists complete. If ``dest`` already exists it is returned as is (reuse; a concurrent
    extraction that finishes second discards its own copy).
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        return dest
    if not archive.is_file():
        raise DataError(f"archive {archive} not found: check the path")
    if per_class is not None:
        bad = {k: v for k, v in per_class.items() if k not in SPLIT_NAMES or v < 0}
        if bad:
            raise DataError(
                f"per_class {bad} is invalid: use split names {SPLIT_NAMES} with counts >= 0"
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        try:
            written = _stream_into(archive, tmp, per_class)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise DataError(
                f"{archive} is not a readable .tar.gz ({exc}): download or copy it again"
            ) from exc
        if written == 0:
            raise DataError(
                f"{archive} has no <split>/<class>/<file> members: pack it as an ImageFolder "
                "tree (train/<class>/*, val/<class>/* or test/<class>/*)"
            )
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.exists():
                raise
            # Another process renamed its complete copy first; it is as good as ours.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
