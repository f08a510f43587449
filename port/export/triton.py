"""A Triton Inference Server model repository for porter's ONNX files, OpenVINO IRs and TensorRT
engines.

One model per artifact: ``REPO/NAME/config.pbtxt`` and ``REPO/NAME/1/<files>``. ONNX files run on
Triton's ``onnxruntime_onnx`` platform, engines on ``tensorrt_plan`` with one file per compute
capability the engine runs on (``cc_model_filenames``; no ``default_model_filename``, so a GPU
the engine was not built for refuses to load the model instead of failing at the first request),
OpenVINO IRs on the ``openvino`` backend (``1/model.xml`` + ``1/model.bin``, the names it loads
by default).

``config.pbtxt`` is protobuf text of Triton's ``inference.ModelConfig``
(``model_config.proto``). It is written here by hand, not through the generated message, because
that message ships in ``tritonclient``, which porter's users need not install; the tests parse
every file written with Triton's own ``model_config_pb2``.

Shapes: porter's exports have a dynamic batch axis, so ``max_batch_size`` is set and ``dims`` omit
it. An engine's optimisation profile gives ``max_batch_size`` (the profile's max) and the
preferred batch sizes (opt and max); an ONNX file has no profile, so ``ONNX_MAX_BATCH`` and
``ONNX_PREFERRED`` (what ONNX Runtime on a CPU still gains from) stand in.

OpenVINO IRs are the exception: ``max_batch_size`` 0 and ``dims`` with the batch axis (-1).
Triton's OpenVINO backend (``src/openvino.cc`` of triton-inference-server/openvino_backend)
reshapes a model with ``max_batch_size`` N > 0 to a *static* batch of N (``ov::set_batch``) and
refuses any execution whose batch is not exactly N unless ``ENABLE_BATCH_PADDING`` pads it with
zeros, so every request would cost N images of compute. With 0 the IR keeps its dynamic batch
axis: a client sends ``[n, 3, H, W]`` as it does to the ONNX model, and Triton does not batch
requests together (it batches only models with ``max_batch_size`` > 0).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from port.ground.atomic import atomic_path, atomic_write_text
from port.ground.errors import ModelError, UsageError


@dataclass(frozen=True)
class Runtime:
    """What runs a model in Triton, as ``config.pbtxt`` names it: a ``platform`` (the model
    formats Triton names itself) or a ``backend`` (OpenVINO has no platform name)."""

    key: str  # "platform" | "backend": the config field that names it
    name: str


# manifest kind -> what runs it in Triton (also which kinds go into a repository).
PLATFORMS = {"onnx": Runtime("platform", "onnxruntime_onnx"),
             "engine": Runtime("platform", "tensorrt_plan"),
             "openvino": Runtime("backend", "openvino")}
ONNX_MAX_BATCH = 64
ONNX_PREFERRED = (8, 32)
# Short: a lone request waits at most this long for others to batch with (Triton's own example
# value); latency-bound deployments lower it, throughput-bound ones raise it.
QUEUE_DELAY_US = 100
VERSION = "1"  # every model has one version; a re-export replaces it
# Compute capabilities from Ampere on, for engines built with hardware compatibility "ampere+".
AMPERE_PLUS = ("8.0", "8.6", "8.7", "8.9", "9.0", "10.0", "10.3", "11.0", "12.0", "12.1")
# ONNX TensorProto element type / numpy dtype name -> Triton data type.
_ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16", 2: "TYPE_UINT8",
               3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL"}
_NUMPY_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64",
                "bfloat16": "TYPE_BF16", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8",
                "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}
# OpenVINO element type name -> Triton data type (by name: ov.Type.to_dtype() maps bf16 to
# numpy's float16, which would mislabel it).
_OV_TYPES = {"f32": "TYPE_FP32", "f16": "TYPE_FP16", "f64": "TYPE_FP64", "bf16": "TYPE_BF16",
             "u8": "TYPE_UINT8", "i8": "TYPE_INT8", "i16": "TYPE_INT16", "i32": "TYPE_INT32",
             "i64": "TYPE_INT64", "boolean": "TYPE_BOOL"}
# OpenVINO IR file names in the version folder: the backend opens model.xml unless
# default_model_filename says otherwise, and OpenVINO reads the weights from the .bin beside it.
OPENVINO_FILES = ("model.xml", "model.bin")
_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Tensor:
    """One model input or output as Triton sees it (``dims`` without the batch axis)."""

    name: str
    data_type: str  # TYPE_FP32, ...
    dims: tuple[int, ...]  # -1: dynamic


@dataclass(frozen=True)
class ModelSpec:
    """Everything one model directory of the repository holds."""

    name: str
    runtime: Runtime
    max_batch_size: int  # 0: the model has no batch axis (no dynamic batching then)
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    source: Path  # the artifact copied into the version folder
    file_name: str  # its name there
    # Further files of the artifact copied beside it (source, name), written before it.
    companions: tuple[tuple[Path, str], ...] = ()
    preferred_batch_sizes: tuple[int, ...] = ()
    instance_kind: str = "KIND_AUTO"
    instances: int = 1
    cc_model_filenames: dict[str, str] = field(default_factory=dict)
    # Input shape (without batch) warm-up requests use, when ``inputs`` has dynamic dims.
    warmup_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # The backend's own settings (config.pbtxt ``parameters``, string values).
    parameters: dict[str, str] = field(default_factory=dict)


def model_name(run: Path, artifact_id: str) -> str:
    """``RUN-ARTIFACT`` with characters Triton model names should not hold replaced by ``_``."""
    return _NAME_RE.sub("_", f"{run.name}-{artifact_id}")


def onnx_model(name: str, path: Path, *, instances: int = 1) -> ModelSpec:
    """The model of an ONNX file: I/O read from its graph, ONNX Runtime's defaults for batching."""
    from port.export.onnx_files import load_onnx

    graph = load_onnx(path).graph
    weights = {init.name for init in graph.initializer}  # old opsets list them as inputs
    inputs = [v for v in graph.input if v.name not in weights]
    dims = {v.name: _onnx_dims(v, path) for v in [*inputs, *graph.output]}
    # The batch axis is the first one, dynamic in every tensor (porter exports it so).
    batched = all(d and d[0] == -1 for d in dims.values())

    def tensor(v: Any) -> Tensor:
        elem = v.type.tensor_type.elem_type
        if elem not in _ONNX_TYPES:
            raise ModelError(f"{path.name}: tensor '{v.name}' has ONNX element type {elem}, "
                             "which Triton's model configuration cannot name")
        shape = dims[v.name][1:] if batched else dims[v.name]
        return Tensor(v.name, _ONNX_TYPES[elem], tuple(shape))

    return ModelSpec(
        name=name, runtime=PLATFORMS["onnx"], source=path, file_name="model.onnx",
        max_batch_size=ONNX_MAX_BATCH if batched else 0,
        inputs=tuple(tensor(v) for v in inputs), outputs=tuple(tensor(v) for v in graph.output),
        preferred_batch_sizes=ONNX_PREFERRED if batched else (),
        # GPU when the server has one and ONNX Runtime's CUDA provider, else CPU.
        instance_kind="KIND_AUTO", instances=instances)


def _onnx_dims(value: Any, path: Path) -> list[int]:
    if not value.type.HasField("tensor_type"):
        raise ModelError(f"{path.name}: '{value.name}' is not a tensor; Triton needs tensors")
    return [d.dim_value if d.HasField("dim_value") else -1
            for d in value.type.tensor_type.shape.dim]


def engine_model(name: str, path: Path, sidecar: dict[str, Any], *,
                 instances: int = 1) -> ModelSpec:
    """The model of a TensorRT engine, from its sidecar: I/O, profile, compute capability."""
    profiles = [t["profile"] for t in sidecar["inputs"] if t.get("profile")]
    if not profiles:
        raise ModelError(f"{path.name}: its sidecar has no optimisation profile; re-export it "
                         "with `porter export --to trt`")
    max_batch = min(int(p["max"][0]) for p in profiles)
    opt_batch = min(int(p["opt"][0]) for p in profiles)

    def tensor(t: dict[str, Any]) -> Tensor:
        if t["dtype"] not in _NUMPY_TYPES:
            raise ModelError(f"{path.name}: tensor '{t['name']}' has dtype {t['dtype']}, which "
                             "Triton's model configuration cannot name")
        return Tensor(t["name"], _NUMPY_TYPES[t["dtype"]], tuple(int(d) for d in t["shape"][1:]))

    cc = str(sidecar["gpu"]["compute_capability"])
    # An "ampere+" engine runs on every GPU from Ampere on: list them all, one file.
    ccs = AMPERE_PLUS if sidecar.get("hardware_compatibility") == "ampere+" else (cc,)
    file_name = f"model_sm{cc.replace('.', '')}.plan"
    return ModelSpec(
        name=name, runtime=PLATFORMS["engine"], source=path, file_name=file_name,
        max_batch_size=max_batch,
        inputs=tuple(tensor(t) for t in sidecar["inputs"]),
        outputs=tuple(tensor(t) for t in sidecar["outputs"]),
        preferred_batch_sizes=tuple(sorted({opt_batch, max_batch})),
        instance_kind="KIND_GPU", instances=instances,
        cc_model_filenames=dict.fromkeys(ccs, file_name),
        warmup_dims={t["name"]: tuple(int(d) for d in t["profile"]["opt"][1:])
                     for t in sidecar["inputs"] if t.get("profile")})


def openvino_model(name: str, path: Path, *, instances: int = 1) -> ModelSpec:
    """The model of an OpenVINO IR (``path``: its ``.xml``; the ``.bin`` beside it): I/O read
    from the IR with OpenVINO (the names the backend matches, ``get_any_name``), no batch axis
    for Triton (see the module docstring), CPU instances with one OpenVINO stream each."""
    from port.engines.openvino import model_path, openvino_module, read_model
    from port.export.openvino_ir import ir_files

    xml, weights = ir_files(path)
    model_path(xml, "OpenVINO IR")  # both files there, else a one-line ModelError
    model = read_model(openvino_module().Core(), xml,
                       fix="export it again (porter export --to openvino)")
    inputs = tuple(_ov_tensor(p, xml, "input") for p in model.inputs)
    outputs = tuple(_ov_tensor(p, xml, "output") for p in model.outputs)
    # A warm-up request needs a concrete shape: a dynamic batch axis (porter's IRs) warms up
    # at 1; any other dynamic dimension means no warm-up.
    warmup = {t.name: (t.dims[0] if t.dims[0] > 0 else 1, *t.dims[1:]) for t in inputs
              if t.dims and all(d > 0 for d in t.dims[1:])}
    return ModelSpec(
        name=name, runtime=PLATFORMS["openvino"], source=xml, file_name=OPENVINO_FILES[0],
        companions=((weights, OPENVINO_FILES[1]),), max_batch_size=0, inputs=inputs,
        outputs=outputs,
        # The backend refuses GPU instances ("supports only Kind CPU and AUTO"); CPU says so.
        instance_kind="KIND_CPU", instances=instances,
        warmup_dims=warmup if len(warmup) == len(inputs) else {},
        parameters=openvino_parameters(instances))


def openvino_parameters(instances: int) -> dict[str, str]:
    """The backend's settings: one OpenVINO stream per model instance (each instance owns one
    infer request of the model compiled once per device, so N instances run at once only on N
    streams: the backend README's throughput example), and with a single instance the LATENCY
    hint porter's own runner uses (one request gets every core)."""
    return {"NUM_STREAMS": str(instances),
            "PERFORMANCE_HINT": "LATENCY" if instances == 1 else "THROUGHPUT"}


def _ov_tensor(port: Any, xml: Path, role: str) -> Tensor:
    """A Triton tensor of an IR input or output (dynamic dimensions -1)."""
    try:
        name = port.get_any_name()
    except RuntimeError:
        raise ModelError(f"{xml.name}: an {role} has no tensor name, which Triton's OpenVINO "
                         "backend needs: export the IR again from a named ONNX") from None
    element = port.get_element_type().get_type_name()
    if element not in _OV_TYPES:
        raise ModelError(f"{xml.name}: tensor '{name}' has element type {element}, which "
                         "Triton's model configuration cannot name")
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        raise ModelError(f"{xml.name}: tensor '{name}' has no fixed rank; Triton's OpenVINO "
                         "backend needs one (e.g. NCHW)")
    dims = []
    for d in shape:
        if d.is_static:
            dims.append(d.get_length())
        elif d.get_max_length() >= 0:
            # The backend matches a bounded range against no config value (not even -1).
            raise ModelError(f"{xml.name}: tensor '{name}' has a dimension range ({d}), which "
                             "Triton's OpenVINO backend does not support: export the IR "
                             "from an ONNX with fixed or fully dynamic dimensions")
        else:
            dims.append(-1)
    return Tensor(name, _OV_TYPES[element], tuple(dims))


def model_spec(kind: str, name: str, path: Path, *, instances: int = 1) -> ModelSpec:
    """The model of an artifact of manifest ``kind`` (a key of :data:`PLATFORMS`)."""
    if kind == "engine":
        from port.engines.trt_sidecar import read_sidecar, sidecar_path

        return engine_model(name, path, read_sidecar(sidecar_path(path)), instances=instances)
    if kind == "openvino":
        return openvino_model(name, path, instances=instances)
    if kind == "onnx":
        return onnx_model(name, path, instances=instances)
    raise ValueError(f"no Triton model for manifest kind {kind!r}: add it to PLATFORMS and here")


# -- config.pbtxt --------------------------------------------------------------------------------
def _q(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dims(dims: Iterable[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _tensors(key: str, tensors: tuple[Tensor, ...]) -> list[str]:
    lines = [f"{key} ["]
    for i, t in enumerate(tensors):
        comma = "," if i < len(tensors) - 1 else ""
        lines += ["  {", f"    name: {_q(t.name)}", f"    data_type: {t.data_type}",
                  f"    dims: {_dims(t.dims)}", "  }" + comma]
    return [*lines, "]"]


def config_text(spec: ModelSpec) -> str:
    """``config.pbtxt`` of ``spec`` (protobuf text of Triton's ``ModelConfig``)."""
    lines = [f"name: {_q(spec.name)}", f"{spec.runtime.key}: {_q(spec.runtime.name)}",
             f"max_batch_size: {spec.max_batch_size}"]
    lines += _tensors("input", spec.inputs) + _tensors("output", spec.outputs)
    if spec.max_batch_size > 0:  # Triton batches only models with a batch axis
        preferred = [b for b in spec.preferred_batch_sizes if b <= spec.max_batch_size]
        lines += ["dynamic_batching {", f"  preferred_batch_size: {_dims(preferred)}",
                  f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}", "}"]
    lines += ["instance_group [", "  {", f"    count: {spec.instances}",
              f"    kind: {spec.instance_kind}", "  }", "]"]
    for cc, file_name in spec.cc_model_filenames.items():
        lines += ["cc_model_filenames {", f"  key: {_q(cc)}", f"  value: {_q(file_name)}", "}"]
    for key, value in spec.parameters.items():
        lines += ["parameters {", f"  key: {_q(key)}", f"  value {{ string_value: {_q(value)} }}",
                  "}"]
    lines += _warmup(spec)
    return "\n".join(lines) + "\n"


def _warmup(spec: ModelSpec) -> list[str]:
    """Zero-filled requests at batch 1 and the largest batch, so the first real requests do not
    pay for ONNX Runtime's allocations, TensorRT's context set-up or OpenVINO's first shape."""
    dims = {t.name: spec.warmup_dims.get(t.name, t.dims) for t in spec.inputs}
    if any(d < 0 for shape in dims.values() for d in shape):
        return []  # a warm-up request needs a concrete shape
    # Triton wants batch_size 1 for a model without a batch axis too.
    batches = sorted({1, max(spec.max_batch_size, 1)})
    lines = ["model_warmup ["]
    for i, batch in enumerate(batches):
        lines += ["  {", f"    name: {_q(f'zeros_batch_{batch}')}", f"    batch_size: {batch}"]
        for t in spec.inputs:
            lines += ["    inputs {", f"      key: {_q(t.name)}", "      value {",
                      f"        data_type: {t.data_type}", f"        dims: {_dims(dims[t.name])}",
                      "        zero_data: true", "      }", "    }"]
        lines.append("  }" + ("," if i < len(batches) - 1 else ""))
    return [*lines, "]"]


# -- the repository ----------------------------------------------------------------------------
def check_repository(repo: Path, run: Path) -> Path:
    """The absolute repository folder, created and probed; ``UsageError`` (one line) when it is
    the run itself, inside another run, not a folder, or not writable."""
    path = Path(repo).expanduser().absolute()
    own = run.resolve()
    resolved = path.resolve()
    if resolved == own:
        raise UsageError(f"--model-repo {repo} is the run directory itself: give the "
                         "repository a folder of its own (e.g. RUN/triton or ./models)")
    for folder in (resolved, *resolved.parents):
        if folder == own:
            break  # inside this run: its files are recorded like the run's own
        if (folder / "manifest.json").is_file():
            raise UsageError(f"--model-repo {repo} is inside another run ({folder}): choose a "
                             "folder outside it")
    if path.exists() and not path.is_dir():
        raise UsageError(f"--model-repo {repo} exists and is not a folder: choose a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Probing with a real file is the only test that holds for root, read-only mounts and
        # network file systems alike (os.access does not).
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"--model-repo {repo} is not writable ({exc.strerror or exc}): choose "
                         "a folder you can write to") from None
    return path


def model_files(repo: Path, spec: ModelSpec) -> list[Path]:
    """The files :func:`write_model` writes for ``spec``: the config, the artifact's files."""
    version = repo / spec.name / VERSION
    return [repo / spec.name / "config.pbtxt", version / spec.file_name,
            *(version / name for _, name in spec.companions)]


def write_model(repo: Path, spec: ModelSpec) -> list[Path]:
    """Write ``spec``'s model folder (each file atomically; the companions first, then the file
    a server opens, then the config); returns the files written."""
    config, artifact, *companions = model_files(repo, spec)
    artifact.parent.mkdir(parents=True, exist_ok=True)
    sources = [*(src for src, _ in spec.companions), spec.source]
    # A copy, not a link: the repository is what gets shipped to the server.
    for source, target in zip(sources, [*companions, artifact], strict=True):
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    atomic_write_text(config, config_text(spec))
    return [config, artifact, *companions]


def remove_files(files: Iterable[Path], repo: Path) -> None:
    """Delete ``files`` (porter's own, from an earlier export) and the folders they leave empty
    inside ``repo``."""
    for file in files:
        file.unlink(missing_ok=True)
        folder = file.parent
        while folder != repo and repo in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty: someone else's files stay
            folder = folder.parent


def relative_to_repo(files: Iterable[Path], repo: Path) -> list[str]:
    """Repository-relative names for the index file (what a server sees)."""
    return sorted(os.path.relpath(f, repo) for f in files)
