"""Shared pieces of the reliability suite: a tiny real run, the CLI in-process, snapshots.

Every case drives the real ``porter`` entry point (``port.cli.main``) and asserts three things:
the exit code, the single ``porter: error:`` line on stderr, and that the manifest and every
recorded file are byte-for-byte unchanged. The run is made once per session by a real
``porter import`` of a tiny state dict plus ``porter export --to onnx`` on the synthetic set
(seconds), then copied per test.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WIDTH = "0.125"  # a resnet18_cifar this narrow imports and exports in about a second
IMPORT_FLAGS = ["--arch", "resnet18_cifar", "--width", WIDTH, "--data", "synthetic"]


@dataclass
class Outcome:
    """Exit code and captured streams of one porter invocation."""

    code: int
    out: str
    err: str

    @property
    def error_line(self) -> str:
        """The single error line; fails the test unless stderr is exactly one such line."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("porter: error: "), self.err[-3000:]
        assert "Traceback" not in self.err + self.out
        return lines[0]


def cli(*args: str | Path) -> Outcome:
    """``porter ARGS`` in this process (the real entry point, without a new interpreter)."""
    from port.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return Outcome(code, out.getvalue(), err.getvalue())


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
    assert outcome.code == 2, (outcome.code, outcome.out[-2000:], outcome.err[-2000:])
    line = outcome.error_line
    for fragment in fragments:
        assert fragment.lower() in line.lower(), (fragment, line)
    return line


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
