"""The built-in synthetic set: fixed, balanced, varied, and cached."""

from __future__ import annotations

import numpy as np

from port.data import synthetic


def test_generation_is_deterministic_and_cached() -> None:
    images, labels = synthetic.synthetic_arrays("val")
    again_images, again_labels = synthetic.generate("val")  # fresh, bypassing the cache
    assert np.array_equal(images, again_images)
    assert np.array_equal(labels, again_labels)
    assert synthetic.synthetic_arrays("val")[0] is images  # cached per process
    assert not images.flags.writeable


def test_shapes_and_class_balance() -> None:
    for split, n in synthetic.SPLIT_SIZES.items():
        images, labels = synthetic.synthetic_arrays(split)
        assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int64
        counts = np.bincount(labels, minlength=len(synthetic.CLASSES))
        assert counts.tolist() == [n // len(synthetic.CLASSES)] * len(synthetic.CLASSES)
    assert len(set(synthetic.CLASSES)) == 10


def test_train_and_val_are_different_draws() -> None:
    train, _ = synthetic.synthetic_arrays("train")
    val, _ = synthetic.synthetic_arrays("val")
    train_keys = {img.tobytes() for img in train}
    assert not any(img.tobytes() in train_keys for img in val)


def test_images_vary_within_a_class() -> None:
    images, labels = synthetic.synthetic_arrays("val")
    for c in range(len(synthetic.CLASSES)):
        members = images[labels == c].astype(np.float32)
        # Mean colour differs from image to image, and the images use the whole range.
        assert members.mean(axis=(1, 2, 3)).std() > 10
        assert members.max() - members.min() > 200
        # Not two copies of one picture: per-pixel spread across the class is large.
        assert members.std(axis=0).mean() > 30
