"""Loading a split of any data spec as a torch Dataset, with its classes and preprocessing.

``load_split`` is the one entry point for training and evaluation; ``materialize`` preprocesses a
split once into arrays (evaluation, INT8 calibration); ``as_uint8_tensors`` gives the raw pixels of
a whole split for a GPU-resident loader.

What each kind of data is (its files, classes, size, mean/std) comes from its entry in
:data:`port.data.sources.SOURCES`; nothing here asks which kind a spec is. A source hands back a
split as uint8 arrays in memory (:class:`ArrayDataset`: synthetic, CIFAR) or as an ImageFolder
tree (:class:`FolderDataset`), and both yield PIL images into the same transforms
(:mod:`port.data.transforms`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import ImageFolder

from port.data.imageio import read_image
from port.data.listing import balanced_subset, note_skipped, skipped_files
from port.data.pixels import image_channels
from port.data.preprocess import Preprocess
from port.data.sources import ArraySplit, class_dirs
from port.data.spec import DataSpec
from port.data.transforms import Transform, eval_transform, geometry_transform, train_transform
from port.ground.errors import DataError, UsageError

SPLITS = ("train", "val")
_PROGRESS_MIN_IMAGES = 20_000  # materialize shows a progress bar from this many images on


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
class ArrayDataset(Dataset):
    """Images held in memory as one uint8 (N, H, W, 3) array; yields ``(transform(img), label)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Transform) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


class FolderDataset(ImageFolder):
    """torchvision's ImageFolder reading through :func:`read_image` (errors name the file).

    Class folders are the non-hidden sub-folders, so ``.ipynb_checkpoints`` or ``.DS_Store``
    leftovers never become classes.
    """

    def __init__(self, root: Path, transform: Transform) -> None:
        super().__init__(str(root), transform=transform, loader=read_image)
        self.skipped = skipped_files(root, {Path(p) for p, _ in self.samples})
        if self.skipped:
            note_skipped(root, self.skipped)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = class_dirs(Path(directory))
        if not classes:
            raise DataError(f"{directory} has no class folders: put images in {directory}/<class>/")
        return classes, {name: i for i, name in enumerate(classes)}


@dataclass
class SplitData:
    """One split ready for a DataLoader.

    ``dataset`` yields ``(float32 CHW normalised tensor, int label)``; ``indices`` are the
    positions kept by ``limit`` (``None`` = the whole split); ``targets`` are the labels of the
    images ``dataset`` yields, in its order.
    """

    dataset: Dataset
    classes: list[str]
    preprocess: Preprocess
    spec: DataSpec
    split: str
    indices: np.ndarray | None = None
    targets: np.ndarray | None = None
    augment: bool = False

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------
def _base_dataset(
    spec: DataSpec, split: str, transform: Transform
) -> tuple[Dataset, np.ndarray, list[str]]:
    """The whole split: (dataset, labels in dataset order, class names)."""
    stored = spec.source.read_split(spec, split)
    if isinstance(stored, ArraySplit):
        return (ArrayDataset(stored.images, stored.labels, transform), stored.labels,
                list(stored.classes))
    try:
        ds = FolderDataset(stored.directory, transform)
    except FileNotFoundError as exc:  # torchvision: "Found no valid file for the classes ..."
        raise DataError(
            f"{stored.directory}: {' '.join(str(exc).split())}: add images or remove empty "
            "class folders"
        ) from exc
    return ds, np.asarray(ds.targets, dtype=np.int64), list(ds.classes)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def native_image_size(spec: DataSpec) -> int:
    """The input size the data suggests: 32 for CIFAR and synthetic; for a folder, from one image
    (shorter side <= 64 px -> rounded to a multiple of 32, otherwise 224)."""
    return spec.source.native_size(spec)


def default_preprocess(spec: DataSpec, image_size: int | None = None) -> Preprocess:
    """CIFAR mean/std for CIFAR-like data (CIFAR, synthetic, folders of <= 64 px images),
    ImageNet mean/std otherwise; input size ``image_size`` or :func:`native_image_size`."""
    native = native_image_size(spec)
    size = image_size if image_size is not None else native
    if size <= 0:
        raise UsageError(f"image size must be positive, got {size}")
    mean, std = spec.source.mean_std(native)
    return Preprocess.for_size(size, mean, std)


def dataset_classes(spec: DataSpec) -> list[str]:
    """Class names in label order."""
    return spec.source.classes(spec)


def load_split(
    spec: DataSpec,
    split: str,
    *,
    preprocess: Preprocess | None = None,
    image_size: int | None = None,
    augment: bool = False,
    cutout: int = 0,
    limit: int | None = None,
    seed: int = 0,
    indices: Sequence[int] | None = None,
) -> SplitData:
    """Load ``split`` ("train" or "val") of ``spec``.

    ``preprocess`` defaults to :func:`default_preprocess` (``image_size`` overrides the native
    size; giving both with different sizes is refused). ``augment`` selects the training preset
    of :func:`port.data.transforms.train_transform`, with a ``cutout`` px square if > 0.
    ``limit`` keeps a class-balanced subset of that many images chosen with ``seed``;
    ``indices`` instead keeps exactly those positions of the split, in that order (e.g. a
    calibration selection). Either way ``SplitData.indices`` records the positions kept.
    """
    if split not in SPLITS:
        raise UsageError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
    if cutout < 0:
        raise UsageError(f"cutout must be >= 0 pixels, got {cutout}")
    if cutout and not augment:
        raise UsageError("cutout is an augmentation: enable augmentation too, or set cutout to 0")
    if limit is not None and limit <= 0:
        raise UsageError(f"limit must be a positive number of images, got {limit}")
    if limit is not None and indices is not None:
        raise UsageError("give either a limit or explicit indices for the subset, not both")
    if preprocess is None:
        preprocess = default_preprocess(spec, image_size)
    elif image_size is not None and image_size != preprocess.image_size:
        raise UsageError(
            f"image size {image_size} conflicts with the model's preprocessing "
            f"({preprocess.image_size} px): drop the image size or make them match"
        )
    if augment:
        transform = train_transform(preprocess, cutout=cutout)
    else:
        transform = eval_transform(preprocess)
    dataset, targets, classes = _base_dataset(spec, split, transform)
    whole = SplitData(dataset=dataset, classes=classes, preprocess=preprocess, spec=spec,
                      split=split, targets=targets, augment=augment)
    if indices is not None:
        return subset(whole, indices)
    if limit is not None and limit < len(targets):
        return subset(whole, balanced_subset(targets, limit, seed))
    return whole


def subset(split: SplitData, indices: Sequence[int] | np.ndarray) -> SplitData:
    """Exactly those positions of a whole split, in that order (no reload of the data set).

    Used for seeded subsets and calibration selections; ``SplitData.indices`` records them.
    """
    if split.indices is not None:
        raise ValueError("subset() takes a whole split, not one that is already a subset")
    kept = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = len(split.targets) if split.targets is not None else len(split)
    if kept.size and (kept.min() < 0 or kept.max() >= n):
        raise UsageError(
            f"subset indices must lie in [0, {n}) for the {split.split} split of "
            f"{split.spec}: got {kept.min()}..{kept.max()}"
        )
    targets = split.targets[kept] if split.targets is not None else None
    return SplitData(dataset=Subset(split.dataset, kept.tolist()), classes=split.classes,
                     preprocess=split.preprocess, spec=split.spec, split=split.split,
                     indices=kept, targets=targets, augment=split.augment)


def _unwrap(split: SplitData) -> tuple[Dataset, np.ndarray]:
    """The full underlying dataset and the indices of ``split`` into it."""
    base: Any = split.dataset
    if isinstance(base, Subset):
        base = base.dataset
    n = len(base)
    indices = split.indices if split.indices is not None else np.arange(n)
    return base, indices


def _fast_array_path(split: SplitData) -> bool:
    """True when evaluation leaves the pixels as they are (in-memory images at input size)."""
    base, _ = _unwrap(split)
    p = split.preprocess
    return (
        isinstance(base, ArrayDataset)
        and not split.augment
        and p.resize == p.crop
        and base.images.shape[1:3] == (p.crop, p.crop)
        and len(p.mean) == 3  # a grayscale model's images go through the per-image "L" step
    )


def as_uint8_tensors(split: SplitData) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``split`` as raw pixels: (uint8 NCHW tensor, int64 labels), no normalisation.

    Images are RGB at the preprocess input size (resized and centre-cropped like evaluation when
    they are not already that size). Meant for 32 px sets that fit in memory (CIFAR train = 150 MB),
    e.g. a GPU-resident loader that augments and normalises on the device itself; a folder of large
    images is decoded one by one and can take a lot of memory at 224 px.
    """
    base, indices = _unwrap(split)
    labels = torch.from_numpy(np.asarray(split.targets, dtype=np.int64).copy())
    if _fast_array_path(split):
        pixels = base.images[indices].transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(pixels)), labels
    geometry = geometry_transform(split.preprocess)
    size = split.preprocess.crop
    out = torch.empty((len(indices), 3, size, size), dtype=torch.uint8)
    for row, i in enumerate(indices):
        if isinstance(base, ArrayDataset):
            img = Image.fromarray(base.images[i])
        else:
            img = read_image(base.samples[i][0])
        out[row] = torch.from_numpy(np.asarray(geometry(img)).transpose(2, 0, 1).copy())
    return out, labels


def _normalise_uint8(batch: np.ndarray, preprocess: Preprocess) -> torch.Tensor:
    """uint8 NHWC -> normalised float32 NCHW with the same float ops, in the same order, as
    ToTensor + Normalize, so the result is bit-identical to the per-image pipeline."""
    if batch.shape[-1] == 3 and preprocess.color_order == "BGR" and image_channels(preprocess) == 3:
        batch = batch[..., ::-1]  # as pixels.normalize: mean/std are in the model's BGR order
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(torch.float32).div(255)
    mean = torch.as_tensor(preprocess.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(preprocess.std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


def materialize(split: SplitData, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Run the split's transform over every image once: (float32 NCHW array, int64 labels).

    Use a split loaded with ``augment=False`` for evaluation and calibration. In-memory 32 px sets
    take a vectorised path that gives the same numbers as the per-image transform.
    """
    n = len(split)
    p = split.preprocess
    images = np.empty((n, image_channels(p), p.crop, p.crop), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    if _fast_array_path(split):
        base, indices = _unwrap(split)
        for start in range(0, n, batch_size):
            idx = indices[start : start + batch_size]
            images[start : start + len(idx)] = _normalise_uint8(base.images[idx], p).numpy()
            labels[start : start + len(idx)] = base.labels[idx]
        return images, labels
    loader = DataLoader(split.dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    with _Progress(n, f"preprocessing {split.spec} {split.split}") as advance:
        start = 0
        for x, y in loader:
            images[start : start + len(y)] = x.numpy()
            labels[start : start + len(y)] = y.numpy()
            start += len(y)
            advance(len(y))
    return images, labels


class _Progress:
    """A rich progress bar on stderr for long runs on a terminal; a no-op otherwise."""

    def __init__(self, total: int, description: str) -> None:
        self.total, self.description = total, description
        self.bar: Any = None

    def __enter__(self) -> Any:
        if self.total < _PROGRESS_MIN_IMAGES or not sys.stderr.isatty():
            return lambda k: None
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task(self.description, total=self.total)
        return lambda k: self.bar.advance(task, k)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
