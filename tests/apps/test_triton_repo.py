"""`porter export --to triton`: every config.pbtxt parsed by Triton's own model_config protobuf
(tritonclient) and read by a real tritonserver (PyTriton's bundled one); the OpenVINO IR's model
checked against the rules of Triton's OpenVINO backend (src/openvino.cc of
triton-inference-server/openvino_backend) and run from the repository's own files with real
OpenVINO under the config's parameters (the bundled server has no OpenVINO backend to run it);
the repository's files are the record's companions; bad --model-repo values are one-line errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import port
from port.export import triton
from port.export.sidecar import build_sidecar
from port.ground.errors import ManifestError, ModelError
from port.manifest import Manifest
from port.models.card import ModelCard
from port.serve.launch import serving_python
from tests.apps.conftest import IrRun, porter_in_process
from tests.e2e.helpers import assert_usage_error, porter

pytestmark = pytest.mark.slow


def parse(path: Path) -> mc.ModelConfig:
    """``config.pbtxt`` as Triton reads it (text_format.Parse refuses unknown fields)."""
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.fixture(scope="module")
def exported(ir_run: IrRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copy of the app run with its FP32 ONNX and OpenVINO IR (the shared runs' manifests are
    left as the other app tests expect) and the repository ``porter export --to triton`` wrote
    for it, outside the run."""
    base = tmp_path_factory.mktemp("triton")
    run = base / "run"
    shutil.copytree(ir_run.run, run)
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


# The settings Triton's OpenVINO backend reads from `parameters` (README "Parameters"; the
# ParseParameters functions of src/openvino.cc): a key outside them is ignored, silently.
OPENVINO_BACKEND_PARAMETERS = frozenset({
    "PERFORMANCE_HINT", "CPU_EXTENSION_PATH", "INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS",
    "HINT_BF16", "NUM_STREAMS", "SKIP_OV_DYNAMIC_BATCHSIZE", "ENABLE_BATCH_PADDING",
    "RESHAPE_IO_LAYERS", "TARGET_DEVICE"})


def _parameters(config: mc.ModelConfig) -> list[tuple[str, str]]:
    return sorted((k, v.string_value) for k, v in config.parameters.items())


def _dim_matches(dim: Any, value: int) -> bool:
    """The backend's ``doesMatch``: a static dimension equals the config's; an unbounded
    dynamic one takes anything (-1 included); a bounded range takes only values strictly
    inside it."""
    if dim.is_static:
        return dim.get_length() == value
    if dim.get_max_length() < 0:
        return True
    return dim.get_min_length() < value < dim.get_max_length()


def test_openvino_model_follows_the_backends_rules(exported: tuple[Path, Path],
                                                   ir_run: IrRun) -> None:
    import openvino as ov

    run, repo = exported
    name = triton.model_name(run, "openvino-fp32")
    config = parse(repo / name / "config.pbtxt")
    assert config.name == name and config.backend == "openvino" and not config.platform
    # No batch axis for Triton: the backend would compile a static batch of max_batch_size.
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (2, mc.ModelInstanceGroup.KIND_CPU)]  # the backend refuses GPU instances
    assert dict(_parameters(config)) == {"NUM_STREAMS": "2", "PERFORMANCE_HINT": "THROUGHPUT"}
    assert set(config.parameters) <= OPENVINO_BACKEND_PARAMETERS
    assert not config.default_model_filename  # model.xml is the backend's default name
    version = repo / name / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.bin", "model.xml"]
    assert (version / "model.xml").read_bytes() == ir_run.ir.read_bytes()
    assert (version / "model.bin").read_bytes() == ir_run.ir.with_suffix(".bin").read_bytes()
    # The backend's load-time checks (ValidateInputs/ValidateOutputs with max_batch_size 0):
    # as many inputs as configured, each configured name in the model, exact rank, every
    # dimension matching; outputs likewise.
    core = ov.Core()
    model = core.read_model(str(version / "model.xml"))  # finds model.bin beside it
    for tensors, ports in ((config.input, model.inputs), (config.output, model.outputs)):
        by_name = {p.get_any_name(): p for p in ports}
        assert [t.name for t in tensors] == list(by_name)
        for t in tensors:
            shape = by_name[t.name].get_partial_shape()
            assert t.data_type == mc.TYPE_FP32
            assert len(shape) == len(t.dims) and t.dims[0] == -1
            assert all(_dim_matches(d, v) for d, v in zip(shape, t.dims, strict=True))
    [warm] = config.model_warmup
    assert warm.batch_size == 1 and list(warm.inputs["input"].dims) == [1, 3, 32, 32]
    # The repository's own pair compiled with the config's parameters as OpenVINO properties
    # (what the backend sets on its core) and an f32 hint to compare with porter's runner:
    # one request of 3 images gives port.load's logits.
    properties = dict(_parameters(config))
    compiled = core.compile_model(model, "CPU", {**properties,
                                                 "INFERENCE_PRECISION_HINT": "f32"})
    assert str(compiled.get_property("NUM_STREAMS")) == "2"
    images = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    got = compiled.create_infer_request().infer({"input": images})[compiled.outputs[0]]
    with port.load(ir_run.ir) as predictor:
        np.testing.assert_allclose(got, predictor.logits(images), rtol=1e-5, atol=1e-5)


def test_openvino_ir_with_a_dimension_range_is_refused(ir_run: IrRun, tmp_path: Path) -> None:
    """The backend matches a bounded dimension against no config value: porter says so at
    export instead of a model that never loads."""
    import openvino as ov

    model = ov.Core().read_model(str(ir_run.ir))
    model.reshape({"input": ov.PartialShape([ov.Dimension(1, 8), 3, 32, 32])})
    ranged = tmp_path / "model.fp32.xml"
    ov.save_model(model, str(ranged), compress_to_fp16=False)
    with pytest.raises(ModelError, match="dimension range"):
        triton.openvino_model("r-openvino-fp32", ranged)
    ranged.with_suffix(".bin").unlink()
    with pytest.raises(ModelError, match=r"weights file model\.fp32\.bin is missing"):
        triton.openvino_model("r-openvino-fp32", ranged)


def test_repository_files_are_the_records_companions(exported: tuple[Path, Path]) -> None:
    run, repo = exported
    manifest = Manifest(run)
    record = manifest.get("triton-fp32")
    assert record is not None and record.path == "model.fp32.triton.json"
    assert [p["id"] for p in record.parents] == ["onnx-fp32", "openvino-fp32"]
    config = repo / triton.model_name(run, "onnx-fp32") / "config.pbtxt"
    ir_folder = repo / triton.model_name(run, "openvino-fp32")
    for file in (config, ir_folder / "config.pbtxt", ir_folder / "1" / "model.xml",
                 ir_folder / "1" / "model.bin"):
        assert str(file.resolve()) in record.metrics["files"], file
    assert manifest.state("triton-fp32").name == "fresh"
    # Re-exporting replaces porter's own unchanged files...
    porter_in_process("export", "--run", run, "--to", "triton", "--model-repo", repo)
    assert Manifest(run).state("triton-fp32").name == "fresh"
    assert parse(config).instance_group[0].count == 1
    # (one instance: one OpenVINO stream, the latency hint porter's runner uses)
    assert dict(_parameters(parse(ir_folder / "config.pbtxt"))) == {
        "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}
    # An edited weights copy is a changed companion too.
    weights = ir_folder / "1" / "model.bin"
    saved = weights.read_bytes()
    weights.write_bytes(saved[:-4] + bytes(4))
    assert Manifest(run).state("triton-fp32").name == "modified"
    weights.write_bytes(saved)
    assert Manifest(run).state("triton-fp32").name == "fresh"
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
    """PyTriton's tritonserver has only the Python backend, so it cannot *run* an ONNX,
    OpenVINO or TensorRT model; it still reads, normalises and validates each config.pbtxt
    before it looks for the backend (a bad one fails as "Poll failed for model directory"). The
    test asks that every model (the ONNX, the IR and an engine) gets past validation and fails
    only for the missing backend."""
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
    assert len(names) == 3, names
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
