"""sha256 of files and bytes: the one fingerprint the manifest, sidecars and checks share."""

from __future__ import annotations

import hashlib
import os

_CHUNK = 1 << 20  # 1 MiB reads keep hashing of multi-GB engines at constant memory


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
