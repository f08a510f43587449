"""Which data set a command works on: ``DataSpec`` and the ``--data`` text that names it.

Text forms (``str(spec)`` gives the canonical one back, for manifests and reports):

- ``synthetic``: the built-in offline set (:mod:`port.data.synthetic`);
- ``cifar10`` / ``cifar100``: torchvision's CIFAR in ``~/.cache/porter/<name>``;
- ``cifar10:DIR`` / ``cifar100:DIR``: the same, kept in ``DIR``;
- a directory in ImageFolder layout: ``DIR/train/<class>/*`` and ``DIR/val/<class>/*`` (or
  ``DIR/test/<class>/*``).

Folder layouts are checked here, when the flag is parsed, so a typo fails before any work starts.
CIFAR files are only looked for when a split is loaded (:mod:`port.data.datasets`), because
commands such as ``porter status`` read specs from manifests without needing the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from port.errors import DataError

KINDS = ("synthetic", "cifar10", "cifar100", "folder")
CIFAR_KINDS = ("cifar10", "cifar100")
# Sub-folders of an ImageFolder tree that hold the evaluation split, in order of preference.
VAL_DIRS = ("val", "test")
VALID_FORMS = "synthetic, cifar10[:DIR], cifar100[:DIR] or an ImageFolder directory"


def default_cifar_root(kind: str) -> Path:
    """Where ``cifar10`` / ``cifar100`` without ``:DIR`` live (and are downloaded to)."""
    return Path.home() / ".cache" / "porter" / kind


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` value.

    ``root`` is ``None`` for ``synthetic`` and for CIFAR in its default cache folder; ``download``
    lets torchvision fetch a missing CIFAR set (it never downloads otherwise).
    """

    kind: str
    root: Path | None = None
    download: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"unknown data kind '{self.kind}': use one of {', '.join(KINDS)}")
        if self.kind == "folder" and self.root is None:
            raise DataError("a folder data spec needs a directory: pass --data DIR")

    @property
    def data_root(self) -> Path | None:
        """The directory the data is read from (CIFAR's default cache folder filled in)."""
        if self.kind in CIFAR_KINDS and self.root is None:
            return default_cifar_root(self.kind)
        return self.root

    def __str__(self) -> str:
        if self.kind == "synthetic":
            return "synthetic"
        if self.kind in CIFAR_KINDS:
            return self.kind if self.root is None else f"{self.kind}:{self.root}"
        return str(self.root)


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


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.startswith((".", "~"))


def parse_data_spec(text: str, download: bool = False) -> DataSpec:
    """Parse a ``--data`` value; ``DataError`` (one line, with the fix) when it is unusable."""
    text = text.strip()
    if text == "synthetic":
        return DataSpec("synthetic", None, download)
    for kind in CIFAR_KINDS:
        if text == kind:
            return DataSpec(kind, None, download)
        if text.startswith(kind + ":"):
            where = text[len(kind) + 1 :]
            if not where:
                raise DataError(f"'{text}' names no directory: use {kind} or {kind}:DIR")
            return DataSpec(kind, Path(where).expanduser().resolve(), download)
    if not text:
        raise DataError(f"empty data spec: use {VALID_FORMS}")
    root = Path(text).expanduser()
    if not root.exists():
        if _looks_like_path(text):
            raise DataError(
                f"data directory {root} not found: check the path, or use synthetic / cifar10"
            )
        raise DataError(f"unknown data spec '{text}': use {VALID_FORMS}")
    if not root.is_dir():
        raise DataError(f"data path {root} is a file, not a directory: pass an ImageFolder DIR")
    root = root.resolve()
    _check_folder(root)
    return DataSpec("folder", root, download)
