"""1-channel models: both data paths make the same grayscale batch, bit for bit.

The torchvision pipeline (evaluation, calibration) and the torch-free one (``port.load``'s
predictor, apps) must give identical float32 ``(N, 1, H, W)`` batches for a preprocess with a
one-value mean/std, from real CIFAR-10 JPEGs resized to 28 px and from images already gray.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from port.data import pixels
from port.data.preprocess import Preprocess
from port.data.transforms import eval_transform, train_transform
from port.ground.errors import UsageError

GRAY28 = Preprocess.for_size(28, (0.45,), (0.25,))


def _jpegs(root: Path, count: int) -> list[Path]:
    return sorted((root / "test").rglob("*.jpg"))[:count]


def test_torchvision_and_pixels_agree_bit_for_bit(cifar_subset_dir: Path) -> None:
    files = _jpegs(cifar_subset_dir, 8)
    transform = eval_transform(GRAY28)
    with torch.inference_mode():
        want = torch.stack([transform(pixels.open_image(f)) for f in files]).numpy()
    got = pixels.preprocess_images([str(f) for f in files], GRAY28)
    assert got.shape == (8, 1, 28, 28) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    # Luma of the RGB image (PIL's 601-2), then the one-value normalisation.
    with Image.open(files[0]) as img:
        luma = np.asarray(img.convert("L").resize((28, 28), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(got[0, 0], ((luma / np.float32(255)).astype(np.float32)
                                              - np.float32(0.45)) / np.float32(0.25))


def test_gray_images_stay_gray_and_training_gives_one_channel() -> None:
    gray = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28) % 251)
    batch = pixels.preprocess_images(gray, GRAY28)
    np.testing.assert_array_equal(batch[0, 0], ((np.asarray(gray) / np.float32(255))
                                                .astype(np.float32) - np.float32(0.45))
                                  / np.float32(0.25))
    assert train_transform(GRAY28)(gray).shape == (1, 28, 28)


def test_colour_models_are_unchanged_and_a_contradiction_is_refused() -> None:
    colour = Preprocess.for_size(32, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    rgb = np.full((32, 32, 3), 128, np.uint8)
    assert pixels.preprocess_images(rgb, colour).shape == (1, 3, 32, 32)
    with pytest.raises(UsageError, match="one value per channel"):
        pixels.preprocess_images(rgb, colour, channels=1)


def test_in_memory_rgb_arrays_become_the_same_gray(cifar_subset_dir: Path) -> None:
    """The vectorised path (RGB arrays already at the input size) equals the per-image one."""
    size = Preprocess.for_size(32, (0.45,), (0.25,))
    rgb = np.stack([np.asarray(pixels.open_image(f)) for f in _jpegs(cifar_subset_dir, 6)])
    per_image = pixels.preprocess_images(list(rgb), size)
    np.testing.assert_array_equal(pixels.normalize(rgb, size), per_image)
    assert per_image.shape == (6, 1, 32, 32)
