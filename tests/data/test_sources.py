"""The table of data sources: every entry is complete, and a new entry is all a source needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from port.data.datasets import dataset_classes, default_preprocess, load_split, materialize
from port.data.sources import SOURCES, ArraySplit, DataSource, directory_source
from port.data.spec import KINDS, VALID_FORMS, DataSpec, parse_data_spec
from port.ground.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def test_kinds_and_forms_come_from_the_table() -> None:
    assert KINDS == tuple(SOURCES) == ("synthetic", "cifar10", "cifar100", "folder")
    assert VALID_FORMS == "synthetic, cifar10[:DIR], cifar100[:DIR] or an ImageFolder directory"
    assert directory_source().kind == "folder"
    for kind, source in SOURCES.items():
        assert source.kind == kind
        assert source.location in ("builtin", "cache", "directory")
        # Word-named sources print as they are parsed; the directory source needs a real tree.
        if source.location != "directory":
            assert str(parse_data_spec(kind)) == kind and parse_data_spec(kind).source is source


def test_fixed_facts_of_the_builtin_sources() -> None:
    """Sizes, stats and known class names need no files (status and import rely on that)."""
    cifar10, cifar100 = DataSpec("cifar10", Path("/nonexistent")), DataSpec("cifar100")
    assert default_preprocess(cifar10).mean == (0.4914, 0.4822, 0.4465)
    assert default_preprocess(cifar100).mean == (0.5071, 0.4865, 0.4409)
    assert dataset_classes(cifar10)[-1] == "truck"
    assert default_preprocess(DataSpec("synthetic")).image_size == 32


def _tiny_source() -> DataSource:
    """A made-up 8 px source: two classes, four images per split, all in memory."""

    def read_split(spec: DataSpec, split: str) -> ArraySplit:
        rng = np.random.default_rng(0 if split == "train" else 1)
        images = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
        return ArraySplit(images, np.array([0, 1, 0, 1], dtype=np.int64), ("even", "odd"))

    return DataSource(kind="tiny", form="tiny", location="builtin", read_split=read_split,
                      classes=lambda spec: ["even", "odd"], native_size=lambda spec: 8,
                      mean_std=lambda native: ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))


def test_a_new_source_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SOURCES, "tiny", _tiny_source())
    spec = parse_data_spec("tiny")
    assert (spec.kind, str(spec), spec.data_root) == ("tiny", "tiny", None)
    val = load_split(spec, "val")
    assert val.classes == dataset_classes(spec) == ["even", "odd"]
    assert val.preprocess == default_preprocess(spec) and val.preprocess.image_size == 8
    images, labels = materialize(val)
    assert images.shape == (4, 3, 8, 8) and labels.tolist() == [0, 1, 0, 1]
    raw = SOURCES["tiny"].read_split(spec, "val").images
    np.testing.assert_allclose(images[0, 0], (raw[0, :, :, 0] / 255 - 0.5) / 0.25, atol=1e-6)
    with pytest.raises(DataError, match="not found"):
        parse_data_spec("tiny:/x")  # a builtin source takes no directory


def test_parsing_and_refusing_data_never_imports_torch() -> None:
    """`porter status` and every refusal of a bad --data stay quick (no torch/torchvision/PIL)."""
    code = (
        "import sys\n"
        "from port.data.spec import parse_data_spec\n"
        "from port.ground.errors import DataError\n"
        "parse_data_spec('cifar10'); parse_data_spec('synthetic')\n"
        "try:\n    parse_data_spec('imagenet')\nexcept DataError:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'PIL') if m in sys.modules)\n"
        "print(','.join(heavy) or 'none')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "none"
