"""The app-facing predictor behind ``port.load``: images in, class names and probabilities out.

A :class:`Predictor` wraps the runner of one artifact (ONNX file, TensorRT engine + sidecar,
porter checkpoint) with the model card the artifact carries: no run directory is needed.
``predict`` applies the recorded preprocessing (:mod:`port.data.pixels`, bit-identical to
porter's evaluation pipeline) and runs the same runner, with the same settings, as
``porter evaluate`` does, so the logits are the ones evaluate computed for the same images.

Predicting with an ONNX file imports only onnxruntime, numpy and Pillow (plus porter's light
modules); torch is imported for a checkpoint only, tensorrt/pycuda for an engine only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from port.data import pixels
from port.engines import load as load_runner
from port.engines.base import Runner
from port.ground.errors import ModelError, UsageError
from port.ground.vocab import EVALUATE_BATCH_SIZES
from port.models.card import ModelCard

# porter evaluate's default batch (the largest of its default --batch-sizes): predicting in the
# same batches keeps even batch-dependent kernels' results identical to evaluate's.
DEFAULT_BATCH = max(EVALUATE_BATCH_SIZES)


@dataclass(frozen=True)
class Prediction:
    """The top classes of one image, best first."""

    classes: list[str]
    indices: list[int]
    probabilities: list[float]

    @property
    def label(self) -> str:
        """The top-1 class name."""
        return self.classes[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: ``{"top": [{"class", "index", "probability"}, ...]}``."""
        return {"top": [{"class": c, "index": i, "probability": p}
                        for c, i, p in zip(self.classes, self.indices, self.probabilities,
                                           strict=True)]}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row maximum is subtracted first)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class Predictor:
    """One artifact ready to classify images; use as a context manager or call :meth:`close`."""

    def __init__(self, runner: Runner, card: ModelCard, path: Path) -> None:
        self.runner = runner
        self.card = card
        self.path = path
        meta = runner.input_metadata()
        if len(meta) != 1:
            raise ModelError(f"{path} has {len(meta)} inputs: porter predicts with single-input "
                             "image classifiers only")
        self.input_name = meta[0].name
        self._dtype = np.dtype(meta[0].dtype)
        self.logits_name = runner.logits_output()

    @property
    def classes(self) -> list[str]:
        """Class names, in logit order."""
        return list(self.card.classes)

    @property
    def backend(self) -> str:
        """The runner's backend (onnxruntime, tensorrt, torch)."""
        return self.runner.backend

    @property
    def device(self) -> str:
        """Where the model runs (e.g. CPUExecutionProvider, cuda:0, cpu)."""
        return self.runner.device

    def preprocess(self, images: Any) -> np.ndarray:
        """The float32 NCHW batch (``card.channels`` channels) from any accepted image input."""
        return pixels.preprocess_images(images, self.card.preprocess, channels=self.card.channels)

    def logits(self, images: Any, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Raw model outputs (N, classes) for images (or an already preprocessed NCHW float32
        batch, passed as ``np.ndarray`` of ndim 4 and dtype float32)."""
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype == np.float32:
            batch = images
        else:
            batch = self.preprocess(images)
        if batch_size < 1:
            raise UsageError(f"batch_size must be positive, got {batch_size}")
        chunks = []
        for start in range(0, len(batch), batch_size):
            feed = np.ascontiguousarray(batch[start:start + batch_size], dtype=self._dtype)
            out = self.runner.infer({self.input_name: feed})[self.logits_name]
            chunks.append(np.asarray(out, dtype=np.float32))
        return np.concatenate(chunks)

    def predict(self, images: Any, top_k: int = 5) -> Prediction | list[Prediction]:
        """Top-``top_k`` classes and softmax probabilities.

        ``images``: a file path, a PIL image or a uint8 HWC array (RGB) gives one
        :class:`Prediction`; a list of those or a uint8 NHWC array gives a list.
        """
        if top_k < 1:
            raise UsageError(f"top_k must be at least 1, got {top_k}")
        single = isinstance(images, str | Path) or not (
            isinstance(images, list | tuple) or (isinstance(images, np.ndarray)
                                                 and images.ndim == 4))
        scores = self.logits(images)
        # A graph that ends in a softmax already answers probabilities (its card says so).
        probs = scores.astype(np.float64) if self.card.output_softmax else softmax(scores)
        k = min(top_k, probs.shape[1])
        out = []
        for row in probs:
            # Stable sort on the negated probabilities: ties keep the lower class index first.
            order = np.argsort(-row, kind="stable")[:k]
            out.append(Prediction([self.card.classes[i] for i in order],
                                  [int(i) for i in order], [float(row[i]) for i in order]))
        return out[0] if single else out

    def close(self) -> None:
        """Release the runner (session, engine, buffers)."""
        self.runner.deactivate()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _card_for(runner: Runner, path: Path) -> ModelCard:
    """The model card the artifact carries (each runner reads its own: ONNX metadata, IR
    rt_info, engine sidecar, checkpoint)."""
    card = runner.model_card()
    if card is None:
        raise ModelError(f"{path} carries no porter model card: export it with porter, or import "
                         "it with `porter import` and export again")
    return card


def load(path: str | Path, *, backend: str | None = None, **runner_kwargs: Any) -> Predictor:
    """A :class:`Predictor` for an ONNX file, an OpenVINO IR (``.xml`` + ``.bin``), a TensorRT
    engine (with its ``.json`` sidecar next to it) or a porter checkpoint; ``backend`` picks
    another backend of the format (e.g. ``"openvino"`` for an ``.onnx``; default: the format's
    first); ``runner_kwargs`` go to the runner (e.g. ``threads=2``).

    Raises ``ModelError`` (missing or foreign file), ``BackendUnavailable`` (e.g. an engine on a
    machine without TensorRT), ``UsageError`` (an unknown suffix or backend).
    """
    path = Path(path)
    from port.engines.adapter import adapt

    runner = load_runner(path, backend=backend, **runner_kwargs)
    runner.activate()
    try:
        card = _card_for(runner, path)
        # Fed porter's canonical batch, converted to what the card says the graph takes.
        adapted = adapt(runner, card)
        adapted.activate()
        return Predictor(adapted, card, path)
    except BaseException:
        runner.deactivate()
        raise
