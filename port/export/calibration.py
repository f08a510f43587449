"""Which images calibrate an INT8 model, chosen reproducibly and recorded in the manifest.

The choice must be the same on every machine and every numpy/Python version, so that a
calibration can be repeated and audited from the manifest alone. Pseudo-random generators
(``numpy.random.Generator.choice``, ``random.sample``) do not promise a stable stream across
versions, so each index is ranked by a SHA-256 of ``(seed, index)`` instead: a pure function of its
inputs that no library upgrade can change.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from port.ground.digest import sha256_bytes
from port.ground.errors import DataError, UsageError


@dataclass(frozen=True)
class CalibrationSet:
    """The images of a split chosen for calibration, and a fingerprint of that choice."""

    indices: list[int]  # ascending positions in the split (ascending keeps file reads local)
    seed: int
    count: int
    sha256: str  # of the index list, see index_list_sha256


def index_list_sha256(indices: list[int]) -> str:
    """SHA-256 of the indices written as comma-separated decimal integers (UTF-8), e.g. ``3,17,42``.

    A text form rather than numpy bytes, so anyone can recompute it without knowing dtypes.
    """
    return sha256_bytes(",".join(str(int(i)) for i in indices).encode())


def _rank(seed: int, index: int) -> bytes:
    # Raw digest bytes as a sort key (a seeded shuffle), not a fingerprint: hashlib directly.
    return hashlib.sha256(f"{seed}:{index}".encode()).digest()


def select_calibration(num_images: int, count: int, seed: int) -> CalibrationSet:
    """Choose ``count`` distinct images out of ``num_images``, deterministically from ``seed``.

    The same ``(num_images, count, seed)`` gives the same indices everywhere. Asking for more
    images than the split holds is refused rather than silently reduced (a flag is never
    rewritten behind the user's back).
    """
    if num_images <= 0:
        raise DataError("the calibration split holds no images: point --calib-data at a split "
                        "with images")
    if count <= 0:
        raise UsageError(f"--calib-images must be at least 1 (got {count})")
    if count > num_images:
        raise UsageError(f"--calib-images {count} is more than the {num_images} images in the "
                         f"calibration split: pass --calib-images {num_images} or fewer")
    # A hash per image costs ~1 s per million images: fine for any split porter calibrates from.
    ranked = sorted(range(num_images), key=lambda i: _rank(seed, i))
    indices = sorted(ranked[:count])
    return CalibrationSet(indices=indices, seed=int(seed), count=count,
                          sha256=index_list_sha256(indices))


def calibration_record(spec_text: str, cs: CalibrationSet) -> dict[str, Any]:
    """What the manifest keeps about a calibration: enough to redraw and verify the same images."""
    return {"spec": spec_text, "count": cs.count, "seed": cs.seed, "indices_sha256": cs.sha256}
