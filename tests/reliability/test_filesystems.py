"""Full, read-only and foreign filesystems: one line, exit 2, nothing recorded lost.

Uses real filesystems: a small tmpfs (ENOSPC), the same remounted read-only (EROFS), and an
unprivileged user (``setpriv``) for permission errors, since root ignores permission bits.
Skipped with the reason where this machine does not allow mounts or setpriv.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from port.ground.errors import os_error_line
from tests.reliability.conftest import cli, porter_process, refused, snapshot


def _mount_tmpfs(where: Path, size: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path, run: Path) -> Iterator[Path]:
    """The run copied onto a tmpfs with ~200 KiB left: an export of ~700 KiB cannot fit."""
    used = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    mnt = tmp_path / "disk"
    if os.geteuid() != 0 or not _mount_tmpfs(mnt, used + 400 * 1024):
        pytest.skip("needs root and tmpfs mounts to fill a real filesystem")
    try:
        shutil.copytree(run, mnt / "run")
        yield mnt / "run"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_leaves_the_manifest_and_records_intact(small_disk: Path) -> None:
    before = snapshot(small_disk)
    (small_disk / "model.fp32.onnx").unlink()  # room to re-make it is all there is... almost
    filler = small_disk / "filler.bin"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * max(0, free - 300 * 1024))
    refused(cli("export", "--run", small_disk, "--to", "onnx"),
            "no space left on the device", "(ENOSPC)", "manifest and every recorded "
            "file are unchanged")
    after = snapshot(small_disk)
    after.pop("filler.bin")
    before.pop("model.fp32.onnx")
    assert after == before  # the manifest byte-for-byte; no temp file left behind
    assert not [p for p in small_disk.rglob(".*") if "porter-tmp" in p.name]


def test_read_only_run(small_disk: Path) -> None:
    before = snapshot(small_disk)
    mnt = small_disk.parent
    if subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot remount the tmpfs read-only here")
    try:
        for args in (["export", "--run", small_disk, "--to", "onnx"],
                     ["evaluate", "--run", small_disk, "--limit", "4"]):
            refused(cli(*args), "read-only filesystem", "(EROFS)", "writable disk")
        assert cli("status", "--run", small_disk).code == 0  # reading still works
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=False)
    assert snapshot(small_disk) == before


def test_permission_denied_as_an_ordinary_user(run: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run porter as another user")
    # The run and its parents stay root's; the unprivileged user may read but not write.
    for p in (run, *run.parents):
        if p == Path("/"):
            break
        p.chmod(p.stat().st_mode | 0o005)
    before = snapshot(run)
    outcome = porter_process("export", "--run", run, "--to", "onnx", user="65534")
    if "No module named" in outcome.err or ("Permission denied: '" in outcome.err and \
            "site-packages" in outcome.err):
        pytest.skip("the virtual environment is not readable by an unprivileged user here")
    refused(outcome, "permission denied", "(EACCES)", str(run / ".porter.lock"))
    assert snapshot(run) == before


@pytest.mark.parametrize("name", ["ENOSPC", "EACCES", "EROFS", "EEXIST", "ENOTDIR", "EISDIR",
                                  "EDQUOT", "EFBIG"])
def test_every_mapped_os_error_is_one_line_with_a_fix(name: str) -> None:
    code = getattr(errno, name)
    line = os_error_line(OSError(code, os.strerror(code), "/runs/r/model.onnx"))
    assert line.startswith("/runs/r/model.onnx: ") and f"({name}): " in line
    assert "\n" not in line and len(line.split(": ")[-1]) > 10  # says what to do
