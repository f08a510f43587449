"""Start-up time of the light commands vs ``python -c pass`` in the same environment.

``porter status``, ``models``, ``doctor``, ``--help`` and refusals of bad input (a bad flag value,
bad DDP launcher flags, ``--resume`` with nothing to resume, a missing CIFAR folder) should
cost little more than the interpreter itself: none of them imports torchvision (doctor alone
imports torch, to probe CUDA). Each command runs as ``python -m port ...`` in a fresh process,
``--runs`` times interleaved with the baseline so that load on a shared machine hits both alike;
the median wall time of each and its ratio to the baseline's median are printed side by side,
the last line first-class.

    .venv/bin/python bench/startup.py [--runs 5]

It times the checkout this file is in (each command runs there): copied into a ``git worktree``
of an older commit and run with this environment's Python, it gives the "before" figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))


def _commands(tmp: Path) -> dict[str, list[str]]:
    """Label -> argv after ``python``; the status run is made here without torch."""
    from port.manifest import Manifest

    run = tmp / "run"
    run.mkdir()
    (run / "model.onnx").write_bytes(b"placeholder: status only hashes it")
    Manifest(run).record("import", "onnx", run / "model.onnx", id="model")
    port = ["-m", "port"]
    return {
        "python -c pass": ["-c", "pass"],
        "porter --help": [*port, "--help"],
        "porter status": [*port, "status", "--run", str(run)],
        "porter models": [*port, "models"],
        "porter doctor": [*port, "doctor"],
        "porter train --arch resnet7": [*port, "train", "--run", str(tmp / "new"), "--data",
                                        "synthetic", "--arch", "resnet7"],
        "porter export --to tflite": [*port, "export", "--run", str(run), "--to", "tflite"],
        # The refusals that used to import torch (and torchvision) first.
        "porter train --nproc-per-node 0": [*port, "train", "--run", str(tmp / "new"),
                                            "--data", "synthetic", "--nproc-per-node", "0"],
        "porter train --resume (none)": [*port, "train", "--run", str(tmp / "new"), "--data",
                                         "synthetic", "--resume"],
        "porter train cifar10:MISSING": [*port, "train", "--run", str(tmp / "new"), "--data",
                                         f"cifar10:{tmp / 'missing'}"],
        "porter weights export (no run)": [*port, "weights", "export", "--run",
                                           str(tmp / "missing")],
    }


def _time_once(argv: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one ``python ARGV`` (output discarded; exit 0 or 2 expected)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=env, cwd=REPO, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 2):  # 2: the refusals time the error path on purpose
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-500:]!r}")
    return elapsed


def main() -> None:
    """Time every command ``--runs`` times, interleaved, and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per command (median taken)")
    args = parser.parse_args()
    env = {**os.environ, "COLUMNS": "160"}
    with tempfile.TemporaryDirectory(prefix="porter-startup-") as tmp:
        commands = _commands(Path(tmp))
        times: dict[str, list[float]] = {label: [] for label in commands}
        _time_once(commands["python -c pass"], env)  # warm the page cache, not counted
        for _ in range(args.runs):
            for label, argv in commands.items():
                times[label].append(_time_once(argv, env))
    medians = {label: statistics.median(values) for label, values in times.items()}
    base = medians["python -c pass"]
    print(f"{'command':<34} {'median s':>9} {'min s':>7} {'max s':>7} {'x python':>9}")
    for label, values in times.items():
        print(f"{label:<34} {medians[label]:9.3f} {min(values):7.3f} {max(values):7.3f} "
              f"{medians[label] / base:9.1f}")
    shown = ", ".join(f"{label.removeprefix('porter ')} {medians[label] / base:.1f}x"
                      for label in times if label != "python -c pass")
    print(f"start-up vs python -c pass ({base * 1000:.0f} ms, median of {args.runs}): {shown}")


if __name__ == "__main__":
    main()
