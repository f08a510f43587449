"""One small real run shared by the app, C++ and serving tests: a narrow CIFAR ResNet trained
for one epoch on real CIFAR-10 JPEGs, exported to FP32 ONNX by the real CLI (in-process); a copy
of it with the FP32 OpenVINO IR too; and the helpers that start and stop `porter serve`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from port.cli import app
from tests.e2e.helpers import REPO

TRAIN = ["--epochs", "1", "--limit", "200", "--val-limit", "100", "--arch", "resnet18_cifar",
         "--width", "0.125", "--batch-size", "64", "--workers", "0", "--seed", "0",
         "--warmup-epochs", "0"]


@dataclass(frozen=True)
class AppRun:
    """The run directory, its FP32 ONNX, and real validation images (paths and classes)."""

    run: Path
    onnx: Path
    images: list[Path]
    classes: list[str]


def porter_in_process(*args: str | Path) -> None:
    """The real CLI, in this process (torch is imported once for the whole session)."""
    app(args=[str(a) for a in args], prog_name="porter", standalone_mode=False)


@pytest.fixture(scope="session")
def app_run(cifar_subset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AppRun:
    """Train (1 epoch) and export a tiny model on the real CIFAR-10 subset, once."""
    run = tmp_path_factory.mktemp("apps") / "run"
    porter_in_process("train", "--run", run, "--data", cifar_subset_dir, *TRAIN)
    porter_in_process("export", "--run", run, "--to", "onnx")
    val = cifar_subset_dir / "test"
    classes = sorted(p.name for p in val.iterdir() if p.is_dir())
    # Two images per class, in a fixed order: real JPEGs of every class.
    images = [sorted((val / c).iterdir())[i] for c in classes for i in range(2)]
    return AppRun(run, run / "model.fp32.onnx", images, classes)


@dataclass(frozen=True)
class IrRun:
    """A copy of the app run with its FP32 OpenVINO IR exported (the app run's own manifest
    stays as the other app tests expect)."""

    run: Path
    onnx: Path
    ir: Path


@pytest.fixture(scope="session")
def ir_run(app_run: AppRun, tmp_path_factory: pytest.TempPathFactory) -> IrRun:
    """``porter export --to openvino`` (real OpenVINO) on a copy of the app run, once."""
    run = tmp_path_factory.mktemp("apps-ir") / "run"
    shutil.copytree(app_run.run, run)
    porter_in_process("export", "--run", run, "--to", "openvino")
    return IrRun(run, run / "model.fp32.onnx", run / "model.fp32.xml")


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports free on 127.0.0.1 right now (the OS picks them)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class Serving:
    """A running `porter serve`: the process, its HTTP and gRPC ports, its output so far."""

    proc: subprocess.Popen
    http: int
    grpc: int
    lines: list[str]


def start_serve(run: Path, *args: str) -> Serving:
    """`porter serve --run RUN ARGS` on free ports, returned once it prints ``ready`` (the test
    fails with its last output when it exits first)."""
    http, grpc, metrics = free_ports(3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "port", "serve", "--run", str(run), "--http-port", str(http),
         "--grpc-port", str(grpc), "--metrics-port", str(metrics), *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:  # blocks until the server says it is ready (or exits)
        lines.append(line)
        if line.startswith("ready"):
            break
    if not any(line.startswith("ready") for line in lines):
        proc.wait(timeout=60)
        pytest.fail("porter serve did not get ready:\n" + "".join(lines[-40:]))
    return Serving(proc, http, grpc, lines)


def stop_serve(serving: Serving) -> str:
    """SIGINT (Ctrl-C) to a server still running; its remaining output."""
    if serving.proc.poll() is not None:
        return ""
    serving.proc.send_signal(signal.SIGINT)
    return serving.proc.communicate(timeout=60)[0]
