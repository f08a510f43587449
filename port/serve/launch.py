"""``porter serve``: resolve the run's artifact and its backend, and supervise the Triton server
process.

The server runs in the *serving interpreter* (:func:`serving_python`), not necessarily porter's:
PyTriton's bundled Python-backend stub reads numpy 1.x array descriptors, so it needs numpy < 2
while porter's locked environment has numpy 2. ``make serve-env`` builds that interpreter from
``port/serve/requirements.txt`` into ``.venv-serve``; it holds the runtimes named in
:data:`SERVE_RUNTIMES`. The server imports porter from this source tree (``PYTHONPATH``) and
only its light modules (no torch).

What can be served follows from the backend registry (``port.formats``): an artifact whose
format has a backend built on one of those runtimes (ONNX files: ONNX Runtime by default, or
OpenVINO; OpenVINO IR: OpenVINO). ``--artifact ID@BACKEND`` (the row name ``porter evaluate``
uses) or :attr:`ServeRequest.backend` picks another backend of the format.

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

from port.formats import BACKENDS, FORMATS, Backend, Format, format_for_kind, normalize_backend
from port.ground.errors import BackendUnavailable, ManifestError, UsageError
from port.ground.vocab import REFERENCE_ID

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding port/
SERVE_VENV = PACKAGE_ROOT / ".venv-serve"
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
ENV_VAR = "PORTER_SERVE_PYTHON"
DEFAULT_ARTIFACT = FORMATS["onnx"].artifact_id("fp32")
# The inference runtimes requirements.in installs into the serving environment, by distribution
# name (for both, also the module porter's runner imports). A backend is servable when one of
# its distributions is here; tests/apps/test_serve_openvino.py checks requirements.in has them.
SERVE_RUNTIMES = ("onnxruntime", "openvino")
BACKEND_SEP = "@"  # --artifact ID@BACKEND, as `porter evaluate` names a row


@dataclass(frozen=True)
class ServeRequest:
    """What ``porter serve`` was asked for.

    ``artifact``: a manifest id, optionally ``ID@BACKEND``; ``backend``: a registry backend
    name (None: the one in ``artifact``, else the format's default).
    """

    artifact: str | None = None
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 32
    dynamic_batching: bool = True
    queue_delay_us: int = 500
    threads: int | None = None
    backend: str | None = None

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


@dataclass(frozen=True)
class ServeTarget:
    """The artifact to serve and the backend that runs it."""

    artifact: str  # manifest id; also the Triton model name
    path: Path
    backend: str  # registry name (port.formats.BACKENDS)
    runtime: str  # the serving environment's runtime it needs (one of SERVE_RUNTIMES)


def serve_runtime(entry: Backend) -> str | None:
    """The serving environment's runtime ``entry`` runs on, or None when it cannot be served."""
    return next((d for d in entry.distributions if d in SERVE_RUNTIMES), None)


def served_formats() -> list[Format]:
    """The formats ``porter serve`` runs: those with at least one servable backend."""
    return [f for f in FORMATS.values()
            if any(serve_runtime(BACKENDS[b]) for b in f.backends)]


def _can_serve(python: str, runtime: str) -> bool:
    """Whether ``python`` has PyTriton, ``runtime`` and a numpy its stub reads (< 2)."""
    probe = (f"import numpy, pytriton, PIL, {runtime}; "
             "raise SystemExit(int(numpy.__version__.split('.')[0]) >= 2)")
    try:
        return subprocess.run([python, "-c", probe], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def serving_python(runtime: str = "onnxruntime") -> str:
    """The interpreter that runs the Triton server with ``runtime``: ``$PORTER_SERVE_PYTHON``,
    else ``.venv-serve`` next to the port package, else this interpreter if it qualifies."""
    given = os.environ.get(ENV_VAR)
    candidates = [given] if given else [str(SERVE_VENV / "bin" / "python"), sys.executable]
    for python in candidates:
        if python and Path(python).exists() and _can_serve(python, runtime):
            return python
    where = f"{ENV_VAR}={given}" if given else f"{SERVE_VENV} or this environment"
    raise BackendUnavailable(
        f"porter serve needs PyTriton with numpy < 2 and {runtime}, not found in {where}: run "
        f"`make serve-env`, or install {REQUIREMENTS} into a virtual environment and set "
        f"{ENV_VAR} to its python")


def _split_artifact(artifact: str | None, backend: str | None) -> tuple[str | None, str | None]:
    """``ID@BACKEND`` -> (ID, BACKEND); a backend named twice must be the same one."""
    if artifact is None or BACKEND_SEP not in artifact:
        return artifact, backend
    art_id, _, named = artifact.rpartition(BACKEND_SEP)
    if not art_id or not named.strip():
        raise UsageError(f"--artifact {artifact}: write ID or ID{BACKEND_SEP}BACKEND, e.g. "
                         f"onnx-fp32{BACKEND_SEP}openvino")
    if backend is not None and normalize_backend(backend).name != normalize_backend(named).name:
        raise UsageError(f"--artifact {artifact} names backend {named}, --backend says "
                         f"{backend}: name it once")
    return art_id, named


def _not_found(run: Path, wanted: str, servable: list[str]) -> Exception:
    """The refusal for an id the manifest does not hold: a precision the format does not have
    is named as such; otherwise the command that makes it, and the ids that can be served."""
    choices = f"pass --artifact with one of: {', '.join(servable) or 'none yet'}"
    for fmt in served_formats():
        prefix = f"{fmt.name}-"
        if wanted.lower().startswith(prefix):
            precision = wanted[len(prefix):]
            if precision.lower() not in fmt.precisions:
                return UsageError(f"--artifact {wanted}: --to {fmt.name} has no precision "
                                  f"'{precision}' (only {', '.join(fmt.precisions)}): {choices}")
            return ManifestError(f"run {run} has no artifact '{wanted}': export it (`porter "
                                 f"export --run {run} --to {fmt.name} --precision "
                                 f"{precision.lower()}`) or {choices}")
    return ManifestError(f"run {run} has no artifact '{wanted}': export one (`porter export "
                         f"--run {run} --to onnx`) or {choices}")


def _backend_for(fmt: Format, record_id: str, named: str | None) -> Backend:
    """The servable backend of ``fmt`` that ``named`` names (None: the format's default)."""
    servable = [b for b in fmt.backends if serve_runtime(BACKENDS[b])]
    entry = BACKENDS[fmt.backend] if named is None else normalize_backend(named)
    if entry.name not in servable:
        raise UsageError(f"porter serve cannot run {record_id} on {entry.name}: choose one of "
                         f"{', '.join(servable)}")
    return entry


def serve_artifact(run: Path, artifact: str | None, backend: str | None = None) -> ServeTarget:
    """The artifact to serve (checked fresh) and the backend that runs it."""
    from port.stages.common import open_run

    manifest = open_run(run)
    wanted, named = _split_artifact(artifact, backend)
    kinds = {f.kind: f for f in served_formats()}
    record = manifest.get(wanted or DEFAULT_ARTIFACT)
    if record is None and wanted is None:
        ref = manifest.get(REFERENCE_ID)
        record = ref if ref is not None and ref.kind == FORMATS["onnx"].kind else None
    if record is None:
        servable = [r.id for r in manifest.records() if r.kind in kinds]
        raise _not_found(run, wanted or DEFAULT_ARTIFACT, servable)
    fmt = kinds.get(record.kind)
    if fmt is None:
        what = format_for_kind(record.kind)
        hint = ("serve engines with `porter export --to triton` on a GPU Triton server"
                if what is not None and what.hardware == "cuda-gpu" else
                "export the run to one of those first")
        raise UsageError(f"--artifact {record.id} is a {record.kind}: porter serve runs "
                         f"{' and '.join(kinds)} artifacts on the CPU; {hint}")
    entry = _backend_for(fmt, record.id, named)
    manifest.require_fresh(record.id)
    return ServeTarget(record.id, manifest.run_dir / record.path, entry.name,
                       serve_runtime(entry) or entry.name)


def server_command(python: str, target: ServeTarget, req: ServeRequest) -> list[str]:
    """The argv of the server process."""
    cmd = [python, "-m", "port.serve.server", "--model", str(target.path),
           "--name", target.artifact, "--backend", target.backend,
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
    target = serve_artifact(run, req.artifact, req.backend)
    python = serving_python(target.runtime)
    console.print(f"starting Triton (PyTriton) for {target.artifact} on {target.backend} with "
                  f"{python}", markup=False, highlight=False)
    proc = subprocess.Popen(server_command(python, target, req), env=server_env())

    def forward(signum: int, _frame: Any) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
