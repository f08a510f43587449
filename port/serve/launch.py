"""``porter serve``: resolve the run's ONNX artifact and supervise the Triton server process.

The server runs in the *serving interpreter* (:func:`serving_python`), not necessarily porter's:
PyTriton's bundled Python-backend stub reads numpy 1.x array descriptors, so it needs numpy < 2
while porter's locked environment has numpy 2. ``make serve-env`` builds that interpreter from
``port/serve/requirements.txt`` into ``.venv-serve``. The server imports porter from this source
tree (``PYTHONPATH``) and only its light modules (no torch).

Ctrl-C reaches the server directly (same process group); SIGTERM and SIGINT sent to porter are
forwarded to it. porter waits for the server's clean stop and returns its exit code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from port.formats import FORMATS
from port.ground.errors import BackendUnavailable, ManifestError, UsageError
from port.ground.vocab import REFERENCE_ID

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding port/
SERVE_VENV = PACKAGE_ROOT / ".venv-serve"
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
ENV_VAR = "PORTER_SERVE_PYTHON"
DEFAULT_ARTIFACT = FORMATS["onnx"].artifact_id("fp32")


@dataclass(frozen=True)
class ServeRequest:
    """What ``porter serve`` was asked for."""

    artifact: str | None = None
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 32
    dynamic_batching: bool = True
    queue_delay_us: int = 500
    threads: int | None = None

    def check(self) -> None:
        """Refuse values Triton would refuse later, with the flag's name."""
        ports = {"--http-port": self.http_port, "--grpc-port": self.grpc_port,
                 "--metrics-port": self.metrics_port}
        for flag, port in ports.items():
            if not 1 <= port <= 65535:
                raise UsageError(f"{flag} {port} is not a TCP port: pick one in 1-65535")
        if len(set(ports.values())) != len(ports):
            raise UsageError("--http-port, --grpc-port and --metrics-port must differ")
        if not 1 <= self.max_batch <= 4096:
            raise UsageError(f"--max-batch {self.max_batch} must be in 1-4096")
        if self.queue_delay_us < 0:
            raise UsageError(f"--queue-delay-us {self.queue_delay_us} must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads {self.threads} must be at least 1")


def _can_serve(python: str) -> bool:
    """Whether ``python`` has PyTriton and a numpy its stub reads (< 2)."""
    probe = ("import numpy, pytriton, onnxruntime, PIL; "
             "raise SystemExit(int(numpy.__version__.split('.')[0]) >= 2)")
    try:
        return subprocess.run([python, "-c", probe], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def serving_python() -> str:
    """The interpreter that runs the Triton server: ``$PORTER_SERVE_PYTHON``, else
    ``.venv-serve`` next to the port package, else this interpreter if it qualifies."""
    given = os.environ.get(ENV_VAR)
    candidates = [given] if given else [str(SERVE_VENV / "bin" / "python"), sys.executable]
    for python in candidates:
        if python and Path(python).exists() and _can_serve(python):
            return python
    where = f"{ENV_VAR}={given}" if given else f"{SERVE_VENV} or this environment"
    raise BackendUnavailable(
        f"porter serve needs PyTriton with numpy < 2, not found in {where}: run `make "
        f"serve-env`, or install {REQUIREMENTS} into a virtual environment and set {ENV_VAR} "
        "to its python")


def serve_artifact(run: Path, artifact: str | None) -> tuple[str, Path]:
    """(artifact id, path) of the ONNX model to serve, checked fresh."""
    from port.stages.common import open_run

    manifest = open_run(run)
    onnx_kind = FORMATS["onnx"].kind
    wanted = artifact or DEFAULT_ARTIFACT
    record = manifest.get(wanted)
    if record is None and artifact is None:
        ref = manifest.get(REFERENCE_ID)
        record = ref if ref is not None and ref.kind == onnx_kind else None
    if record is None:
        onnx = [r.id for r in manifest.records(kind=onnx_kind)]
        raise ManifestError(
            f"run {run} has no artifact '{wanted}': export it (`porter export --run {run} --to "
            f"onnx`) or pass --artifact with one of: {', '.join(onnx) or 'none yet'}")
    if record.kind != onnx_kind:
        raise UsageError(f"--artifact {record.id} is a {record.kind}: porter serve runs ONNX "
                         "models on the CPU; serve engines with `porter export --to triton` "
                         "on a GPU Triton server")
    manifest.require_fresh(record.id)
    return record.id, manifest.run_dir / record.path


def server_command(python: str, model: Path, name: str, req: ServeRequest) -> list[str]:
    """The argv of the server process."""
    cmd = [python, "-m", "port.serve.server", "--model", str(model), "--name", name,
           "--host", req.host, "--http-port", str(req.http_port),
           "--grpc-port", str(req.grpc_port), "--metrics-port", str(req.metrics_port),
           "--max-batch", str(req.max_batch), "--queue-delay-us", str(req.queue_delay_us),
           "--dynamic-batching" if req.dynamic_batching else "--no-dynamic-batching"]
    if req.threads is not None:
        cmd += ["--threads", str(req.threads)]
    return cmd


def server_env() -> dict[str, str]:
    """The environment of the server process: porter's source tree importable first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                      env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def serve_run(run: Path, req: ServeRequest, *, console: Any) -> int:
    """Serve the run's model until the server stops; returns the server's exit code."""
    req.check()
    name, model = serve_artifact(run, req.artifact)
    python = serving_python()
    console.print(f"starting Triton (PyTriton) for {name} with {python}", markup=False,
                  highlight=False)
    proc = subprocess.Popen(server_command(python, model, name, req), env=server_env())

    def forward(signum: int, _frame: Any) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
