"""Start-up: the light commands and every refusal of bad input import no torchvision (no torch).

Each case runs ``port.cli.main(argv)`` in a fresh interpreter, catches its ``SystemExit`` and
prints, as the last stdout line, the exit code and which heavy modules were loaded by then. The
exit codes and messages are the ones users saw before start-up was made light.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from port.cli import app

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "onnxruntime", "tensorrt")

# Runs porter in-process so that sys.modules can be read once it is done; stderr is captured
# through sys.stderr so porter's one-line errors can be checked as well.
_WRAPPER = f"""
import io, json, sys
from contextlib import redirect_stderr
from port.cli import main
err = io.StringIO()
try:
    with redirect_stderr(err):
        main(json.loads(sys.argv[1]))
except SystemExit as exc:
    code = exc.code
else:
    code = None
loaded = [name for name in {HEAVY!r} if name in sys.modules]
print("\\n" + json.dumps({{"code": code, "err": err.getvalue(), "loaded": loaded}}))
"""


def _run(argv: list[str | Path]) -> dict[str, Any]:
    """Run porter with ``argv`` in a fresh interpreter: exit code, stderr, heavy modules loaded."""
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, json.dumps([str(a) for a in argv])],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr  # the wrapper itself must not fail
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _light(result: dict[str, Any], *, allowed: tuple[str, ...] = ()) -> None:
    """None of :data:`HEAVY` was imported, except ``allowed``."""
    assert not set(result["loaded"]) - set(allowed), result


def _refused(result: dict[str, Any], *fragments: str) -> None:
    """Exit 2 with one ``porter: error:`` line naming the problem."""
    assert result["code"] == 2, result
    lines = result["err"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("porter: error: "), result
    for fragment in fragments:
        assert fragment in lines[0], (fragment, result)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with one recorded artifact, made without torch (status only reads the manifest)."""
    from port.manifest import Manifest

    run = tmp_path_factory.mktemp("startup") / "run"
    run.mkdir()
    (run / "model.onnx").write_bytes(b"not a real model: status only hashes it")
    Manifest(run).record("import", "onnx", run / "model.onnx", id="model")
    return run


def test_status_is_light(run_dir: Path) -> None:
    result = _run(["status", "--run", run_dir, "--json"])
    _light(result)
    assert result["code"] == 0 and result["err"] == ""


def test_models_is_light() -> None:
    result = _run(["models"])
    _light(result)
    assert result["code"] == 0


def test_doctor_needs_no_torchvision() -> None:
    """doctor probes CUDA through torch and the runtimes by importing them, never torchvision."""
    result = _run(["doctor", "--json"])
    _light(result, allowed=("torch", "onnxruntime", "tensorrt"))
    assert result["code"] == 0


@pytest.mark.parametrize("command", [None, *sorted(c.name or c.callback.__name__
                                                   for c in app.registered_commands)])
def test_help_is_light(command: str | None) -> None:
    result = _run(["--help"] if command is None else [command, "--help"])
    _light(result)
    assert result["code"] == 0


# Command groups (`porter weights ...`): the group's help and each of its commands' help.
GROUP_COMMANDS = sorted(
    (group.name or group.typer_instance.info.name, *([] if command is None else [command]))
    for group in app.registered_groups
    for command in [None, *(c.name or c.callback.__name__
                            for c in group.typer_instance.registered_commands)]
)


@pytest.mark.parametrize("words", GROUP_COMMANDS, ids=" ".join)
def test_group_help_is_light(words: tuple[str, ...]) -> None:
    result = _run([*words, "--help"])
    _light(result)
    assert result["code"] == 0


# (argv, fragments of the one-line error) for each kind of bad input; RUN is a run directory that
# must not be created, MISSING a path that does not exist, WEIGHTS a file that is never read.
REFUSALS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "unknown-command": (["frobnicate"], ("No such command",)),
    "unknown-flag": (["train", "--run", "RUN", "--epoch", "3"], ("No such option: --epoch",)),
    "missing-data-dir": (["train", "--run", "RUN", "--data", "MISSING"],
                         ("data directory", "not found")),
    "unknown-arch": (["train", "--run", "RUN", "--data", "synthetic", "--arch", "resnet7"],
                     ("unknown model 'resnet7'", "resnet18")),
    "bad-epochs": (["train", "--run", "RUN", "--data", "synthetic", "--epochs", "-1"],
                   ("epochs must be >= 1",)),
    "nan-lr": (["train", "--run", "RUN", "--data", "synthetic", "--lr", "nan"],
               ("lr must be a finite number",)),
    "bad-batch": (["train", "--run", "RUN", "--data", "synthetic", "--batch-size", "0"],
                  ("batch_size must be >= 1",)),
    "unknown-recipe": (["train", "--run", "RUN", "--recipe", "nope"], ("unknown recipe 'nope'",)),
    "bad-set": (["train", "--run", "RUN", "--set", "nope"], ("--set expects KEY=VALUE",)),
    "unknown-to": (["export", "--run", "RUN", "--to", "tflite"],
                   ("unknown export format 'tflite'",)),
    "unknown-precision": (["export", "--run", "RUN", "--to", "onnx", "--precision", "fp64"],
                          ("does not support precision 'fp64'",)),
    "evaluate-missing-run": (["evaluate", "--run", "MISSING"], ("manifest.json missing",)),
    "bad-batch-sizes": (["evaluate", "--run", "RUN", "--batch-sizes", "0"], ("--batch-sizes",)),
    "import-missing-file": (["import", "MISSING", "--run", "RUN"], ("not found",)),
    "import-bad-classes": (["import", "WEIGHTS", "--run", "RUN", "--arch", "resnet9",
                            "--num-classes", "0"], ("--num-classes must be an integer",)),
    "import-bad-size": (["import", "WEIGHTS", "--run", "RUN", "--arch", "resnet9",
                         "--image-size", "-3"], ("--image-size must be an integer",)),
    "status-missing-run": (["status", "--run", "MISSING"], ("manifest.json missing",)),
    "serve-missing-run": (["serve", "--run", "MISSING"], ("manifest.json missing",)),
    # The DDP launcher flags, --resume and CIFAR's folder are checked before torch is imported.
    "train-bad-nproc": (["train", "--run", "RUN", "--data", "synthetic", "--nproc-per-node", "0"],
                        ("--nproc-per-node must be >= 1",)),
    "train-bad-node-rank": (["train", "--run", "RUN", "--data", "synthetic", "--nnodes", "2",
                             "--node-rank", "5", "--rdzv-endpoint", "10.0.0.1:29500"],
                            ("--node-rank must be in [0, 2)",)),
    "train-resume-nothing": (["train", "--run", "RUN", "--data", "synthetic", "--resume"],
                             ("nothing to resume", "train without --resume")),
    "train-cifar-dir-missing": (["train", "--run", "RUN", "--data", "cifar10:MISSING"],
                                ("CIFAR-10 not found in", "--download")),
    "weights-bad-format": (["weights", "export", "--run", "RUN", "--format", "onnx"],
                           ("--format onnx is not known",)),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_refusals_are_light(name: str, tmp_path: Path) -> None:
    argv, fragments = REFUSALS[name]
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"never read: the flags are refused first")
    paths = {"RUN": tmp_path / "run", "MISSING": tmp_path / "missing", "WEIGHTS": weights}
    result = _run([paths.get(arg, arg) for arg in argv])
    _refused(result, *fragments)
    _light(result)
    assert not (tmp_path / "run").exists()  # a refusal leaves nothing behind
