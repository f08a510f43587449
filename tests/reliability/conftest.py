"""Shared pieces of the reliability suite: a tiny real run, the CLI in-process, snapshots.

Every case drives the real ``porter`` entry point (``port.cli.main``) and asserts three things:
the exit code, the single ``porter: error:`` line on stderr, and that the manifest and every
recorded file are byte-for-byte unchanged. The run is made once per session by a real
``porter import`` of a tiny state dict plus ``porter export --to onnx`` on the synthetic set
(seconds), then copied per test.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.inprocess import Outcome, cli
from tests.inprocess import refused as _refused

REPO = Path(__file__).resolve().parents[2]
WIDTH = "0.125"  # a resnet18_cifar this narrow imports and exports in about a second
IMPORT_FLAGS = ["--arch", "resnet18_cifar", "--width", WIDTH, "--data", "synthetic"]


def porter_process(*args: str | Path, user: str | None = None,
                   timeout: float = 120) -> Outcome:
    """``porter ARGS`` as a separate process (optionally as an unprivileged user)."""
    cmd = [sys.executable, "-m", "port", *map(str, args)]
    if user is not None:  # root ignores permission bits: drop to an ordinary uid instead
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": "/tmp"})
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def refused(outcome: Outcome, *fragments: str) -> str:
    """Assert exit 2 with one error line holding every fragment (case-insensitive)."""
    return _refused(outcome, *fragments, ignore_case=True)


def snapshot(run: Path) -> dict[str, str]:
    """relative path -> sha256 of every file of a run except porter's lock files."""
    if not run.exists():
        return {}
    return {
        p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name not in (".porter.lock", ".manifest.lock")
    }


@pytest.fixture(scope="session")
def state_dict(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny resnet18_cifar state dict (10 classes)."""
    import torch

    from port.models.registry import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sd") / "tiny.pt"
    torch.save(create_model("resnet18_cifar", 10, width=float(WIDTH)).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def base_run(tmp_path_factory: pytest.TempPathFactory, state_dict: Path) -> Path:
    """An imported run with its FP32 ONNX export, made once by the real CLI."""
    run = tmp_path_factory.mktemp("base") / "run"
    made = cli("import", state_dict, "--run", run, *IMPORT_FLAGS)
    assert made.code == 0, made.err
    exported = cli("export", "--run", run, "--to", "onnx")
    assert exported.code == 0, exported.err
    return run


@pytest.fixture
def run(base_run: Path, tmp_path: Path) -> Path:
    """A private copy of the base run."""
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy
