"""Feed porter's canonical image batch to a graph that takes another form, and read it back.

porter's images travel as one canonical batch: float32, NCHW, ``card.channels`` channels, any
batch size. A model made elsewhere may want NHWC, float16 or float64, a fixed batch (often 1),
and may answer ``[N, C, 1, 1]``. :class:`GraphIO` says what the graph takes (from the model card
and the graph's own input/output description) and converts at the boundary, so every consumer
(evaluation, the app predictor, the FP16 pre-flight, INT8 calibration, the export checks) keeps
the one canonical batch and calls the same code:

- :meth:`GraphIO.to_graph`: NCHW -> the graph's layout, cast to its input dtype;
- :meth:`GraphIO.chunks`: a batch cut to the graph's fixed batch size; a short last chunk is
  padded by repeating its last image (real pixels: calibration ranges stay real), and the number
  of real images is returned with it so the padding can be dropped;
- :meth:`GraphIO.from_graph`: ``[N, C, 1, 1]`` -> ``[N, C]``, padding dropped;
- :meth:`GraphIO.run`: all three around one ``feed -> outputs`` function.

:class:`AdaptedRunner` wraps any runner with it: it reports the canonical input
(``(None, C, H, W)``) so evaluate, latency and the predictor feed it as they feed porter's own
models. torch-free (numpy only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from port.engines.base import Runner, TensorMeta
from port.ground.errors import DataError, ModelError, UsageError
from port.ground.vocab import CHANNELS, INPUT_DTYPES, LAYOUTS, OUTPUT_LAYOUTS


@dataclass(frozen=True)
class GraphIO:
    """What one graph's image input and logits output look like, and how to convert to them.

    ``height``/``width`` are the graph's spatial size (``None`` when symbolic): only used to
    describe the canonical input and to name a mismatch.
    """

    input_name: str
    channels: int = 3
    layout: str = "NCHW"
    dtype: str = "float32"
    batch: int | None = None
    output_layout: str = "NC"
    height: int | None = None
    width: int | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ModelError(f"input layout {self.layout!r} is not one porter feeds: the model "
                             f"card must say one of {', '.join(LAYOUTS)}")
        if self.dtype not in INPUT_DTYPES:
            raise ModelError(f"input dtype {self.dtype!r} is not one porter feeds: the model "
                             f"card must say one of {', '.join(INPUT_DTYPES)}")
        if self.output_layout not in OUTPUT_LAYOUTS:
            raise ModelError(f"output layout {self.output_layout!r} is not one porter reads: "
                             f"the model card must say one of {', '.join(OUTPUT_LAYOUTS)}")
        if self.channels not in CHANNELS:
            raise ModelError(f"a {self.channels}-channel input is not one porter feeds: image "
                             "classifiers take 1 (grayscale) or 3 (colour) channels")
        if self.batch is not None and self.batch < 1:
            raise ModelError(f"fixed batch {self.batch} is not a batch size: the model card must "
                             "give a positive batch or none")

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_card(cls, card: Any, *, input_name: str | None = None,
                  graph_shape: tuple[int | None, ...] | None = None,
                  graph_dtype: Any = None) -> GraphIO:
        """From a :class:`~port.models.card.ModelCard`, checked against the graph when known.

        ``graph_shape``/``graph_dtype`` are the graph input's own (``None`` = dynamic axis).
        The graph's dtype wins over the card's (porter's FP16 exports keep float32 inputs while
        the card describes the model); its fixed batch, when it has one, is the batch. A graph
        whose shape contradicts the card's layout or channels is refused naming both.
        """
        layout = str(getattr(card.preprocess, "layout", "NCHW") or "NCHW").upper()
        dtype = str(card.input_dtype)
        if graph_dtype is not None:
            dtype = np.dtype(graph_dtype).name
        batch = card.batch
        height = width = card.preprocess.image_size
        if graph_shape is not None and len(graph_shape) == 4:
            channel_axis = 1 if layout == "NCHW" else 3
            got = graph_shape[channel_axis]
            if got is not None and got != card.channels:
                raise ModelError(
                    f"the graph's input {tuple('?' if d is None else d for d in graph_shape)} "
                    f"has {got} channels on the {layout} channel axis but the model card says "
                    f"{card.channels} ({layout}): re-import the model (porter import) so the "
                    "card describes this graph")
            batch = graph_shape[0]  # the graph's own batch axis: fixed (int) or open (None)
            spatial = graph_shape[2:] if layout == "NCHW" else graph_shape[1:3]
            height = spatial[0] or height
            width = spatial[1] or width
        return cls(input_name=input_name or card.input_name, channels=int(card.channels),
                   layout=layout, dtype=dtype, batch=batch,
                   output_layout=str(card.output_layout), height=height, width=width)

    @classmethod
    def for_onnx(cls, model: Any, card: Any = None) -> GraphIO:
        """From an ONNX graph (ModelProto or path) and, when known, its card.

        The graph's signature (:func:`port.models.onnx_signature.read_signature`: the image
        input that is not an initializer, its layout, batch, dtype, output form) decides; the
        card's layout settles a shape that could be either. Without a card the signature alone
        describes the graph (porter's own exports carry theirs in the metadata).
        """
        from port.models.onnx_signature import read_signature

        layout = card.preprocess.layout if card is not None else None
        sig = read_signature(model, layout=layout)
        shape = tuple(d if isinstance(d, int) else None for d in sig.input_shape)
        if card is not None:
            return cls.from_card(card, input_name=sig.input_name, graph_shape=shape,
                                 graph_dtype=sig.input_dtype)
        return cls(input_name=sig.input_name, channels=sig.channels, layout=sig.layout,
                   dtype=sig.input_dtype, batch=sig.batch, output_layout=sig.output_layout,
                   height=sig.height, width=sig.width)

    # -- properties --------------------------------------------------------------------------
    @property
    def is_identity(self) -> bool:
        """True when the graph takes porter's canonical batch as is (only a cast, if any)."""
        return self.layout == "NCHW" and self.batch is None and self.output_layout == "NC"

    def canonical_meta(self) -> TensorMeta:
        """The input as porter's callers feed it: ``(None, C, H, W)`` in the graph's dtype.

        The dtype is the graph's, so callers cast once outside their timing loops as they do
        for every runner; the batch is open (a fixed-batch graph is fed in padded chunks).
        """
        return TensorMeta(self.input_name, np.dtype(self.dtype),
                          (None, self.channels, self.height, self.width))

    def describe(self) -> str:
        """A short phrase for notes: what the graph takes beyond porter's canonical batch."""
        parts = []
        if self.layout != "NCHW":
            parts.append(self.layout)
        if self.dtype != "float32":
            parts.append(self.dtype)
        if self.batch is not None:
            parts.append(f"fixed batch {self.batch}")
        if self.output_layout != "NC":
            parts.append("[N,C,1,1] output")
        return ", ".join(parts) or "NCHW float32"

    # -- conversion --------------------------------------------------------------------------
    def check(self, images: np.ndarray, what: str = "images") -> None:
        """Refuse (``DataError``) a canonical batch whose channels or size do not fit the graph,
        naming which."""
        if not isinstance(images, np.ndarray) or images.ndim != 4:
            raise UsageError(f"{what} must be a canonical NCHW batch, got shape "
                             f"{getattr(images, 'shape', None)}: preprocess them with the "
                             "model's card")
        _, c, h, w = images.shape
        if c != self.channels:
            raise DataError(
                f"{what} have shape {(c, h, w)} per image, {c} channel(s), but the model takes "
                f"{self.channels} ({'grayscale' if self.channels == 1 else 'colour'}): "
                f"preprocess with the model's card ({self.channels}-channel mean/std)")
        want = (self.height, self.width)
        if any(x is not None and x != y for x, y in zip(want, (h, w), strict=True)):
            raise DataError(
                f"{what} have shape {(c, h, w)} per image, {h}x{w} px, but the model takes "
                f"{'x'.join('?' if s is None else str(s) for s in want)} px: resize/crop the "
                "images to the model's input size")

    def to_graph(self, images: np.ndarray) -> np.ndarray:
        """Canonical NCHW -> the graph's layout and dtype (contiguous, no batching)."""
        if self.layout == "NHWC":
            images = images.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(images, dtype=self.dtype)

    def chunks(self, images: np.ndarray, batch_size: int | None = None
               ) -> Iterator[tuple[np.ndarray, int]]:
        """``(chunk, real)`` pairs covering ``images``: chunks of the fixed batch (else
        ``batch_size``, else all at once); a short last chunk of a fixed-batch graph is padded
        by repeating its last image, ``real`` counts the images that are not padding."""
        size = self.batch or batch_size or max(len(images), 1)
        for start in range(0, len(images), size):
            chunk = images[start:start + size]
            real = len(chunk)
            if self.batch is not None and real < self.batch:
                pad = np.repeat(chunk[-1:], self.batch - real, axis=0)
                chunk = np.concatenate([chunk, pad])
            yield chunk, real

    def from_graph(self, output: np.ndarray, real: int | None = None) -> np.ndarray:
        """One graph output -> porter's form: padding rows dropped, ``[N,C,1,1]`` -> ``[N,C]``."""
        out = np.asarray(output)
        if real is not None and out.ndim >= 1:
            out = out[:real]
        if self.output_layout == "NC11" and out.ndim == 4 and out.shape[2:] == (1, 1):
            out = out.reshape(out.shape[0], out.shape[1])
        return out

    def run(self, infer: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
            images: np.ndarray, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """``infer`` (graph feed -> outputs) over a canonical batch; outputs in porter's form."""
        if self.is_identity and batch_size is None:
            outs = infer({self.input_name: self.to_graph(images)})
            return {k: self.from_graph(v) for k, v in outs.items()}
        parts: dict[str, list[np.ndarray]] = {}
        for chunk, real in self.chunks(images, batch_size):
            outs = infer({self.input_name: self.to_graph(chunk)})
            for name, value in outs.items():
                parts.setdefault(name, []).append(self.from_graph(value, real))
        return {name: np.concatenate(values) for name, values in parts.items()}

    def graph_batches(self, images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
        """Graph-form batches of ``images`` (padded to the fixed batch): what calibration and
        the FP16 pre-flight feed ONNX Runtime directly."""
        for chunk, _ in self.chunks(images, batch_size):
            yield self.to_graph(chunk)


def graph_io(card: Any, meta: TensorMeta) -> GraphIO:
    """The :class:`GraphIO` of a runner's single image input described by ``card``."""
    return GraphIO.from_card(card, input_name=meta.name, graph_shape=tuple(meta.shape),
                             graph_dtype=meta.dtype)


class AdaptedRunner(Runner):
    """A runner that takes porter's canonical batch and feeds ``inner`` what its graph takes.

    ``card``: the model card (``None``: the one the artifact carries, read after activation
    with ``inner.model_card()``; for an ONNX file without one, its graph's signature; for any
    other artifact without one, NCHW plus what its input/output metadata say: fixed batch,
    dtype, ``[N, C, 1, 1]`` output).
    Everything else (device, details, timing mode, backend-specific attributes) is the inner
    runner's. ``io``: the conversion itself, when the caller already has it (the exporters read
    it from the graph they convert).
    """

    def __init__(self, inner: Runner, card: Any = None, *, io: GraphIO | None = None) -> None:
        super().__init__(inner.loader, name=inner.name)
        self.inner = inner
        self.backend = inner.backend
        self.card = card
        self._given_io = io
        self.io: GraphIO | None = None

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this class lacks: metadata(), int8, providers, ...
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def timing_mode(self) -> str:  # type: ignore[override]
        """The inner runner's (the conversion is a host copy, part of what it times)."""
        return self.inner.timing_mode

    @property
    def device(self) -> str:
        """Where the inner runner runs."""
        return self.inner.device

    @property
    def fixed_batch(self) -> int | None:
        """The only batch size the graph runs at (``None``: any); latency is timed only there."""
        return self.io.batch if self.io is not None else None

    def _activate(self) -> None:
        self.inner.activate()
        try:
            self.io = self._resolve_io()
        except BaseException:
            self.inner.deactivate()  # a refused card or graph leaves nothing open
            raise

    def _resolve_io(self) -> GraphIO:
        metas = self.inner.input_metadata()
        if len(metas) != 1:
            raise ModelError(f"{self.inner.name} has {len(metas)} inputs "
                             f"({', '.join(m.name for m in metas[:4])}): porter feeds "
                             "single-input image classifiers only")
        if self._given_io is not None:
            return self._given_io
        card = self.card if self.card is not None else self.inner.model_card()
        if card is not None:
            return graph_io(card, metas[0])
        if isinstance(self.inner.loader, str | Path) and str(self.inner.loader).endswith(".onnx"):
            return GraphIO.for_onnx(self.inner.loader)  # no card: the graph's signature says
        return _io_from_graph(metas[0], self.inner.output_metadata())

    def _deactivate(self) -> None:
        self.inner.deactivate()
        self.io = None

    def input_metadata(self) -> list[TensorMeta]:
        """The canonical input (see :meth:`GraphIO.canonical_meta`)."""
        return [self._io().canonical_meta()]

    def output_metadata(self) -> list[TensorMeta]:
        """The inner outputs, batch open and ``[N, C, 1, 1]`` shown as ``[N, C]``."""
        io = self._io()
        out = []
        for m in self.inner.output_metadata():
            shape = tuple(m.shape)
            if io.output_layout == "NC11" and len(shape) == 4 and shape[2:] == (1, 1):
                shape = shape[:2]
            out.append(TensorMeta(m.name, m.dtype, (None, *shape[1:]) if shape else shape))
        return out

    def check_feed(self, feed: dict[str, np.ndarray]) -> None:
        """The feed must be the canonical batch under the input's name, with the graph's
        channels and size (a mismatch is named); any float dtype is cast at the boundary."""
        io = self._io()
        if set(feed) != {io.input_name}:
            raise UsageError(f"{self.backend} runner: feed names {sorted(feed)} do not match the "
                             f"model's input ['{io.input_name}']: pass exactly that name")
        images = feed[io.input_name]
        io.check(images, f"{self.backend} runner: input '{io.input_name}'")
        if not np.issubdtype(images.dtype, np.floating):
            raise UsageError(f"{self.backend} runner: input '{io.input_name}' has dtype "
                             f"{images.dtype}: feed preprocessed float images")

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        io = self._io()
        return io.run(lambda f: self.inner.infer(f, check_inputs=False), feed[io.input_name])

    def timed_form(self, feed: dict[str, np.ndarray]) -> tuple[Runner, dict[str, np.ndarray]]:
        """What to time for ``feed``: the inner runner on the feed already in the graph's form
        (an NHWC transpose or a dtype cast is not the model's latency), when it is one graph
        batch; else this runner and ``feed`` as they are."""
        io = self._io()
        images = feed[io.input_name]
        if io.batch is not None and len(images) != io.batch:
            return self, feed
        return self.inner, {io.input_name: io.to_graph(images)}

    def time_phases(self, feed: dict[str, np.ndarray], runs: int = 50
                    ) -> dict[str, float] | None:
        """The inner runner's phases on the converted feed, when it is one graph batch."""
        io = self._io()
        images = feed[io.input_name]
        if io.batch is not None and len(images) != io.batch:
            return None
        return self.inner.time_phases({io.input_name: io.to_graph(images)}, runs)

    def details(self) -> dict[str, Any]:
        """The inner runner's details (what ran and how)."""
        return self.inner.details()

    def model_card(self) -> Any:
        """The card this runner feeds by: the given one, else the artifact's own."""
        return self.card if self.card is not None else self.inner.model_card()

    def synchronize(self) -> None:
        """The inner runner's."""
        self.inner.synchronize()

    def _io(self) -> GraphIO:
        if self.io is None:
            raise RuntimeError("AdaptedRunner used before activate()")
        return self.io


def _io_from_graph(meta: TensorMeta, outputs: list[TensorMeta]) -> GraphIO:
    """What a card-less graph says about itself: fixed batch, dtype, ``[N,C,1,1]`` output.

    Layout and channels cannot be told from a shape alone, so they are porter's (NCHW, the
    channel axis as the graph has it).
    """
    shape = tuple(meta.shape)
    channels = shape[1] if len(shape) == 4 and shape[1] in CHANNELS else 3
    nc11 = any(len(m.shape) == 4 and tuple(m.shape[2:]) == (1, 1) for m in outputs)
    dtype = np.dtype(meta.dtype).name
    if dtype not in INPUT_DTYPES:
        raise ModelError(f"input '{meta.name}' has dtype {dtype}: porter feeds float16, float32 "
                         "or float64 images")
    return GraphIO(input_name=meta.name, channels=int(channels), dtype=dtype,
                   batch=shape[0] if shape else None,
                   output_layout="NC11" if nc11 else "NC",
                   height=shape[2] if len(shape) == 4 else None,
                   width=shape[3] if len(shape) == 4 else None)


def adapt(runner: Runner, card: Any = None) -> AdaptedRunner:
    """``runner`` fed porter's canonical batch (see :class:`AdaptedRunner`); inactive as given."""
    return runner if isinstance(runner, AdaptedRunner) else AdaptedRunner(runner, card)
