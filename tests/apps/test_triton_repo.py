"""`porter export --to triton`: every config.pbtxt parsed by Triton's own model_config protobuf
(tritonclient) and read by a real tritonserver (PyTriton's bundled one); the repository's files
are the record's companions; bad --model-repo values are one-line errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from port.export import triton
from port.export.sidecar import build_sidecar
from port.ground.errors import ManifestError
from port.manifest import Manifest
from port.models.card import ModelCard
from port.serve.launch import serving_python
from tests.apps.conftest import AppRun, porter_in_process
from tests.e2e.helpers import assert_usage_error, porter

pytestmark = pytest.mark.slow


def parse(path: Path) -> mc.ModelConfig:
    """``config.pbtxt`` as Triton reads it (text_format.Parse refuses unknown fields)."""
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.fixture(scope="module")
def exported(app_run: AppRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copy of the app run (its manifest is left as the other app tests expect) and the
    repository ``porter export --to triton`` wrote for it, outside the run."""
    base = tmp_path_factory.mktemp("triton")
    run = base / "run"
    shutil.copytree(app_run.run, run)
    porter_in_process("export", "--run", run, "--to", "triton", "--model-repo", base / "repo",
                      "--instances", "2")
    return run, base / "repo"


def test_onnx_model_config_is_triton_model_config(exported: tuple[Path, Path]) -> None:
    run, repo = exported
    name = triton.model_name(run, "onnx-fp32")
    config = parse(repo / name / "config.pbtxt")
    assert config.name == name and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == triton.ONNX_MAX_BATCH
    # Names, dtypes and dims (batch axis left out) as ONNX Runtime sees the file.
    session = ort.InferenceSession(str(run / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    for tensors, metas in ((config.input, session.get_inputs()),
                           (config.output, session.get_outputs())):
        assert [t.name for t in tensors] == [m.name for m in metas]
        assert [list(t.dims) for t in tensors] == [m.shape[1:] for m in metas]
        assert all(t.data_type == mc.TYPE_FP32 for t in tensors)
    assert list(config.dynamic_batching.preferred_batch_size) == list(triton.ONNX_PREFERRED)
    assert config.dynamic_batching.max_queue_delay_microseconds == triton.QUEUE_DELAY_US
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (2, mc.ModelInstanceGroup.KIND_AUTO)]
    assert [w.batch_size for w in config.model_warmup] == [1, triton.ONNX_MAX_BATCH]
    warm = config.model_warmup[0].inputs["input"]
    assert warm.zero_data and list(warm.dims) == list(config.input[0].dims)
    # The model file is the run's ONNX, byte for byte, where Triton looks for it.
    assert (repo / name / "1" / "model.onnx").read_bytes() == (run / "model.fp32.onnx").read_bytes()


def test_repository_files_are_the_records_companions(exported: tuple[Path, Path]) -> None:
    run, repo = exported
    manifest = Manifest(run)
    record = manifest.get("triton-fp32")
    assert record is not None and record.path == "model.fp32.triton.json"
    assert [p["id"] for p in record.parents] == ["onnx-fp32"]
    config = repo / triton.model_name(run, "onnx-fp32") / "config.pbtxt"
    assert str(config.resolve()) in record.metrics["files"]
    assert manifest.state("triton-fp32").name == "fresh"
    # Re-exporting replaces porter's own unchanged files...
    porter_in_process("export", "--run", run, "--to", "triton", "--model-repo", repo)
    assert Manifest(run).state("triton-fp32").name == "fresh"
    assert parse(config).instance_group[0].count == 1
    # ...but never a file edited since: the record turns modified and the export is refused.
    config.write_text(config.read_text().replace("count: 1", "count: 3"))
    assert Manifest(run).state("triton-fp32").name == "modified"
    with pytest.raises(ManifestError, match=r"config\.pbtxt.*changed since.*will not overwrite"):
        porter_in_process("export", "--run", run, "--to", "triton", "--model-repo", repo)


def _card() -> ModelCard:
    from port.data.preprocess import Preprocess

    return ModelCard(arch="resnet18_cifar", num_classes=10, classes=[str(i) for i in range(10)],
                     preprocess=Preprocess.for_size(32, (0.5,) * 3, (0.25,) * 3))


@pytest.mark.parametrize(("hardware", "ccs"),
                         [(None, ["8.6"]), ("ampere+", list(triton.AMPERE_PLUS))])
def test_engine_model_config_from_the_sidecar(tmp_path: Path, hardware: str | None,
                                              ccs: list[str]) -> None:
    # No engine can be built without a GPU: the sidecar build_sidecar writes stands in for one.
    sidecar = build_sidecar(
        engine_name="model.fp16.engine",
        inputs=[{"name": "input", "dtype": "float32", "shape": [-1, 3, 32, 32],
                 "profile": {"min": [1, 3, 32, 32], "opt": [16, 3, 32, 32],
                             "max": [128, 3, 32, 32]}}],
        outputs=[{"name": "logits", "dtype": "float32", "shape": [-1, 10]}],
        precision="fp16", tensorrt_version="10.16.0", gpu_name="NVIDIA RTX A6000",
        gpu_cc=(8, 6), hardware_compatibility=hardware, version_compatible=False,
        source_onnx_sha256="ab" * 32, card=_card())
    spec = triton.engine_model("r-trt-fp16", tmp_path / "model.fp16.engine", sidecar)
    config = text_format.Parse(triton.config_text(spec), mc.ModelConfig())
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 128
    assert list(config.dynamic_batching.preferred_batch_size) == [16, 128]
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert dict(config.cc_model_filenames) == dict.fromkeys(ccs, "model_sm86.plan")
    assert not config.default_model_filename  # an unlisted GPU refuses to load the model
    assert [list(t.dims) for t in config.input] == [[3, 32, 32]]
    assert [w.batch_size for w in config.model_warmup] == [1, 128]


def test_tritonserver_reads_the_configs(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """PyTriton's tritonserver has only the Python backend, so it cannot *run* an ONNX or
    TensorRT model; it still reads, normalises and validates each config.pbtxt before it looks
    for the backend (a bad one fails as "Poll failed for model directory"). The test asks that
    every model gets past validation and fails only for the missing backend."""
    try:
        python = serving_python()
    except Exception as exc:  # BackendUnavailable: no serving environment here
        pytest.skip(str(exc))
    where = subprocess.run([python, "-c", "import pytriton, pathlib; "
                            "print(pathlib.Path(pytriton.__file__).parent / 'tritonserver')"],
                           capture_output=True, text=True, check=True).stdout.strip()
    server = Path(where)
    _, repo = exported
    # The repository of the test above plus an engine's model, configured from its sidecar
    # (the plan file's bytes are never read: there is no TensorRT backend to read them).
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    engine = tmp_path / "model.fp32.engine"
    engine.write_bytes(b"placeholder: never loaded")
    spec = triton.engine_model("r-trt-fp32", engine, build_sidecar(
        engine_name=engine.name,
        inputs=[{"name": "input", "dtype": "float32", "shape": [-1, 3, 32, 32],
                 "profile": {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32],
                             "max": [32, 3, 32, 32]}}],
        outputs=[{"name": "logits", "dtype": "float32", "shape": [-1, 10]}],
        precision="fp32", tensorrt_version="10.16.0", gpu_name="H100", gpu_cc=(9, 0),
        hardware_compatibility=None, version_compatible=False, source_onnx_sha256="ab" * 32,
        card=_card()))
    triton.write_model(copy, spec)
    done = subprocess.run(
        [str(server / "bin" / "tritonserver"), "--model-repository", str(copy),
         "--backend-directory", str(server / "backends"), "--allow-http=false",
         "--allow-grpc=false", "--allow-metrics=false", "--exit-on-error=true"],
        capture_output=True, text=True, timeout=120)
    log = done.stdout + done.stderr
    assert "Poll failed" not in log, log[-3000:]
    names = sorted(p.name for p in copy.iterdir())
    for name in names:
        failed = re.findall(rf"failed to load '{re.escape(name)}' version 1: (.*)", log)
        assert len(failed) == 1 and "unable to find backend library" in failed[0], log[-3000:]


def test_bad_model_repo_is_one_line(exported: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = exported
    assert_usage_error(porter("export", "--run", run, "--to", "triton"), "--model-repo DIR")
    other = tmp_path / "other-run"
    other.mkdir()
    (other / "manifest.json").write_text("[]")
    assert_usage_error(porter("export", "--run", run, "--to", "triton", "--model-repo",
                              other / "models"), "inside another run")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_usage_error(porter("export", "--run", run, "--to", "triton", "--model-repo",
                              blocker / "repo"), "not writable")
