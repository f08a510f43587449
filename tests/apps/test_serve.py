"""`porter serve` on a real tritonserver (PyTriton): concurrent HTTP and gRPC clients with real
CIFAR-10 images, every answer checked against port.load(...).predict; clean stop on SIGINT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import port
from port.ground.errors import BackendUnavailable
from port.serve.launch import serving_python
from tests.apps.conftest import AppRun
from tests.e2e.helpers import REPO

pytestmark = pytest.mark.slow
MODEL = "onnx-fp32"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def server(app_run: AppRun) -> Iterator[tuple[subprocess.Popen, list[int], list[str]]]:
    """One `porter serve` for the module, stopped with SIGINT (Ctrl-C) at the end."""
    try:
        serving_python()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    http, grpc, metrics = _free_ports(3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "port", "serve", "--run", str(app_run.run), "--http-port",
         str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
         "--max-batch", "16", "--threads", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:  # blocks until the server says it is ready (or exits)
        lines.append(line)
        if line.startswith("ready"):
            break
    assert any(line.startswith("ready") for line in lines), "".join(lines[-40:])
    yield proc, [http, grpc], lines
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def test_concurrent_http_and_grpc_clients_get_predicts_answers(
        server: tuple[subprocess.Popen, list[int], list[str]], app_run: AppRun) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    _, (http, grpc), lines = server
    assert any(f"127.0.0.1:{http}" in line for line in lines)
    assert any(f"127.0.0.1:{grpc}" in line for line in lines)
    with port.load(app_run.onnx) as predictor:
        inputs = predictor.preprocess(app_run.images)
        expected = predictor.logits(inputs)
        name, out = predictor.input_name, predictor.logits_name

    def ask(job: tuple[str, int]) -> tuple[int, np.ndarray]:
        kind, i = job
        x = inputs[i:i + 1]
        if kind == "http":
            client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
            request = httpclient.InferInput(name, list(x.shape), "FP32")
            request.set_data_from_numpy(x, binary_data=True)
        else:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
            request = grpcclient.InferInput(name, list(x.shape), "FP32")
            request.set_data_from_numpy(x)
        try:
            return i, client.infer(MODEL, [request]).as_numpy(out)[0]
        finally:
            client.close()

    jobs = [(kind, i) for i in range(len(inputs)) for kind in ("http", "grpc")]
    with ThreadPoolExecutor(max_workers=8) as pool:  # 8 concurrent clients
        answers = list(pool.map(ask, jobs))
    assert len(answers) == len(jobs)
    for i, logits in answers:
        # Dynamic batching puts an image in batches of other sizes than predict's: same model,
        # same kernels, so the same class and logits within float32 rounding.
        assert int(np.argmax(logits)) == int(np.argmax(expected[i]))
        np.testing.assert_allclose(logits, expected[i], rtol=1e-5, atol=1e-5)


def test_ctrl_c_stops_the_server_cleanly(
        server: tuple[subprocess.Popen, list[int], list[str]]) -> None:
    proc, (http, _), _ = server
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, rest[-3000:]
    assert "stopped" in rest
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", http), timeout=2).close()


def test_serve_bad_inputs_are_one_line(app_run: AppRun, tmp_path: Path) -> None:
    from tests.e2e.helpers import assert_usage_error, porter

    assert_usage_error(porter("serve", "--run", tmp_path / "nothing"), "no porter run")
    assert_usage_error(porter("serve", "--run", app_run.run, "--artifact", "onnx-int8"),
                       "onnx-int8")
    assert_usage_error(porter("serve", "--run", app_run.run, "--http-port", "70000"),
                       "--http-port")
