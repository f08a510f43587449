"""load_split / materialize / as_uint8_tensors on synthetic data and on real image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from port.data.datasets import (
    as_uint8_tensors,
    dataset_classes,
    default_preprocess,
    load_split,
    materialize,
    native_image_size,
)
from port.data.imageio import UnreadableImageError
from port.data.preprocess import CIFAR10_MEAN, IMAGENET_MEAN
from port.data.spec import DataSpec, parse_data_spec
from port.ground.errors import DataError, UsageError


def _write(path: Path, mode: str, size: tuple[int, int], seed: int) -> None:
    """A random image of ``size`` (w, h) in ``mode``, saved as whatever the suffix says."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _mixed_folder(root: Path, val: str = "val") -> Path:
    """Two classes of PNG/JPEG files in every colour mode and odd sizes."""
    kinds = [("L", ".png"), ("RGBA", ".png"), ("P", ".png"), ("RGB", ".jpg"), ("L", ".jpg"),
             ("RGB", ".png")]
    sizes = [(32, 32), (37, 29), (50, 64), (31, 45)]
    n = 0
    for split in ("train", val):
        for cls in ("cat", "dog"):
            for i, (mode, suffix) in enumerate(kinds):
                _write(root / split / cls / f"{i}{suffix}", mode, sizes[i % len(sizes)], n)
                n += 1
    return root


# -- synthetic ---------------------------------------------------------------------------------
def test_synthetic_split_yields_normalised_tensors(synthetic_spec: DataSpec) -> None:
    train = load_split(synthetic_spec, "train", augment=True, cutout=8)
    val = load_split(synthetic_spec, "val")
    assert (len(train), len(val)) == (5000, 1000)
    assert train.classes == val.classes == dataset_classes(synthetic_spec)
    assert train.preprocess == default_preprocess(synthetic_spec)
    assert train.preprocess.mean == CIFAR10_MEAN and train.preprocess.image_size == 32
    x, y = train.dataset[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert val.indices is None and np.array_equal(val.targets, val.targets.astype(np.int64))


def test_limit_is_balanced_and_deterministic(synthetic_spec: DataSpec) -> None:
    a = load_split(synthetic_spec, "train", limit=300, seed=1)
    b = load_split(synthetic_spec, "train", limit=300, seed=1)
    c = load_split(synthetic_spec, "train", limit=300, seed=2)
    assert len(a) == 300 and a.indices is not None
    assert np.array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    assert np.bincount(a.targets).tolist() == [30] * 10
    _, y = a.dataset[5]
    assert y == a.targets[5]
    uneven = load_split(synthetic_spec, "val", limit=15)
    assert sorted(np.bincount(uneven.targets, minlength=10).tolist()) == [1] * 5 + [2] * 5
    assert load_split(synthetic_spec, "val", limit=10**6).indices is None


def test_materialize_matches_the_per_image_transform(synthetic_spec: DataSpec) -> None:
    val = load_split(synthetic_spec, "val", limit=100, seed=3)
    images, labels = materialize(val, batch_size=32)  # vectorised path for in-memory arrays
    assert images.shape == (100, 3, 32, 32) and images.dtype == np.float32
    assert labels.dtype == np.int64 and np.array_equal(labels, val.targets)
    one = np.stack([val.dataset[i][0].numpy() for i in range(100)])
    assert np.array_equal(images, one)  # bit-identical to ToTensor + Normalize


def test_as_uint8_tensors(synthetic_spec: DataSpec) -> None:
    val = load_split(synthetic_spec, "val", limit=50)
    pixels, labels = as_uint8_tensors(val)
    assert pixels.shape == (50, 3, 32, 32) and pixels.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.tolist() == val.targets.tolist()
    restored = (pixels.float() / 255 - torch.tensor(val.preprocess.mean).view(1, 3, 1, 1)) / (
        torch.tensor(val.preprocess.std).view(1, 3, 1, 1))
    assert torch.allclose(restored, torch.from_numpy(materialize(val)[0]), atol=1e-6)


def test_bad_arguments_are_usage_errors(synthetic_spec: DataSpec) -> None:
    with pytest.raises(UsageError, match="unknown split"):
        load_split(synthetic_spec, "test")
    with pytest.raises(UsageError, match="cutout"):
        load_split(synthetic_spec, "val", cutout=8)
    with pytest.raises(UsageError, match="limit"):
        load_split(synthetic_spec, "val", limit=0)
    p = default_preprocess(synthetic_spec)
    with pytest.raises(UsageError, match="conflicts"):
        load_split(synthetic_spec, "val", preprocess=p, image_size=64)


def test_image_size_override(synthetic_spec: DataSpec) -> None:
    val = load_split(synthetic_spec, "val", image_size=64, limit=4)
    assert val.dataset[0][0].shape == (3, 64, 64)
    assert materialize(val)[0].shape == (4, 3, 64, 64)
    assert as_uint8_tensors(val)[0].shape == (4, 3, 64, 64)


# -- folders -----------------------------------------------------------------------------------
@pytest.mark.parametrize("val_dir", ["val", "test"])
def test_mixed_png_jpeg_folder(tmp_path: Path, val_dir: str) -> None:
    spec = parse_data_spec(str(_mixed_folder(tmp_path / "d", val_dir)))
    assert native_image_size(spec) == 32
    assert dataset_classes(spec) == ["cat", "dog"]
    for augment in (False, True):
        split = load_split(spec, "train", augment=augment)
        assert len(split) == 12 and split.classes == ["cat", "dog"]
        for i in range(len(split)):
            x, y = split.dataset[i]
            assert x.shape == (3, 32, 32) and y == split.targets[i]
    val = load_split(spec, "val")
    images, labels = materialize(val, batch_size=5)
    assert images.shape == (12, 3, 32, 32) and labels.tolist() == [0] * 6 + [1] * 6
    assert as_uint8_tensors(val)[0].shape == (12, 3, 32, 32)


def test_large_images_get_the_224_preset(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for c in ("a", "b"):
            _write(tmp_path / split / c / "x.jpg", "RGB", (320, 240), 0)
    spec = parse_data_spec(str(tmp_path))
    assert native_image_size(spec) == 224
    p = default_preprocess(spec)
    assert (p.image_size, p.resize, p.crop, p.mean) == (224, 256, 224, IMAGENET_MEAN)
    x, _ = load_split(spec, "train", augment=True).dataset[0]
    assert x.shape == (3, 224, 224)


def test_val_classes_must_match_train(tmp_path: Path) -> None:
    root = _mixed_folder(tmp_path / "d")
    _write(root / "val" / "zebra" / "0.png", "RGB", (32, 32), 0)
    spec = parse_data_spec(str(root))
    load_split(spec, "train")
    with pytest.raises(DataError, match=r"extra \['zebra'\]"):
        load_split(spec, "val")


def test_empty_class_folder_is_a_data_error(tmp_path: Path) -> None:
    root = _mixed_folder(tmp_path / "d")
    (root / "train" / "empty").mkdir()
    (root / "val" / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_split(parse_data_spec(str(root)), "train")


def _corrupt_folder(root: Path) -> Path:
    _mixed_folder(root)
    bad = root / "val" / "dog" / "broken.jpg"
    good = (root / "val" / "dog" / "3.jpg").read_bytes()
    bad.write_bytes(good[: len(good) // 3])  # a truncated JPEG
    (root / "val" / "cat" / "notes.png").write_bytes(b"not an image at all")
    return bad


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    bad = _corrupt_folder(tmp_path / "d")
    val = load_split(parse_data_spec(str(tmp_path / "d")), "val")
    with pytest.raises(DataError) as info:
        materialize(val)
    msg = str(info.value)
    assert "\n" not in msg and "remove or replace" in msg
    assert "notes.png" in msg  # sorted order: cat/ comes first
    dog = next(i for i, (path, _) in enumerate(val.dataset.samples) if path == str(bad))
    with pytest.raises(DataError, match=r"broken\.jpg"):
        val.dataset[dog]


def test_corrupt_image_in_a_worker_process_keeps_one_line(tmp_path: Path) -> None:
    _corrupt_folder(tmp_path / "d")
    val = load_split(parse_data_spec(str(tmp_path / "d")), "val")
    loader = DataLoader(val.dataset, batch_size=4, num_workers=1)
    with pytest.raises(UnreadableImageError) as info:
        list(loader)
    msg = str(info.value)
    assert isinstance(info.value, DataError)
    assert msg.splitlines()[-1].startswith("cannot read image ") and "notes.png" in msg
    assert "\n" not in msg
    assert info.value.worker_traceback and "worker process" in info.value.worker_traceback


# -- real CIFAR-10 (JPEG subset of ../shared/data) ------------------------------------------------
def test_real_cifar_subset(cifar_subset_dir: Path) -> None:
    spec = parse_data_spec(str(cifar_subset_dir))
    assert native_image_size(spec) == 32
    train = load_split(spec, "train", augment=True)
    val = load_split(spec, "val", limit=200, seed=0)
    assert train.classes == val.classes == [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert len(train) == 1000 and len(val) == 200
    assert np.bincount(val.targets).tolist() == [20] * 10
    images, _ = materialize(val)
    assert images.shape == (200, 3, 32, 32) and np.isfinite(images).all()
    assert 0.5 < images.std() < 1.5  # CIFAR mean/std normalisation of real photos
    pixels, _ = as_uint8_tensors(val)
    assert pixels.shape == (200, 3, 32, 32)


def test_explicit_indices_keep_their_order(synthetic_spec: DataSpec) -> None:
    split = load_split(synthetic_spec, "train", indices=[7, 3, 4000])
    assert split.indices.tolist() == [7, 3, 4000] and len(split) == 3
    full = load_split(synthetic_spec, "train")
    assert split.targets.tolist() == [full.targets[i] for i in (7, 3, 4000)]
    assert np.array_equal(materialize(split)[0][1], full.dataset[3][0].numpy())
    with pytest.raises(UsageError, match="not both"):
        load_split(synthetic_spec, "train", indices=[1], limit=5)
    with pytest.raises(UsageError, match=r"\[0, 5000\)"):
        load_split(synthetic_spec, "train", indices=[5000])


def test_missing_cifar_says_how_to_get_it(tmp_path: Path) -> None:
    spec = parse_data_spec(f"cifar10:{tmp_path}")
    assert dataset_classes(spec)[0] == "airplane" and native_image_size(spec) == 32
    with pytest.raises(DataError, match=r"--download") as info:
        load_split(spec, "val")
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)
    with pytest.raises(DataError, match="CIFAR-100 not found"):
        dataset_classes(parse_data_spec(f"cifar100:{tmp_path}"))


def test_seeded_worker_augmentation_is_reproducible(synthetic_spec: DataSpec) -> None:
    train = load_split(synthetic_spec, "train", augment=True, cutout=8, limit=16)

    def first_batches() -> list[torch.Tensor]:
        loader = DataLoader(train.dataset, batch_size=8, shuffle=True, num_workers=1,
                            generator=torch.Generator().manual_seed(5))
        return [x for x, _ in loader]

    a, b = first_batches(), first_batches()
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_native_size_of_a_folder_with_a_broken_first_image(tmp_path: Path) -> None:
    root = _mixed_folder(tmp_path / "d")
    (root / "train" / "cat" / "0.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"0\.png.*remove or replace"):
        native_image_size(parse_data_spec(str(root)))


def test_subset_of_a_loaded_split_matches_load_split_with_indices() -> None:
    """Subsetting an already loaded split gives the same images as reloading with indices."""
    from port.data.datasets import load_split, materialize, subset
    from port.data.spec import parse_data_spec

    spec = parse_data_spec("synthetic")
    whole = load_split(spec, "train")
    picked = [7, 3, 4000, 3]
    a_images, a_labels = materialize(subset(whole, picked))
    b_images, b_labels = materialize(load_split(spec, "train", indices=picked))
    assert np.array_equal(a_images, b_images) and np.array_equal(a_labels, b_labels)
    assert subset(whole, picked).indices.tolist() == picked
    with pytest.raises(UsageError, match="must lie in"):
        subset(whole, [len(whole)])
