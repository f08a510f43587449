"""Which data set a command works on: ``DataSpec`` and the ``--data`` text that names it.

Text forms (``str(spec)`` gives the canonical one back, for manifests and reports), one per entry
of :data:`port.data.sources.SOURCES`:

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

from port.data.sources import SOURCES, DataSource, default_data_root, directory_source, valid_forms
from port.ground.errors import DataError, UsageError

KINDS = tuple(SOURCES)
VALID_FORMS = valid_forms()


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
        source = SOURCES.get(self.kind)
        if source is None:
            raise DataError(f"unknown data kind '{self.kind}': use one of {', '.join(KINDS)}")
        if source.location == "directory" and self.root is None:
            raise DataError(f"a {self.kind} data spec needs a directory: pass --data DIR")

    @property
    def source(self) -> DataSource:
        """The entry of :data:`port.data.sources.SOURCES` that reads this data."""
        return SOURCES[self.kind]

    @property
    def data_root(self) -> Path | None:
        """The directory the data is read from (a cached source's default folder filled in)."""
        if self.root is None and self.source.location == "cache":
            return default_data_root(self.kind)
        return self.root

    def __str__(self) -> str:
        location = self.source.location
        if location == "builtin":
            return self.kind
        if location == "cache":
            return self.kind if self.root is None else f"{self.kind}:{self.root}"
        return str(self.root)


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.startswith((".", "~"))


def _parse_named(text: str, download: bool) -> DataSpec | None:
    """``KIND`` or ``KIND:DIR`` for the sources named by a word; None when ``text`` is neither."""
    for source in SOURCES.values():
        if source.location == "directory":
            continue  # named by its path, not by a word
        kind = source.kind
        if text == kind:
            return DataSpec(kind, None, download)
        if source.location == "cache" and text.startswith(kind + ":"):
            where = text[len(kind) + 1 :]
            if not where:
                raise DataError(f"'{text}' names no directory: use {kind} or {kind}:DIR")
            return DataSpec(kind, Path(where).expanduser().resolve(), download)
    return None


def check_data_available(spec: DataSpec) -> DataSpec:
    """``spec`` when its files are there (or will be downloaded); else ``DataError``.

    For the sources that can tell without reading (CIFAR's folder; a directory is checked by
    :func:`parse_data_spec` already), and without importing torch or torchvision: `porter
    train` refuses missing data before anything heavy is loaded.
    """
    if spec.source.check_files is not None:
        spec.source.check_files(spec)
    return spec


def parse_data_spec(text: str, download: bool = False) -> DataSpec:
    """Parse a ``--data`` value; ``DataError`` (one line, with the fix) when it is unusable."""
    text = text.strip()
    named = _parse_named(text, download)
    if named is not None:
        return named
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
    source = directory_source()
    if source.check_directory is not None:
        source.check_directory(root)
    return DataSpec(source.kind, root, download)


def data_text(override: str | None, recorded: str | None, purpose: str) -> str:
    """The ``--data`` text a command uses: the flag when given, else the one recorded with the
    model; a ``UsageError`` naming ``purpose`` and the valid forms when neither is known."""
    text = override or recorded
    if not text:
        raise UsageError(f"no data set known for {purpose}: pass --data ({VALID_FORMS})")
    return str(text)
