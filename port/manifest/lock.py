"""The run's writer lock: one porter command that writes a run at a time.

``RUN/.manifest.lock`` (:mod:`port.manifest.store`) only covers the milliseconds of a manifest
read-modify-write. A command that *makes* an artifact reads its inputs minutes before it records
the result: if another command re-made an input in between, the record would name a parent the
file was not made from. So every writing command (train, import, export, evaluate) holds
``RUN/.porter.lock`` from before it reads anything until after it recorded. A second writer is
refused at once (no waiting: it would redo or undo the first one's work) with one line naming
the holder. Readers (``porter status``) take no lock: the manifest is replaced atomically.

The lock is an OS lock (``flock``) on an open file: a killed holder releases it with its last
file descriptor, so a crash never leaves a run locked. The holder's command, pid and start time
are written into the lock file for the refusal message only.

DDP: the launching ``porter train`` holds the lock and tells its workers through
:data:`HELD_ENV`; a worker then takes no lock of its own (it would be refused by its parent).
Under a launcher porter did not start, rank 0 takes the lock and other ranks take none (only
rank 0 writes the run).

Taking the lock also sweeps what killed writers left in the run: temporary files of
:mod:`port.ground.atomic` and temporary folders of the exporters (no writer can be using them now).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from port.ground.atomic import TEMP_MARK
from port.ground.errors import ManifestError, UsageError

RUN_LOCK_NAME = ".porter.lock"
HELD_ENV = "PORTER_RUN_LOCK_HELD"  # set for DDP workers: "<resolved run dir>"
# Folders exporters create inside the run for their intermediate files (port.export.onnx,
# port.export.quantize); a killed export leaves them, the next writer removes them.
TEMP_DIR_PREFIXES = (".porter-onnx-", ".porter-int8-", ".porter-fp16-", ".porter-openvino-")

try:  # POSIX; elsewhere porter runs without a run lock (the manifest lock still holds)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _holder(lock_file: Path) -> str:
    """Who holds the lock, as written by the holder: "`porter export` (pid 12, since ...)"."""
    try:
        info = json.loads(lock_file.read_text(encoding="utf-8") or "{}")
        return (f"`porter {info['command']}` (pid {info['pid']}, since {info['since']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another porter command"


def _worker_skips(run_dir: Path) -> bool:
    """True in a DDP worker that must not take the lock (its launcher holds it, or rank != 0)."""
    if os.environ.get(HELD_ENV) == str(run_dir.resolve()):
        return True
    rank = os.environ.get("RANK")
    return rank is not None and "WORLD_SIZE" in os.environ and rank != "0"


def sweep_leftovers(run_dir: Path) -> list[Path]:
    """Remove what killed writers left in ``run_dir``; call only while holding the run lock.

    Temporary files of :mod:`port.ground.atomic` (``.NAME.<random>.porter-tmp...`` and the older
    ``.NAME.<random>.tmp``) anywhere under the run, and exporters' temporary folders at its top.
    """
    removed = []
    for pattern in (f"**/.*{TEMP_MARK}*", "**/.*.tmp"):
        for path in run_dir.glob(pattern):
            if path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
    for path in run_dir.iterdir():
        if path.is_dir() and not path.is_symlink() and path.name.startswith(TEMP_DIR_PREFIXES):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _check_run_path(run_dir: Path) -> None:
    """A ``--run`` that names a file (or sits under one) is a usage error, said in one line."""
    for p in (run_dir, *run_dir.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == run_dir else f"is under the file {p}"
                raise UsageError(f"--run {run_dir} {what}, not a directory: pass a run "
                                 "directory (new or existing)")
            return


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str], command: str, *,
             create: bool = False) -> Iterator[Path]:
    """Hold ``RUN/.porter.lock`` for the whole command ``command`` (``train``, ``export``...).

    ``create``: make the run directory when absent (train, import); if the command then fails,
    a directory it created and left empty is removed again, so a refused command leaves nothing
    behind. A second writer gets a ``ManifestError`` naming the holder and what to do.
    """
    run = Path(run_dir)
    _check_run_path(run)
    if _worker_skips(run):
        yield run
        return
    created = False
    if create and not run.exists():
        try:
            run.mkdir(parents=True)
            created = True
        except FileExistsError:
            # A concurrent command made it between the check and the mkdir: the lock below
            # decides which of the two goes on, and names the holder to the other.
            pass
    if not run.is_dir():
        raise ManifestError(
            f"no porter run at {run} (the directory does not exist): create it with "
            f"`porter train --run {run}` or `porter import MODEL --run {run}`")
    lock_file = run / RUN_LOCK_NAME
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ManifestError(
                    f"run {run} is in use by {_holder(lock_file)}: wait for it to finish "
                    "(or stop it), or use another --run; `porter status` works meanwhile"
                ) from None
        since = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        # Who holds it, for the second writer's message only: best effort (on a full disk the
        # command's own writes report ENOSPC; the lock itself needs no bytes).
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"command": command, "pid": os.getpid(), "since": since,
                                      "argv": sys.argv[1:4]}).encode(), 0)
        sweep_leftovers(run)
        previous = os.environ.get(HELD_ENV)
        os.environ[HELD_ENV] = str(run.resolve())  # inherited by DDP workers only
        ok = False
        try:
            yield run
            ok = True
        finally:
            if previous is None:
                os.environ.pop(HELD_ENV, None)
            else:
                os.environ[HELD_ENV] = previous
            if not ok and created:
                _remove_if_empty(run, lock_file)
    finally:
        os.close(fd)  # releases the flock


def _remove_if_empty(run: Path, lock_file: Path) -> None:
    """Remove a run directory this command created when nothing but the lock file is in it."""
    with contextlib.suppress(OSError):
        if {p.name for p in run.iterdir()} <= {RUN_LOCK_NAME}:
            lock_file.unlink(missing_ok=True)
            run.rmdir()
