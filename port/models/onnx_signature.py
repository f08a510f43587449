"""What an ONNX classifier's graph says about how to feed it and read it: its signature.

One reader (:func:`read_signature`) used wherever porter needs the image input or the logits of
an ONNX file (import, runners, calibration, the FP16 pre-flight), instead of ad-hoc
``graph.input[0]`` code: a model made elsewhere may list its initializers as graph inputs (IR 3),
take NHWC, one channel, a fixed batch, float16/float64, or end in ``[N, C, 1, 1]`` probabilities.

Pure and torch-free: the graph is read without its weights (external data is never loaded), and
``onnx`` is imported only when a file is read. Every refusal is a ``ModelError`` (or a
``UsageError`` for a contradicting flag) of one line naming what the model wants and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from port.ground.errors import ModelError, UsageError
from port.ground.vocab import CHANNELS, LAYOUTS

if TYPE_CHECKING:
    from port.models.card import ModelCard

# ONNX TensorProto element types porter feeds (cast at the runner's boundary) -> card name
# (one of port.ground.vocab.INPUT_DTYPES: tests/test_vocab.py holds them together).
ONNX_INPUT_DTYPES = {10: "float16", 1: "float32", 11: "float64"}
# Ops that pass a softmax through unchanged in value: Softmax -> Flatten -> [N, C] is still one.
_SHAPE_ONLY_OPS = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity"})
# Any of these means the graph runs integer arithmetic (QDQ or the QOperator format).
_INT8_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                       "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"})

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class Signature:
    """The image input and the class output of an ONNX classifier, as its graph declares them.

    ``input_shape`` is the graph's own order (NCHW or NHWC); ``channels``, ``height`` and
    ``width`` are read from it through ``layout``. ``batch``/``height``/``width``/``num_classes``
    are ``None`` where the graph leaves the axis symbolic or unknown.
    """

    input_name: str
    input_shape: tuple[Dim, ...]
    layout: str  # NCHW | NHWC
    channels: int  # 1 | 3
    batch: int | None  # the fixed batch the graph takes; None = any batch
    height: int | None
    width: int | None
    input_dtype: str  # float16 | float32 | float64
    output_name: str
    output_shape: tuple[Dim, ...] | None  # None when the graph does not say
    output_layout: str  # "NC" ([N, C]) or "NC11" ([N, C, 1, 1])
    num_classes: int | None
    output_softmax: bool  # the output is already probabilities (a Softmax ends the graph)
    precision: str  # fp32 | fp16 | int8
    opset: int
    layout_from_flag: bool = False  # the layout was ambiguous in the graph and given by a flag

    @property
    def rank(self) -> int:
        """Number of axes of the image input (always 4 for a signature that was read)."""
        return len(self.input_shape)

    @property
    def image_size(self) -> int | None:
        """The square input size, when the graph fixes it (porter feeds square images)."""
        return self.height if self.height is not None and self.height == self.width else None

    def describe(self) -> str:
        """One line for the import's output: what was read from the graph."""
        def show(shape: tuple[Dim, ...] | None) -> str:
            if shape is None:
                return "?"
            return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"

        size = "any size" if self.height is None or self.width is None else (
            f"{self.height}x{self.width}")
        batch = "any batch" if self.batch is None else f"fixed batch {self.batch}"
        layout = self.layout + (" (--layout)" if self.layout_from_flag else "")
        out = (f"output {self.output_name!r} {show(self.output_shape)} "
               f"({self.num_classes if self.num_classes is not None else '?'} classes"
               f"{', softmax' if self.output_softmax else ''})")
        return (f"input {self.input_name!r} {show(self.input_shape)}: {layout}, "
                f"{self.channels} channel{'s' if self.channels != 1 else ''}, {batch}, {size}, "
                f"{self.input_dtype}; {out}; {self.precision}, opset {self.opset}")


def _dims(value_info: Any) -> tuple[Dim, ...] | None:
    """The shape of a graph input/output: fixed ints, symbolic names, None where unknown."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(str(d.dim_param))
        else:
            dims.append(None)
    return tuple(dims)


def _show(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _load(model_or_path: Any) -> tuple[Any, str]:
    """The ModelProto (weights not loaded) and a name for messages."""
    import onnx
    from google.protobuf.message import DecodeError

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path, "the model"
    path = Path(model_or_path)
    if not path.is_file():
        raise ModelError(f"ONNX file not found: {path}: check the path")
    try:
        return onnx.load(str(path), load_external_data=False), str(path)
    except (DecodeError, ValueError, OSError) as exc:
        raise ModelError(f"{path} is not a readable ONNX file ({type(exc).__name__}): "
                         "re-export it") from None


def _image_input(graph: Any, source: str) -> Any:
    """The one graph input that is not an initializer (IR 3 files list weights as inputs)."""
    weights = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if not inputs:
        raise ModelError(f"{source} has no image input (every graph input is a weight): "
                         "re-export it with the image as an input")
    if len(inputs) > 1:
        names = ", ".join(repr(i.name[:40]) for i in inputs[:4])
        raise ModelError(f"{source} has {len(inputs)} inputs ({names}); porter feeds "
                         "classifiers with one image input: re-export it with the others fixed "
                         "as constants")
    return inputs[0]


def _channel_axis_guess(shape: tuple[Dim, ...]) -> str | None:
    """For a shape with no 1/3 channel axis, the layout it most likely has (for the message)."""
    _, a, b, c = shape
    if b is not None and b == c and a != b:
        return "NCHW"
    if a is not None and a == b and c != b:
        return "NHWC"
    return None


def _layout(shape: tuple[Dim, ...], flag: str | None, source: str) -> tuple[str, bool]:
    """(NCHW|NHWC, whether the flag decided it): where the fixed 1 or 3 channel axis is."""
    if flag is not None and flag not in LAYOUTS:
        raise UsageError(f"--layout must be NCHW or NHWC, got {flag!r}")
    first = shape[1] in CHANNELS
    last = shape[3] in CHANNELS
    if first != last:
        found = "NCHW" if first else "NHWC"
        if flag is not None and flag != found:
            raise UsageError(f"--layout {flag} contradicts {source}: its input {_show(shape)} "
                             f"is {found} (channels on axis {1 if first else 3}): drop --layout "
                             f"or pass --layout {found}")
        return found, False
    if first and last:  # [N, 3, H, 3]: either axis could hold the channels
        if flag is None:
            raise UsageError(f"{source}: the input {_show(shape)} could be NCHW or NHWC: pass "
                             "--layout NCHW or --layout NHWC")
        return flag, True
    # No axis holds 1 or 3 channels: name what the model wants instead.
    guess = flag or _channel_axis_guess(shape)
    if guess is None:
        raise ModelError(f"{source}: the input {_show(shape)} has no fixed channel axis of 1 "
                         "or 3 (porter feeds grayscale or RGB images): re-export it with a "
                         "fixed channel count, or pass --layout if the channels are symbolic")
    count = shape[1] if guess == "NCHW" else shape[3]
    if count is None or isinstance(count, str):
        raise ModelError(f"{source}: the input {_show(shape)} leaves its channel axis "
                         f"symbolic ({count!r}); porter needs a fixed 1 or 3: re-export it with "
                         "a fixed channel count")
    raise ModelError(f"{source}: the input {_show(shape)} takes {count} channels ({guess}); "
                     "porter feeds 1 (grayscale) or 3 (RGB) channels: re-export the model for "
                     "1 or 3 channels (e.g. drop the alpha channel)")


def _producers(graph: Any) -> dict[str, Any]:
    return {out: node for node in graph.node for out in node.output}


def _is_softmax(graph: Any, output: str) -> bool:
    """Whether the last node computing ``output`` is a Softmax (through Flatten/Reshape...)."""
    producers = _producers(graph)
    name = output
    for _ in range(8):  # a few shape-only ops at most; never loop on a malformed graph
        node = producers.get(name)
        if node is None:
            return False
        if node.op_type == "Softmax":
            return True
        if node.op_type not in _SHAPE_ONLY_OPS or not node.input:
            return False
        name = node.input[0]
    return False


def _precision(graph: Any) -> str:
    """int8 for Q/DQ (or QOperator) nodes, fp16 for FP16 weights or casts, else fp32."""
    fp16 = 10  # onnx.TensorProto.FLOAT16
    if any(node.op_type in _INT8_OPS for node in graph.node):
        return "int8"
    if any(init.data_type == fp16 for init in graph.initializer):
        return "fp16"
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == fp16:
                    return "fp16"
        if node.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in node.attribute):
            return "fp16"
    return "fp32"


def _opset(model: Any) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0


def _output_shape(model: Any, output: Any) -> tuple[Dim, ...] | None:
    """The output's declared shape, or the one ONNX shape inference finds when undeclared."""
    shape = _dims(output)
    if shape is not None and shape:
        return shape
    import onnx

    try:  # the weights are not needed: initializers keep their dims without their data
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is a best effort (any failure): the shape stays unknown
        return None
    for out in inferred.graph.output:
        if out.name == output.name:
            found = _dims(out)
            return found if found else None
    return None


def _output(model: Any, source: str) -> tuple[Any, tuple[Dim, ...] | None, str, int | None]:
    """(output, its shape, NC|NC11, class count) of the first graph output."""
    graph = model.graph
    if not graph.output:
        raise ModelError(f"{source} has no graph output: re-export it")
    output = graph.output[0]
    shape = _output_shape(model, output)
    if shape is None:  # nothing says: the class count must come from a flag
        return output, None, "NC", None
    fix = "porter reads class scores [N, C] or [N, C, 1, 1]: re-export the model with its logits " \
          "as the first output"
    if len(shape) == 2:
        layout = "NC"
    elif len(shape) == 4:
        extra = [d for d in shape[2:] if isinstance(d, int) and d != 1]
        if extra:
            raise ModelError(f"{source}: the output {output.name[:64]!r} is {_show(shape)}, a "
                             f"feature map, not one score per class; {fix}")
        layout = "NC11"
    else:
        raise ModelError(f"{source}: the output {output.name[:64]!r} is {_show(shape)}, which has "
                         f"no class axis; {fix}")
    classes = shape[1] if isinstance(shape[1], int) else None
    return output, shape, layout, classes


def read_signature(model_or_path: Any, *, layout: str | None = None,
                   source: str | None = None) -> Signature:
    """Read the image input and class output of an ONNX classifier (a path or a ModelProto).

    ``layout`` (NCHW|NHWC, the ``--layout`` flag) decides a shape that could be either and must
    agree with one that is not. Raises ``ModelError`` for what porter cannot feed (wrong rank,
    2 or 4 channels, no or several image inputs, a non-float input, an output without a class
    axis) and ``UsageError`` for a contradicting ``layout``. ``source`` names the model in
    messages (default: its path, or "the model" for a proto).
    """
    model, default_source = _load(model_or_path)
    source = source or default_source
    graph = model.graph
    image = _image_input(graph, source)
    shape = _dims(image)
    if shape is None or len(shape) != 4:
        got = "no declared shape" if shape is None else f"rank {len(shape)} {_show(shape)}"
        raise ModelError(f"{source}: the input {image.name[:64]!r} has {got}; porter feeds image "
                         "batches of rank 4 ([N, C, H, W] or [N, H, W, C]): re-export the model "
                         "with a 4-D image input")
    elem = image.type.tensor_type.elem_type
    if elem not in ONNX_INPUT_DTYPES:
        import onnx

        name = onnx.TensorProto.DataType.Name(elem) if elem else "undefined"
        raise ModelError(f"{source}: the input {image.name[:64]!r} is {name.lower()}; porter "
                         "feeds float16, float32 or float64 images: re-export it with a float "
                         "input (normalisation inside the graph is fine)")
    found, from_flag = _layout(shape, layout, source)
    channel_axis, h_axis, w_axis = (1, 2, 3) if found == "NCHW" else (3, 1, 2)
    channels = shape[channel_axis]
    assert isinstance(channels, int)  # _layout only returns for a fixed 1 or 3
    output, out_shape, out_layout, classes = _output(model, source)

    def fixed(d: Dim) -> int | None:
        return d if isinstance(d, int) else None

    return Signature(
        input_name=image.name, input_shape=shape, layout=found, channels=channels,
        batch=fixed(shape[0]), height=fixed(shape[h_axis]), width=fixed(shape[w_axis]),
        input_dtype=ONNX_INPUT_DTYPES[elem], output_name=output.name, output_shape=out_shape,
        output_layout=out_layout, num_classes=classes,
        output_softmax=_is_softmax(graph, output.name), precision=_precision(graph),
        opset=_opset(model), layout_from_flag=from_flag,
    )


def apply_signature(card: ModelCard, sig: Signature) -> ModelCard:
    """``card`` with every field the graph decides taken from ``sig``.

    Sets the input/output names, ``channels``, ``batch``, ``input_dtype``, ``output_layout``,
    ``output_softmax``, ``preprocess.layout`` and, when the graph fixes a square size, the image
    size (resize/crop by porter's usual recipe for that size). Mean/std, colour order and class
    names stay the card's: the graph does not say them. Checking that mean/std have one value
    per channel is ``port.ground.limits.check_card``'s job.
    """
    pre = card.preprocess
    size = sig.image_size
    if size is not None and size != pre.image_size:
        from port.data.preprocess import Preprocess

        fresh = Preprocess.for_size(size, pre.mean, pre.std)
        pre = replace(pre, image_size=fresh.image_size, resize=fresh.resize, crop=fresh.crop)
    pre = replace(pre, layout=sig.layout)
    return replace(
        card, preprocess=pre, input_name=sig.input_name, output_name=sig.output_name,
        channels=sig.channels, batch=sig.batch, input_dtype=sig.input_dtype,
        output_layout=sig.output_layout, output_softmax=sig.output_softmax,
    )
