"""ONNX file helpers shared by the exporters: load and check, write atomically, read metadata,
validate calibration/check images against the input, count QDQ nodes, and read the precision a
graph really carries (what the manifest's record of it must say)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from port.ground.atomic import atomic_write_bytes
from port.ground.errors import DataError, ModelError, UsageError, first_line

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX file; a missing, truncated or invalid file is a ``ModelError``."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX file not found: {path}: export it first with "
                         "`porter export --to onnx`")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, OSError) as exc:
        raise ModelError(f"{path} is not a readable ONNX file (truncated or corrupt): re-export "
                         "it with `porter export --to onnx`") from exc
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{path} is not a valid ONNX model ({first_line(exc)}): re-export it "
                         "with `porter export --to onnx`") from exc
    # Old exporters (IR 3) list every initializer as a graph input too: those are weights.
    weights = {init.name for init in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1 or len(model.graph.output) < 1:
        raise ModelError(f"{path} must have exactly one image input (has {len(inputs)}: "
                         f"{', '.join(inputs[:4])}): porter exports classifiers with one input")
    return model


def without_initializer_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with initializers no longer listed as graph inputs (IR 3 files list them).

    The converters (FP16, INT8 quantization) treat every graph input as data to feed and keep in
    FP32; a weight listed as an input would stay unconverted/unquantized. Unlisted, they are
    constants, which IR 4 and later allow, so the copy's IR version is raised to at least 4. The
    model itself is returned when there is nothing to change.
    """
    weights = {init.name for init in model.graph.initializer}
    if not any(i.name in weights for i in model.graph.input):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [i for i in out.graph.input if i.name not in weights]
    del out.graph.input[:]
    out.graph.input.extend(kept)
    out.ir_version = max(out.ir_version, 4)
    return out


def save_onnx_atomic(model: onnx.ModelProto, out_path: Path) -> int:
    """Write ``model`` to ``out_path`` via a temporary file, fsync and rename; return its size.

    A crash leaves either the old file or the new one, never half of one that the manifest might
    then register.
    """
    return atomic_write_bytes(out_path, model.SerializeToString())


def read_props(model: onnx.ModelProto) -> dict[str, str]:
    """``metadata_props`` as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def check_images(images: Any, model: onnx.ModelProto, what: str, io: Any = None) -> np.ndarray:
    """Validate preprocessed NCHW float images against the model's input; return float32 array.

    ``io`` (a :class:`port.engines.adapter.GraphIO`): the images are porter's canonical batch
    and the graph's own form (NHWC, another dtype, a fixed batch) is the adapter's business; the
    channels and size are checked against what it says, naming which one differs.
    """
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        shape = getattr(images, "shape", None)
        raise UsageError(f"{what} must be a float32 NCHW array of preprocessed images "
                         f"(got shape {shape}): preprocess them with the model's Preprocess")
    if len(images) == 0:
        raise UsageError(f"{what} holds no images: pass at least one (--calib-images N)")
    if not np.issubdtype(images.dtype, np.floating):
        raise UsageError(f"{what} must be preprocessed float images, got dtype {images.dtype}: "
                         "apply the model's Preprocess (mean/std) first")
    if io is not None:
        io.check(images, what)
        return np.ascontiguousarray(images, dtype=np.float32)
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in model.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) == 4 and any(d is not None and d != s for d, s in zip(dims[1:], images.shape[1:],
                                                                        strict=True)):
        raise DataError(f"{what} have shape {tuple(images.shape[1:])} per image but the model "
                        f"takes {tuple(dims[1:])}: preprocess with the model's image size")
    return np.ascontiguousarray(images, dtype=np.float32)


def count_qdq(model: onnx.ModelProto) -> tuple[int, int]:
    """Number of QuantizeLinear and DequantizeLinear nodes in the main graph."""
    ops = [n.op_type for n in model.graph.node]
    return ops.count("QuantizeLinear"), ops.count("DequantizeLinear")


def onnx_precision(path: Path | str) -> str:
    """``"int8"`` for a QDQ graph, ``"fp16"`` for an FP16 graph, else ``"fp32"``.

    Reads the graph only (external weight files are not loaded).
    """
    import onnx
    from google.protobuf.message import DecodeError

    if not Path(path).is_file():
        raise ModelError(f"ONNX file {path} not found: export it with `porter export --to onnx`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise ModelError(f"{path} is not a readable ONNX file ({exc}): export it again") from None
    graph = model.graph
    if any(node.op_type in QDQ_OPS for node in graph.node):
        return "int8"
    fp16 = onnx.TensorProto.FLOAT16
    if any(init.data_type == fp16 for init in graph.initializer):
        return "fp16"
    if any(v.type.tensor_type.elem_type == fp16 for v in graph.value_info):
        return "fp16"
    for node in graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in node.attribute):
            return "fp16"
    return "fp32"


def onnx_graph_io(model: onnx.ModelProto, card: Any) -> Any:
    """How to feed ``model`` porter's canonical batch: ``card``'s form, else its metadata's."""
    from port.engines.adapter import GraphIO
    from port.models.card_codec import card_from_metadata

    if card is None:
        card = card_from_metadata(read_props(model), source="the FP32 graph")
    return GraphIO.for_onnx(model, card)


def add_card(props: dict[str, str], card: Any, precision: str) -> None:
    """Give a graph made from an imported ONNX (no porter metadata) the run's card."""
    from port.models.card_codec import CARD_KEY, card_metadata

    if card is not None and CARD_KEY not in props:
        props.update(card_metadata(card, precision=precision, source_sha256=None))
