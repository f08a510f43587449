"""`porter serve` on a real tritonserver (PyTriton): concurrent HTTP and gRPC clients with real
CIFAR-10 images, every answer checked against port.load(...).predict; clean stop on SIGINT."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import port
from port.ground.errors import BackendUnavailable
from port.serve.launch import serving_python
from tests.apps.conftest import AppRun, start_serve, stop_serve

pytestmark = pytest.mark.slow
MODEL = "onnx-fp32"


@pytest.fixture(scope="module")
def server(app_run: AppRun) -> Iterator[tuple[subprocess.Popen, list[int], list[str]]]:
    """One `porter serve` for the module, stopped with SIGINT (Ctrl-C) at the end."""
    try:
        serving_python()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    serving = start_serve(app_run.run, "--max-batch", "16", "--threads", "1")
    yield serving.proc, [serving.http, serving.grpc], serving.lines
    stop_serve(serving)


def test_concurrent_http_and_grpc_clients_get_predicts_answers(
        server: tuple[subprocess.Popen, list[int], list[str]], app_run: AppRun) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    _, (http, grpc), lines = server
    assert any(f"127.0.0.1:{http}" in line for line in lines)
    assert any(f"127.0.0.1:{grpc}" in line for line in lines)
    # ONNX defaults to ONNX Runtime, and the log says which backend serves it.
    assert any(line.startswith("serving ") and f"as model '{MODEL}' on onnxruntime (" in line
               for line in lines), "".join(lines[-20:])
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
