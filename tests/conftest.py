"""Session fixtures shared by all test folders: small real data and the synthetic spec."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from port.data.archive import extract_imagefolder_archive
from port.data.spec import DataSpec, parse_data_spec

REPO = Path(__file__).resolve().parents[1]
# The project's sibling ../shared holds the real CIFAR-10 JPEG archive; never committed here.
DEFAULT_ARCHIVE = REPO.parent / "shared/data/cifar10-jpeg.tar.gz"
SUBSET_PER_CLASS = {"train": 100, "test": 50}
# Reused across sessions; .cache/ is git-ignored. The name records what is inside.
SUBSET_DIR = REPO / ".cache" / "cifar10-subset-100-50"


def cifar_archive() -> Path:
    """The CIFAR-10 JPEG archive: env PORTER_CIFAR_ARCHIVE, else ../shared/data."""
    return Path(os.environ.get("PORTER_CIFAR_ARCHIVE", DEFAULT_ARCHIVE))


@pytest.fixture(autouse=True)
def _sigchld_as_it_was() -> Iterator[None]:
    """Give SIGCHLD back its handler after each test.

    A torch DataLoader with worker processes installs a Python SIGCHLD handler for the whole
    process and never removes it (torch.utils.data._utils.signal_handling). ``porter train``
    exits after training, but the test process runs evaluate in-process later: with that handler
    left in place, a later wait for a child (evaluate's plot helper) while OpenVINO's CPU plugin
    is loaded ended in a kernel-sent SIGSEGV (si_code SI_KERNEL, seen under gdb in waitpid) on
    this AVX-512 machine. Each test starts with the handler the session had.
    """
    before = signal.getsignal(signal.SIGCHLD)
    yield
    if signal.getsignal(signal.SIGCHLD) is not before:
        signal.signal(signal.SIGCHLD, before if before is not None else signal.SIG_DFL)


def pytest_report_header() -> str:
    """The CPU, first: INT8 expectations depend on it (tests/engines/test_int8_cpu.py)."""
    from port.ground.cpu import describe

    return f"cpu: {describe()}"


@pytest.fixture(scope="session")
def cifar_subset_dir() -> Path:
    """Real CIFAR-10 as an ImageFolder: 100 train + 50 test JPEGs per class (1,500 files).

    Extracted once into .cache/ and reused by later sessions; skips when the archive is absent.
    """
    archive = cifar_archive()
    if not archive.is_file():
        pytest.skip(
            f"CIFAR-10 archive not found at {archive}: put it in ../shared/data or set "
            "PORTER_CIFAR_ARCHIVE"
        )
    return extract_imagefolder_archive(archive, SUBSET_DIR, per_class=SUBSET_PER_CLASS)


@pytest.fixture(scope="session")
def synthetic_spec() -> DataSpec:
    """The built-in synthetic data set (offline, 5,000 train / 1,000 val images)."""
    return parse_data_spec("synthetic")
