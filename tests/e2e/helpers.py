"""Run the real ``porter`` CLI in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Tiny but real: a narrow CIFAR ResNet-18 on a few hundred images trains in seconds on 2 cores.
TINY_TRAIN = ["--arch", "resnet18_cifar", "--width", "0.25", "--batch-size", "64", "--workers", "0",
              "--lr", "0.05", "--schedule", "cosine", "--warmup-epochs", "0"]


@dataclass
class Result:
    """What a porter invocation left behind."""

    code: int
    out: str
    err: str


def porter(*args: str | Path, timeout: float = 600, env: dict[str, str] | None = None) -> Result:
    """Run ``python -m port ARGS`` and capture everything."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "port", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_usage_error(result: Result, *fragments: str, alone: bool = True) -> None:
    """Exit 2, one ``porter: error:`` line (the last on stderr), no traceback, naming the problem.

    ``alone`` also requires that nothing else reached stderr (the error came before any work);
    errors found mid-run (a corrupt image during training) follow the progress output.
    """
    assert result.code == 2, (result.code, result.out[-2000:], result.err[-2000:])
    lines = [line for line in result.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("porter: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.err
    if alone:
        assert len(lines) == 1, result.err
    assert "Traceback" not in result.err and "Traceback" not in result.out
    for fragment in fragments:
        assert fragment.lower() in errors[0].lower(), (fragment, errors[0])


def manifest_states(run: Path) -> dict[str, str]:
    """id -> state, from `porter status --json`."""
    result = porter("status", "--run", run, "--json")
    assert result.code == 0, result.err
    return {row["id"]: row["state"] for row in json.loads(result.out)}
