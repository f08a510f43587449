"""The evaluate report's plots, drawn by a helper process that loads matplotlib during the pass.

Why: importing matplotlib and drawing the first figure costs ~0.6-0.9 s of one core, which
``porter evaluate`` spent after everything else, on top of the evaluation (a third of a
1,000-image evaluation at 224 px on two cores). The pass leaves CPU idle while it decodes in its
own process (one core) or waits for its workers, so a helper started with the evaluation does
that work beside it. A thread would not: the import holds the GIL, which slowed the decoding loop
by as much as it saved (measured: the pass went from ~2.0 s to ~2.4 s for 1,000 images).

The protocol is three lines over pipes: the helper prints ``ready`` once matplotlib is loaded and
its font cache is warm; it then reads one JSON request ``{"report": ..., "latency": path,
"scatter": path}`` from stdin, draws both plots with :mod:`port.evaluate.report` (the same code
as in-process, so the files are the same), and prints ``done``. Whatever goes wrong with the
helper (it cannot start, dies, or says something else), :meth:`PlotProcess.draw` returns False
and the caller plots in its own process: the report is never missing a plot because of it.

The evaluation waits for ``ready`` before it times latency (:class:`ReadyAtEnd`), so the helper's
import never competes with the timed runs.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

READY, DONE = "ready", "done"
READY_TIMEOUT_S = 120.0  # a loaded machine imports slowly; past this, plot in-process instead
DRAW_TIMEOUT_S = 120.0


class PlotProcess:
    """A started helper process (see the module docstring); always :meth:`close` it."""

    def __init__(self, command: list[str] | None = None) -> None:
        """Start the helper (``command``: another program speaking the same lines, for tests)."""
        import os

        self._ready: bool | None = None  # None: not known yet
        # The helper imports porter from where this process did (its folder first on the path),
        # never from a `port` folder that happens to be in the current directory.
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONSAFEPATH": "1", "PYTHONPATH": path}
        try:
            self._proc: subprocess.Popen[str] | None = subprocess.Popen(
                command or [sys.executable, "-m", "port.evaluate.plot_process"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True, env=env)
        except OSError:  # no interpreter to start (frozen app, exhausted process table)
            self._proc = None
            self._ready = False

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> bool:
        """Block until the helper has loaded matplotlib (or failed); whether it is usable."""
        if self._ready is None:
            self._ready = self._read_line(timeout) == READY
            if not self._ready:
                self.close()
        return self._ready

    def request(self, report: dict[str, Any], latency: Path, scatter: Path) -> bool:
        """Ask the helper to write both plots (it draws while the caller writes the rest);
        False if it cannot be asked. :meth:`finish` says whether they were written."""
        if not self.wait_ready() or self._proc is None or self._proc.stdin is None:
            return False
        from port.evaluate.report import json_safe

        request = {"report": json_safe(report), "latency": str(latency), "scatter": str(scatter)}
        try:
            self._proc.stdin.write(json.dumps(request, allow_nan=False) + "\n")
            self._proc.stdin.close()
        except (OSError, ValueError):  # the helper died meanwhile
            self.close()
            return False
        return True

    def finish(self) -> bool:
        """Wait for the helper to finish the plots asked for; whether both were written."""
        ok = self._read_line(DRAW_TIMEOUT_S) == DONE
        self.close()
        return ok

    def close(self) -> None:
        """Stop the helper if it still runs (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _read_line(self, timeout: float) -> str | None:
        """The helper's next line, or None on end of output or after ``timeout`` seconds."""
        import selectors

        proc = self._proc
        if proc is None or proc.stdout is None:
            return None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                return None
        line = proc.stdout.readline()
        return line.strip() or None


class ReadyAtEnd:
    """``source`` (evaluation chunks) that, once exhausted, waits for the plot helper to be
    ready, so that its import is finished before latency is timed. Length: the source's."""

    def __init__(self, source: Any, plots: PlotProcess) -> None:
        self.source, self.plots = source, plots

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[Any]:
        yield from self.source
        self.plots.wait_ready()


def main() -> None:
    """The helper: load matplotlib, say ready, draw what is asked, say done."""
    from port.evaluate import report as plots

    fig, ax = plots._figure()  # warm: font cache, Agg, the layout engine
    ax.set_title("warm-up")
    fig.canvas.draw()
    print(READY, flush=True)
    line = sys.stdin.readline()
    if not line:  # the evaluation ended without a report (an error, Ctrl-C)
        return
    request = json.loads(line)
    plots.plot_latency(request["report"], Path(request["latency"]))
    plots.plot_accuracy_vs_latency(request["report"], Path(request["scatter"]))
    print(DONE, flush=True)


if __name__ == "__main__":
    main()
