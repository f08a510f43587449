"""The built-in synthetic set: 10 classes of 32x32 RGB shapes and textures, offline and fixed.

It exists so that every stage (train, export, INT8 calibration, parity checks) can run anywhere
without a download, on data a small ResNet really has to learn: each class is a shape or texture
drawn with random position, size, rotation, thickness/period, colours, background shading and
pixel noise. The images come from a fixed seed that has nothing to do with the training seed, so
the val split is the same for every run and every machine.

Generation is vectorised numpy (about 0.1 s for all 6,000 images) and cached once per process.
"""

from __future__ import annotations

import functools

import numpy as np

CLASSES = (
    "disc",
    "square",
    "triangle",
    "ring",
    "cross",
    "hstripes",
    "vstripes",
    "checkerboard",
    "gradient",
    "dots",
)
SPLIT_SIZES = {"train": 5000, "val": 1000}  # 500 and 100 images per class
IMAGE_SIZE = 32
# Fixed seeds, one per split, so train and val are disjoint draws and val never depends on the
# training seed. Changing them changes the data set: don't.
_SEEDS = {"train": 0x5EED_7A1, "val": 0x5EED_0A1}
_NOISE_STD = 0.06  # pixel noise (fraction of full scale): enough that edges are not trivial


def _colours(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background colours, (n, 1, 1, 3) in [0, 1], at least 0.25 apart per channel.

    The background is the foreground shifted by 0.25-0.75 around the colour circle, so no class
    is ever drawn invisibly (same colour on same colour) yet colour alone says nothing.
    """
    fg = rng.uniform(0.0, 1.0, size=(n, 1, 1, 3))
    bg = (fg + rng.uniform(0.25, 0.75, size=(n, 1, 1, 3))) % 1.0
    return fg, bg


def _coverage(signed_dist: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance in pixels (negative inside)."""
    return np.clip(0.5 - signed_dist, 0.0, 1.0)


def _class_masks(label: int, rng: np.random.Generator, n: int) -> np.ndarray:
    """Foreground coverage, (n, 32, 32) in [0, 1], of ``n`` random images of class ``label``."""
    s = IMAGE_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
    yy, xx = yy[None], xx[None]

    def param(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, size=(n, 1, 1))

    name = CLASSES[label]
    if name in ("disc", "square", "triangle", "ring", "cross"):
        # Shapes: a random centre kept well inside the frame, random size and rotation.
        r = param(6.0, 12.0)
        cx = rng.uniform(r, s - r)
        cy = rng.uniform(r, s - r)
        theta = param(0.0, 2 * np.pi)
        dx, dy = xx - cx, yy - cy
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        if name == "disc":
            return _coverage(np.hypot(u, v) - r)
        if name == "square":
            return _coverage(np.maximum(np.abs(u), np.abs(v)) - 0.8 * r)
        if name == "triangle":
            # Equilateral: inside all three edges whose outward normals are 120 degrees apart.
            d = np.max(
                [u * np.cos(a) + v * np.sin(a) for a in (np.pi / 2, np.pi * 7 / 6, np.pi * 11 / 6)],
                axis=0,
            )
            return _coverage(d - 0.5 * r)
        t = param(1.2, 3.0)  # half thickness of ring and cross bars
        if name == "ring":
            return _coverage(np.abs(np.hypot(u, v) - r) - t)
        bar1 = np.maximum(np.abs(u) - t, np.abs(v) - r)
        bar2 = np.maximum(np.abs(v) - t, np.abs(u) - r)
        return _coverage(np.minimum(bar1, bar2))

    # Textures fill the frame. Rotation stays within +-20 degrees so that horizontal and vertical
    # stripes never turn into each other.
    theta = param(-np.pi / 9, np.pi / 9)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    period = param(5.0, 10.0)
    phase = param(0.0, 1.0)

    def square_wave(w: np.ndarray) -> np.ndarray:
        """Signed distance to the edges of stripes of ``period`` (negative on the stripes)."""
        frac = (w / period + phase) % 1.0
        return (np.abs(frac - 0.5) - 0.25) * period

    if name == "hstripes":
        return _coverage(square_wave(v))
    if name == "vstripes":
        return _coverage(square_wave(u))
    if name == "checkerboard":
        a, b = square_wave(u), square_wave(v)
        # XOR of two stripe patterns: inside where exactly one of them is.
        return _coverage(np.where((a < 0) ^ (b < 0), -np.minimum(np.abs(a), np.abs(b)),
                                  np.minimum(np.abs(a), np.abs(b))))
    if name == "gradient":
        # A smooth ramp between the two colours along a diagonal (either diagonal, either way).
        angle = param(np.pi / 4 - np.pi / 9, np.pi / 4 + np.pi / 9) + np.pi / 2 * rng.integers(
            0, 4, size=(n, 1, 1)
        )
        w = (xx - s / 2) * np.cos(angle) + (yy - s / 2) * np.sin(angle)
        return np.clip(0.5 + w / (s * param(0.6, 1.0)), 0.0, 1.0)
    if name == "dots":
        # A grid of round dots, radius a fraction of the grid period.
        radius = period * param(0.18, 0.3)
        fu = ((u / period + phase) % 1.0 - 0.5) * period
        fv = ((v / period + param(0.0, 1.0)) % 1.0 - 0.5) * period
        return _coverage(np.hypot(fu, fv) - radius)
    raise AssertionError(f"no drawing for class {name}")


def generate(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Draw one split from scratch: (uint8 NHWC images, int64 labels), classes balanced.

    Prefer :func:`synthetic_arrays`, which caches the result.
    """
    if split not in SPLIT_SIZES:
        raise ValueError(f"synthetic split must be one of {sorted(SPLIT_SIZES)}, got {split!r}")
    rng = np.random.default_rng(_SEEDS[split])
    per_class = SPLIT_SIZES[split] // len(CLASSES)
    images, labels = [], []
    for label in range(len(CLASSES)):
        cover = _class_masks(label, rng, per_class)[..., None]
        fg, bg = _colours(rng, per_class)
        # A gentle linear shading of the background, so "flat background" is no class cue.
        s = IMAGE_SIZE
        yy, xx = np.mgrid[0:s, 0:s] / (s - 1) - 0.5
        tilt = rng.uniform(-0.15, 0.15, size=(per_class, 1, 1, 2))
        shade = (tilt[..., :1] * xx[None, ..., None] + tilt[..., 1:] * yy[None, ..., None])
        img = cover * fg + (1.0 - cover) * (bg + shade)
        img = img + rng.normal(0.0, _NOISE_STD, size=img.shape)
        images.append(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8))
        labels.append(np.full(per_class, label, dtype=np.int64))
    order = rng.permutation(SPLIT_SIZES[split])
    return np.concatenate(images)[order], np.concatenate(labels)[order]


@functools.cache
def synthetic_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The cached split: (uint8 images (N, 32, 32, 3), int64 labels (N,)), both read-only."""
    images, labels = generate(split)
    images.setflags(write=False)  # shared by every caller in the process: nobody may edit it
    labels.setflags(write=False)
    return images, labels
