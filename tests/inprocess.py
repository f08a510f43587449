"""``porter`` run in the test's own process: the real entry point, without a new interpreter.

Shared by the test folders that drive many refusals and small commands, where a subprocess per
call (a fresh torch import each) would cost seconds; end-to-end tests that need a real process
use tests/e2e/helpers.py instead.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path


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
    """``porter ARGS`` through ``port.cli.main`` in this process."""
    from port.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return Outcome(code, out.getvalue(), err.getvalue())


def refused(outcome: Outcome, *fragments: str, ignore_case: bool = False) -> str:
    """Assert exit 2 with exactly one ``porter: error:`` line holding every fragment."""
    assert outcome.code == 2, (outcome.code, outcome.out[-2000:], outcome.err[-2000:])
    line = outcome.error_line
    for fragment in fragments:
        found = fragment.lower() in line.lower() if ignore_case else fragment in line
        assert found, (fragment, line)
    return line
