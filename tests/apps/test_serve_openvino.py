"""`porter serve` with OpenVINO on a real tritonserver (PyTriton): the run's OpenVINO IR
(`--artifact openvino-fp32`) and its ONNX on OpenVINO (`--artifact onnx-fp32@openvino`), each
answering HTTP requests of real CIFAR-10 images with port.load's top-1 and logits; what the serve
log records; the refusals (unknown precision, an IR whose .bin is missing or edited, a backend
the format or the serving environment does not have) as one line and exit 2."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import port
from port.ground.errors import BackendUnavailable, UsageError
from port.serve import launch
from tests.apps.conftest import AppRun, IrRun, Serving, start_serve, stop_serve
from tests.e2e.helpers import assert_usage_error, porter

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    """One way of serving with OpenVINO: what `--artifact` says, the file it serves, the
    backend port.load gets for the same answers, the Triton model name."""

    artifact: str
    file: str
    backend: str | None
    model: str


CASES = [Case("openvino-fp32", "model.fp32.xml", None, "openvino-fp32"),
         Case("onnx-fp32@openvino", "model.fp32.onnx", "openvino", "onnx-fp32")]


@pytest.fixture(scope="module", params=CASES, ids=[c.artifact for c in CASES])
def served(request: pytest.FixtureRequest, ir_run: IrRun) -> Iterator[tuple[Case, Serving]]:
    """One server at a time: pytest finishes every test of one case (and stops its server)
    before it starts the next."""
    try:
        launch.serving_python("openvino")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    case: Case = request.param
    serving = start_serve(ir_run.run, "--artifact", case.artifact, "--max-batch", "8",
                          "--threads", "1")
    yield case, serving
    rest = stop_serve(serving)
    assert serving.proc.returncode == 0 and "stopped" in rest, rest[-3000:]


def test_http_answers_are_port_loads(served: tuple[Case, Serving], ir_run: IrRun,
                                     app_run: AppRun) -> None:
    import tritonclient.http as httpclient

    case, serving = served
    with port.load(ir_run.run / case.file, backend=case.backend) as predictor:
        assert predictor.backend == "openvino"
        inputs = predictor.preprocess(app_run.images)
        expected = predictor.logits(inputs)
        name, out = predictor.input_name, predictor.logits_name

    def ask(rows: slice) -> tuple[slice, np.ndarray]:
        x = inputs[rows]
        client = httpclient.InferenceServerClient(f"127.0.0.1:{serving.http}")
        try:
            request = httpclient.InferInput(name, list(x.shape), "FP32")
            request.set_data_from_numpy(x, binary_data=True)
            return rows, client.infer(case.model, [request]).as_numpy(out)
        finally:
            client.close()

    # Single images from 4 concurrent clients (dynamic batching merges them) and one request
    # of 5 images: the IR's batch axis is dynamic on the server as in port.load.
    jobs = [slice(i, i + 1) for i in range(len(inputs))] + [slice(0, 5)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(ask, jobs))
    for rows, logits in answers:
        want = expected[rows]
        assert logits.shape == want.shape
        np.testing.assert_array_equal(logits.argmax(axis=1), want.argmax(axis=1))
        # Same OpenVINO version and f32 hint; only the batch sizes differ.
        np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)


def test_the_log_says_which_backend_serves_it(served: tuple[Case, Serving]) -> None:
    case, serving = served
    text = "".join(serving.lines)
    assert re.search(rf"starting Triton \(PyTriton\) for {case.model} on openvino with \S+",
                     text), text[-2000:]
    # The f32 hint is pinned, and the compiled model's own report is what the log prints.
    assert re.search(rf"serving \S+{re.escape(case.file)} as model '{case.model}' on openvino "
                     r"\(CPU, computing in f32\)", text), text[-2000:]


def test_requirements_carry_the_serving_runtimes() -> None:
    """What `make serve-env` installs holds every runtime porter serve relies on, pinned with
    hashes, and numpy below 2 (PyTriton's stub)."""
    wanted = {*launch.SERVE_RUNTIMES, "numpy", "nvidia-pytriton"}
    text = launch.REQUIREMENTS.read_text()
    pins = dict(re.findall(r"^([a-z0-9_.-]+)==(\S+) \\\n\s+--hash=sha256:", text, re.M))
    assert wanted <= set(pins), wanted - set(pins)
    assert int(pins["numpy"].split(".")[0]) < 2
    source = launch.REQUIREMENTS.with_name("requirements.in").read_text()
    assert all(re.search(rf"^{name}\b", source, re.M) for name in launch.SERVE_RUNTIMES)


def test_backend_resolution(ir_run: IrRun) -> None:
    """ServeRequest.backend and ID@BACKEND reach the same choice; the format's default
    otherwise; what the format or the serving environment cannot run is refused by name."""
    default = launch.serve_artifact(ir_run.run, None)
    assert (default.artifact, default.backend, default.runtime) == (
        "onnx-fp32", "onnxruntime", "onnxruntime")
    ir = launch.serve_artifact(ir_run.run, "openvino-fp32")
    assert (ir.backend, ir.path) == ("openvino", ir_run.ir)
    by_flag = launch.serve_artifact(ir_run.run, "onnx-fp32", "OpenVINO")
    assert by_flag == launch.serve_artifact(ir_run.run, "onnx-fp32@openvino")
    assert (by_flag.backend, by_flag.runtime, by_flag.path) == (
        "openvino", "openvino", ir_run.onnx)
    assert launch.serve_artifact(ir_run.run, "onnx-fp32@openvino-bf16").runtime == "openvino"
    with pytest.raises(UsageError, match="name it once"):
        launch.serve_artifact(ir_run.run, "onnx-fp32@openvino", "onnxruntime")
    with pytest.raises(UsageError, match="cannot run openvino-fp32 on onnxruntime"):
        launch.serve_artifact(ir_run.run, "openvino-fp32", "onnxruntime")
    with pytest.raises(UsageError, match="cannot run onnx-fp32 on torch"):
        launch.serve_artifact(ir_run.run, "onnx-fp32@torch")


def test_bad_openvino_artifacts_are_one_line(ir_run: IrRun, tmp_path: Path) -> None:
    assert_usage_error(porter("serve", "--run", ir_run.run, "--artifact", "openvino-fp99"),
                       "openvino-fp99", "fp32, fp16, int8")
    assert_usage_error(porter("serve", "--run", ir_run.run, "--artifact", "openvino-fp16"),
                       "no artifact 'openvino-fp16'", "--to openvino --precision fp16")
    assert_usage_error(porter("serve", "--run", ir_run.run, "--artifact",
                              "openvino-fp32@onnxruntime"), "openvino-fp32", "onnxruntime")
    # --backend is the flag spelling of ID@BACKEND: the same checks, by name.
    assert_usage_error(porter("serve", "--run", ir_run.run, "--artifact", "onnx-fp32",
                              "--backend", "tensorrt"), "onnx-fp32", "tensorrt",
                       "onnxruntime, openvino")
    assert_usage_error(porter("serve", "--run", ir_run.run, "--backend", "tvm"),
                       "unknown backend 'tvm'")
    missing = tmp_path / "missing"
    shutil.copytree(ir_run.run, missing)
    (missing / "model.fp32.bin").unlink()
    assert_usage_error(porter("serve", "--run", missing, "--artifact", "openvino-fp32"),
                       "openvino-fp32", "model.fp32.bin")
    edited = tmp_path / "edited"
    shutil.copytree(ir_run.run, edited)
    weights = edited / "model.fp32.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the file still loads, the weights differ
    weights.write_bytes(bytes(data))
    assert_usage_error(porter("serve", "--run", edited, "--artifact", "openvino-fp32"),
                       "openvino-fp32", "modified")


def test_the_server_refuses_an_ir_without_weights(ir_run: IrRun, tmp_path: Path) -> None:
    """The server process checks too (an IR handed to it directly, past the manifest): one
    line and exit 2 before Triton starts."""
    try:
        python = launch.serving_python("openvino")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    lone = tmp_path / "model.fp32.xml"
    shutil.copyfile(ir_run.ir, lone)  # no .bin beside it
    target = launch.ServeTarget("openvino-fp32", lone, "openvino", "openvino")
    done = subprocess.run(launch.server_command(python, target, launch.ServeRequest()),
                          env=launch.server_env(), capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("porter: error:") and "model.fp32.bin" in lines[0], lines
