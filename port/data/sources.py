"""The data sources ``--data`` can name: one table, one :class:`DataSource` per kind.

An entry says everything porter knows about a source: how its ``--data`` text looks and where its
files live (:mod:`port.data.spec` parses and prints specs from that), how to read one split, its
class names, the input size it suggests and the mean/std it is normalised with
(:mod:`port.data.datasets` loads splits through that). Adding a source is one entry in
:data:`SOURCES` plus the functions it names.

A source hands back a split in one of two storage forms, and only these two reach the datasets
module: :class:`ArraySplit` (uint8 images in memory: synthetic, CIFAR) or :class:`FolderSplit`
(an ImageFolder tree on disk).

Importing this module costs nothing heavy: ``--data`` is parsed (and a bad one refused) without
torch, torchvision or PIL, which are imported inside the readers that need them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from port.data import synthetic
from port.data.preprocess import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
)
from port.ground.errors import DataError

if TYPE_CHECKING:
    import numpy as np


class SpecFields(Protocol):
    """What a source's readers use of a parsed ``--data`` (:class:`port.data.spec.DataSpec`).

    Written as a protocol so this module, which ``spec`` builds on, never imports ``spec`` back
    (not even for type checking): the two stay one floor apart.
    """

    @property
    def root(self) -> Path | None: ...
    @property
    def download(self) -> bool: ...
    @property
    def data_root(self) -> Path | None: ...


Triple = tuple[float, float, float]
# Where a source's files are, which is also how its --data text looks:
# "builtin"   no files at all; --data KIND;
# "cache"     --data KIND reads (and --download fills) ~/.cache/porter/KIND;
#             --data KIND:DIR reads DIR;
# "directory" --data is the directory itself (exactly one source may be named this way).
Location = Literal["builtin", "cache", "directory"]
# Sub-folders of an ImageFolder tree that hold the evaluation split, in order of preference.
VAL_DIRS = ("val", "test")
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_CIFAR_SIZE = 32


# --------------------------------------------------------------------------------------------
# What a source hands back for one split
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ArraySplit:
    """A whole split in memory: uint8 (N, H, W, 3) images and int64 labels, both read-only."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]


@dataclass(frozen=True)
class FolderSplit:
    """A whole split on disk as an ImageFolder tree, ``directory/<class>/<image>``."""

    directory: Path


@dataclass(frozen=True)
class DataSource:
    """One kind of data set ``--data`` can name (see the module docstring)."""

    kind: str
    form: str  # the --data text in help and errors, e.g. "cifar10[:DIR]"
    location: Location
    read_split: Callable[[SpecFields, str], ArraySplit | FolderSplit]  # split is "train" or "val"
    classes: Callable[[SpecFields], list[str]]  # class names in label order
    native_size: Callable[[SpecFields], int]  # the input size the data suggests
    # (mean, std) given the native size: a folder of small images is normalised like CIFAR.
    mean_std: Callable[[int], tuple[Triple, Triple]]
    # Checks a "directory" source's layout when --data is parsed, so a typo fails before any work.
    check_directory: Callable[[Path], None] | None = None
    # Checks, without torch/torchvision, that the files a split read needs are there (a "cache"
    # source without --download): `porter train` calls it before importing anything heavy.
    check_files: Callable[[SpecFields], None] | None = None


def _fixed_size(size: int) -> Callable[[SpecFields], int]:
    return lambda spec: size


def _fixed_stats(mean: Triple, std: Triple) -> Callable[[int], tuple[Triple, Triple]]:
    return lambda native: (mean, std)


# --------------------------------------------------------------------------------------------
# synthetic: the built-in offline set
# --------------------------------------------------------------------------------------------
def _synthetic_split(spec: SpecFields, split: str) -> ArraySplit:
    images, labels = synthetic.synthetic_arrays(split)
    return ArraySplit(images, labels, synthetic.CLASSES)


# --------------------------------------------------------------------------------------------
# cifar10 / cifar100: torchvision's data sets, kept as their uint8 arrays (val split = test set)
# --------------------------------------------------------------------------------------------
def default_data_root(kind: str) -> Path:
    """Where a "cache" source without ``:DIR`` lives (and is downloaded to)."""
    return Path.home() / ".cache" / "porter" / kind


@functools.lru_cache(maxsize=4)
def _cifar_arrays(
    kind: str, root: Path, *, title: str, dataset_class: str, train: bool, download: bool
) -> ArraySplit:
    """One CIFAR split from ``root`` (cached per process: a loaded split is shared, read-only).

    ``dataset_class`` names the torchvision class (``CIFAR10``/``CIFAR100``), imported only here.
    """
    from torchvision import datasets

    cls = getattr(datasets, dataset_class)
    _require_cifar_files(kind, root, title=title, base_folder=cls.base_folder,
                         download=download)
    from urllib.error import URLError

    import numpy as np

    try:
        ds = cls(str(root), train=train, download=download)
    except (URLError, OSError) as exc:
        raise DataError(
            f"could not download {title} into {root} ({exc}): check the network, or fetch it "
            f"yourself and pass --data {kind}:DIR"
        ) from exc
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DataError(
            f"{title} in {root} is incomplete or corrupted ({exc}): delete "
            f"{root / cls.base_folder} and pass --download"
        ) from exc
    images = np.ascontiguousarray(ds.data)
    labels = np.asarray(ds.targets, dtype=np.int64)
    images.setflags(write=False)  # shared through the cache
    labels.setflags(write=False)
    return ArraySplit(images, labels, tuple(ds.classes))


def _require_cifar_files(kind: str, root: Path, *, title: str, base_folder: str,
                         download: bool) -> None:
    """``DataError`` when ``root`` lacks torchvision's ``base_folder`` and --download is off."""
    if not download and not (root / base_folder).is_dir():
        raise DataError(
            f"{title} not found in {root}: pass --download to fetch it, or --data {kind}:DIR "
            f"with DIR holding {base_folder}/"
        )


def _cifar_source(
    kind: str, *, title: str, dataset_class: str, mean: Triple, std: Triple,
    known_classes: tuple[str, ...] | None, base_folder: str,
) -> DataSource:
    """CIFAR-10 and CIFAR-100 differ only in these facts.

    ``known_classes`` lets a source name its classes without its files (None: read them);
    ``base_folder`` is the folder torchvision's class keeps them in (its ``base_folder``).
    """

    def check_files(spec: SpecFields) -> None:
        root = spec.data_root
        assert root is not None  # a "cache" source always has one
        _require_cifar_files(kind, root, title=title, base_folder=base_folder,
                             download=spec.download)

    def read_split(spec: SpecFields, split: str) -> ArraySplit:
        root = spec.data_root
        assert root is not None  # a "cache" source always has one
        return _cifar_arrays(kind, root, title=title, dataset_class=dataset_class,
                             train=split == "train", download=spec.download)

    def classes(spec: SpecFields) -> list[str]:
        if known_classes is not None:
            return list(known_classes)
        return list(read_split(spec, "val").classes)

    return DataSource(
        kind=kind, form=f"{kind}[:DIR]", location="cache", read_split=read_split,
        classes=classes, native_size=_fixed_size(_CIFAR_SIZE), mean_std=_fixed_stats(mean, std),
        check_files=check_files,
    )


# --------------------------------------------------------------------------------------------
# folder: DIR/train and DIR/val (else DIR/test), read with an ImageFolder
# --------------------------------------------------------------------------------------------
def folder_val_dir(root: Path) -> Path | None:
    """``root/val`` if it exists, else ``root/test``, else ``None``."""
    for name in VAL_DIRS:
        if (root / name).is_dir():
            return root / name
    return None


def class_dirs(split_dir: Path) -> list[str]:
    """Sorted names of the class sub-folders of one split (hidden folders ignored)."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_folder(root: Path) -> None:
    """Raise ``DataError`` unless ``root`` looks like an ImageFolder tree with train and val."""
    if not (root / "train").is_dir():
        raise DataError(
            f"data folder {root} has no train/ sub-folder: lay it out as DIR/train/<class>/* and "
            "DIR/val/<class>/* (or DIR/test/<class>/*)"
        )
    val_dir = folder_val_dir(root)
    if val_dir is None:
        raise DataError(
            f"data folder {root} has no val/ or test/ sub-folder: add DIR/val/<class>/* with the "
            "evaluation images"
        )
    for split_dir in (root / "train", val_dir):
        if not class_dirs(split_dir):
            raise DataError(
                f"{split_dir} has no class folders: put each class's images in "
                f"{split_dir}/<class>/"
            )


def _check_folder_classes(root: Path, val_dir: Path) -> None:
    """The val classes must be the train classes: labels are indices into the sorted names."""
    train, val = class_dirs(root / "train"), class_dirs(val_dir)
    if train != val:
        missing = sorted(set(train) - set(val))
        extra = sorted(set(val) - set(train))
        raise DataError(
            f"{val_dir} classes differ from train/ (missing {missing or 'none'}, extra "
            f"{extra or 'none'}): give both splits the same class folders"
        )


def _folder_split(spec: SpecFields, split: str) -> FolderSplit:
    root = spec.root
    assert root is not None  # a "directory" source always has one
    if split == "train":
        return FolderSplit(root / "train")
    val_dir = folder_val_dir(root)
    if val_dir is None:
        raise DataError(f"data folder {root} has no val/ or test/ sub-folder: add one")
    _check_folder_classes(root, val_dir)
    return FolderSplit(val_dir)


def _folder_classes(spec: SpecFields) -> list[str]:
    assert spec.root is not None
    return class_dirs(spec.root / "train")


def _first_image(split_dir: Path) -> Path:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    for name in class_dirs(split_dir):
        for path in sorted((split_dir / name).iterdir()):
            if path.is_file() and path.suffix.lower() in IMG_EXTENSIONS:
                return path
    raise DataError(
        f"no images found under {split_dir}: put {'/'.join(IMG_EXTENSIONS)} files in "
        f"{split_dir}/<class>/"
    )


def _folder_native_size(spec: SpecFields) -> int:
    """From one training image: shorter side <= 64 px -> rounded to a multiple of 32, else 224."""
    from PIL import Image

    from port.data.imageio import PIL_READ_ERRORS, UnreadableImageError
    from port.data.transforms import SMALL_IMAGE_MAX

    assert spec.root is not None
    path = _first_image(spec.root / "train")
    try:
        with Image.open(path) as img:  # reads the header only
            side = min(img.size)
    except PIL_READ_ERRORS as exc:
        raise UnreadableImageError(
            f"cannot read image {path} ({exc}): remove or replace the file"
        ) from exc
    if side <= SMALL_IMAGE_MAX:
        return max(32, 32 * round(side / 32))
    return 224


def _folder_mean_std(native: int) -> tuple[Triple, Triple]:
    """Small images are CIFAR-like photos; anything larger is normalised like ImageNet."""
    from port.data.transforms import SMALL_IMAGE_MAX

    if native <= SMALL_IMAGE_MAX:
        return CIFAR10_MEAN, CIFAR10_STD
    return IMAGENET_MEAN, IMAGENET_STD


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------
SOURCES: dict[str, DataSource] = {
    s.kind: s
    for s in (
        DataSource(
            kind="synthetic", form="synthetic", location="builtin", read_split=_synthetic_split,
            classes=lambda spec: list(synthetic.CLASSES),
            native_size=_fixed_size(synthetic.IMAGE_SIZE),
            mean_std=_fixed_stats(CIFAR10_MEAN, CIFAR10_STD),  # as for any 32 px set
        ),
        _cifar_source("cifar10", title="CIFAR-10", dataset_class="CIFAR10", mean=CIFAR10_MEAN,
                      std=CIFAR10_STD, known_classes=CIFAR10_CLASSES,
                      base_folder="cifar-10-batches-py"),
        # CIFAR-100's 100 names are read from its own meta file rather than copied here.
        _cifar_source("cifar100", title="CIFAR-100", dataset_class="CIFAR100",
                      mean=CIFAR100_MEAN, std=CIFAR100_STD, known_classes=None,
                      base_folder="cifar-100-python"),
        DataSource(
            kind="folder", form="an ImageFolder directory", location="directory",
            read_split=_folder_split, classes=_folder_classes, native_size=_folder_native_size,
            mean_std=_folder_mean_std, check_directory=_check_folder,
        ),
    )
}


def directory_source() -> DataSource:
    """The source a bare directory in ``--data`` names."""
    found = [s for s in SOURCES.values() if s.location == "directory"]
    assert len(found) == 1, "exactly one source may be named by a bare directory"
    return found[0]


def valid_forms() -> str:
    """Every ``--data`` form, for help and errors: "synthetic, cifar10[:DIR], ... or ..."."""
    forms = [s.form for s in SOURCES.values()]
    return ", ".join(forms[:-1]) + " or " + forms[-1]
