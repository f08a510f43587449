"""What torchvision's ImageFolder would list, without torch: class folders, image files, the
files it leaves out, and the class-balanced subset of ``--limit``.

Used by training's datasets (:mod:`port.data.datasets`) and evaluation's streams
(:mod:`port.data.stream`) alike, so both see the same images in the same order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from port.ground.errors import DataError

# -- what torchvision's ImageFolder would list ---------------------------------------------------
# torchvision.datasets.folder.IMG_EXTENSIONS (tests/evaluate/test_stream.py checks they agree).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_NOTED: set[str] = set()  # folders whose skipped files were already reported by this process


def list_images(directory: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, ``(path, class index)`` samples) of an ImageFolder tree, in ImageFolder's
    order (classes sorted; ``os.walk`` sorted, following links; files sorted; image suffixes
    only), with the same one-line note about files that are left out."""
    from port.data.sources import class_dirs

    classes = class_dirs(directory)
    if not classes:
        raise DataError(f"{directory} has no class folders: put images in {directory}/<class>/")
    samples: list[tuple[str, int]] = []
    empty = []
    for index, name in enumerate(classes):
        found = 0
        for root, _, files in sorted(os.walk(directory / name, followlinks=True)):
            for fname in sorted(files):
                if fname.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(root, fname), index))
                    found += 1
        if not found:
            empty.append(name)
    if empty:
        raise DataError(f"{directory}: Found no valid file for the classes {', '.join(empty)}. "
                        f"Supported extensions are: {', '.join(IMG_EXTENSIONS)}: add images or "
                        "remove empty class folders")
    skipped = skipped_files(directory, {Path(p) for p, _ in samples}, classes)
    if skipped:
        note_skipped(directory, skipped)
    return classes, samples


def skipped_files(root: Path, used: set[Path], classes: list[str] | None = None) -> list[Path]:
    """Files in ``root``'s class folders that ImageFolder does not read (e.g. ``.gif``).

    Hidden files (``.DS_Store``) are not counted: nobody expects them to be images.
    """
    from port.data.sources import class_dirs

    names = class_dirs(root) if classes is None else classes
    return sorted(
        p for name in names for p in (root / name).rglob("*")
        if p.is_file() and not p.name.startswith(".") and p not in used
    )


def note_skipped(root: Path, skipped: list[Path]) -> None:
    """One line on stderr: how many files were left out, of which suffixes, and where."""
    import sys

    if str(root) in _NOTED:
        return
    _NOTED.add(str(root))
    suffixes = sorted({p.suffix.lower() or "(no suffix)" for p in skipped})
    sys.stderr.write(
        f"porter: note: {root}: skipped {len(skipped)} file(s) that are not images porter reads "
        f"({', '.join(suffixes)}; e.g. {skipped[0]}): convert them to "
        f"{'/'.join(IMG_EXTENSIONS[:3])}... to use them\n"
    )


def balanced_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """``limit`` sorted indices drawn class-balanced (round-robin over shuffled classes).

    Deterministic for a given ``seed``. Classes with too few images give their share to others.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    order = rng.permutation(len(classes))  # which classes get the remainder when uneven
    depth = max(len(p) for p in per_class)
    # Round k takes the k-th image of every class, so any prefix is as balanced as possible.
    picked = [per_class[c][k] for k in range(depth) for c in order if k < len(per_class[c])]
    return np.sort(np.asarray(picked[:limit], dtype=np.int64))
