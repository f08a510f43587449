"""Layer-by-layer comparison of two implementations of one model: where does a port go wrong?

Two *sources* produce, batch by batch, ``{key: activation}`` for the same images, keyed by
module path (:mod:`port.evaluate.module_map`): the PyTorch reference with forward hooks on every
module (:class:`TorchSource`), an ONNX graph with its intermediate tensors exposed
(:class:`OnnxSource`), or ``.npy`` files dumped by another implementation (:class:`NpySource`).
:class:`LayerComparison` accumulates per-layer error statistics over the batches (memory stays
one batch of activations); :func:`compare_layers` does the same for whole arrays in one call
(what the automatic FP32-fallback ranking reuses).

The error measure a tolerance applies to is the relative L2 error ``||a - r|| / ||r||`` of the
whole layer output over the batch: scale-free, so one tolerance fits every layer. A layer whose
artifact side holds inf or NaN where the reference is finite (an FP16 overflow) is over any
tolerance. Default tolerances per precision are in :data:`DEFAULT_TOLERANCE` (measured on a
trained CIFAR-10 ResNet-9: see README, ``porter evaluate --layerwise``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from port.evaluate.module_map import ROOT, ModuleMap, map_modules, module_key
from port.ground.errors import DataError, ModelError, UsageError, first_line

# Relative L2 error over which a layer counts as diverged, by the artifact's precision, set from
# the largest per-layer error measured on the trained CIFAR-10 ResNet-9 (256 validation images;
# README, "porter evaluate --layerwise"): FP32 ONNX vs PyTorch 3.8e-7 (tolerance 260x above),
# FP16 4.3e-4 (23x: FP16's rounding is 4.9e-4), INT8 QDQ (per-channel minmax) 0.032 (6x). An
# overflow (inf), a perturbed or misloaded layer lands far above these.
DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.2}
TOP_GROWTH = 5  # rows named as the ones adding the most error
GROWTH_FLOOR = 0.05  # ... when their growth is at least this fraction of the tolerance


# -- statistics -------------------------------------------------------------------------------
@dataclass
class LayerStats:
    """Running sums for one layer: error, cosine and each side's moments, in float64."""

    count: int = 0  # compared (finite on both sides) elements
    nonfinite: int = 0  # elements finite in the reference, inf/NaN in the candidate
    sum_abs: float = 0.0
    max_abs: float = 0.0
    sum_sq_diff: float = 0.0
    dot: float = 0.0
    ref_sq: float = 0.0
    cand_sq: float = 0.0
    ref_sum: float = 0.0
    cand_sum: float = 0.0

    def add(self, ref: np.ndarray, cand: np.ndarray) -> None:
        """Add one batch of the same layer (same shape) from both sides."""
        r = np.asarray(ref, dtype=np.float64).ravel()
        c = np.asarray(cand, dtype=np.float64).ravel()
        ok = np.isfinite(r) & np.isfinite(c)
        self.nonfinite += int((np.isfinite(r) & ~np.isfinite(c)).sum())
        if not ok.all():
            r, c = r[ok], c[ok]
        d = c - r
        self.count += r.size
        if r.size:
            self.sum_abs += float(np.abs(d).sum())
            self.max_abs = max(self.max_abs, float(np.abs(d).max()))
        self.sum_sq_diff += float(d @ d)
        self.dot += float(r @ c)
        self.ref_sq += float(r @ r)
        self.cand_sq += float(c @ c)
        self.ref_sum += float(r.sum())
        self.cand_sum += float(c.sum())

    def result(self) -> dict[str, float | int | None]:
        """max/mean abs diff, relative L2 error, cosine, each side's mean and std."""
        n = max(self.count, 1)
        rel = math.sqrt(self.sum_sq_diff) / math.sqrt(self.ref_sq) if self.ref_sq > 0 else (
            0.0 if self.sum_sq_diff == 0 else math.inf)
        denom = math.sqrt(self.ref_sq * self.cand_sq)
        cosine = self.dot / denom if denom > 0 else (1.0 if self.ref_sq == self.cand_sq else 0.0)
        ref_mean, mean = self.ref_sum / n, self.cand_sum / n
        if self.nonfinite:
            rel = math.inf
        return {
            "max_abs_diff": math.inf if self.nonfinite else self.max_abs,
            "mean_abs_diff": self.sum_abs / n,
            "rel_error": rel,
            "cosine": cosine,
            "ref_mean": ref_mean,
            "ref_std": math.sqrt(max(self.ref_sq / n - ref_mean**2, 0.0)),
            "mean": mean,
            "std": math.sqrt(max(self.cand_sq / n - mean**2, 0.0)),
            "nonfinite": self.nonfinite,
        }


@dataclass
class Row:
    """One reference layer: what it is compared with and the running statistics."""

    module: str
    onnx_tensor: str | None = None  # the candidate's tensor (ONNX name), when it has one
    source_tensor: str | None = None
    aliases: list[str] = field(default_factory=list)  # enclosing modules with the same output
    folded: list[str] = field(default_factory=list)  # modules with no tensor of their own
    note: str | None = None
    shape: list[int] | None = None
    candidate_shape: list[int] | None = None
    stats: LayerStats | None = None


class LayerComparison:
    """Accumulate per-layer statistics of a candidate against a reference, batch by batch.

    ``order`` is the reference's layers in execution order; ``tensors`` names the candidate's
    tensor for each key (``None``: the candidate has no counterpart: listed, not compared).
    """

    def __init__(self, order: Sequence[str], tensors: Mapping[str, str | None] | None = None,
                 *, source_tensors: Mapping[str, str] | None = None,
                 notes: Mapping[str, str] | None = None) -> None:
        self.rows: list[Row] = []
        self._by_key: dict[str, Row] = {}
        by_tensor: dict[str, Row] = {}
        pending_folded: list[str] = []
        for key in order:
            tensor = tensors.get(key) if tensors is not None else key
            if tensor is not None and tensor in by_tensor:
                by_tensor[tensor].aliases.append(key)  # a container ending in its last child
                self._by_key[key] = by_tensor[tensor]
                continue
            row = Row(module=key, onnx_tensor=tensor,
                      source_tensor=(source_tensors or {}).get(key, tensor))
            if tensor is None:
                row.note = (notes or {}).get(key, "no counterpart")
                if row.note == "no counterpart":  # e.g. a Conv whose BatchNorm absorbed it
                    pending_folded.append(key)
            else:
                row.stats = LayerStats()
                row.folded, pending_folded = pending_folded, []
                by_tensor[tensor] = row
                self._by_key[key] = row
            self.rows.append(row)

    @property
    def compared_keys(self) -> list[str]:
        """Keys of the rows that have a candidate tensor (aliases excluded)."""
        return [r.module for r in self.rows if r.stats is not None]

    def add(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
            ) -> None:
        """One batch: ``reference`` keyed by module, ``candidate`` keyed by candidate tensor."""
        for row in self.rows:
            if row.stats is None or row.note:
                continue
            ref = reference.get(row.module)
            cand = candidate.get(row.onnx_tensor or "")
            if ref is None or cand is None:
                row.note = ("not produced by the reference in this batch" if ref is None
                            else "not produced by the candidate in this batch")
                continue
            if row.shape is None:
                row.shape, row.candidate_shape = list(ref.shape[1:]), list(cand.shape[1:])
            if cand.shape != ref.shape:
                if cand.size == ref.size and _squeezed(cand) == _squeezed(ref):
                    cand = cand.reshape(ref.shape)  # [N,C,1,1] vs [N,C]: same values
                else:
                    row.note = (f"shape {list(cand.shape[1:])} where the reference has "
                                f"{list(ref.shape[1:])}")
                    continue
            row.stats.add(ref, cand)

    def result(self, tolerance: float) -> dict[str, Any]:
        """``layers`` (execution order), ``first_divergence``, ``top_growth``."""
        layers: list[dict[str, Any]] = []
        first = None
        previous = 0.0
        growth: list[tuple[float, str]] = []
        for row in self.rows:
            entry: dict[str, Any] = {"module": row.module, "onnx_tensor": row.onnx_tensor}
            if row.source_tensor and row.source_tensor != row.onnx_tensor:
                entry["source_tensor"] = row.source_tensor
            if row.aliases:
                entry["aliases"] = row.aliases
            if row.folded:
                entry["folded"] = row.folded
            entry["shape"] = row.shape
            compared = row.stats is not None and row.note is None and row.stats.count + (
                row.stats.nonfinite) > 0
            if compared:
                assert row.stats is not None
                stats = row.stats.result()
                entry.update(stats)
                rel = float(stats["rel_error"] or 0.0)
                entry["growth"] = (rel - previous if math.isfinite(rel) and math.isfinite(previous)
                                   else None)
                entry["diverged"] = not rel <= tolerance
                if entry["diverged"] and first is None:
                    first = row.module
                if math.isfinite(previous):  # inf here: this layer made the first inf/NaN
                    growth.append((rel - previous if math.isfinite(rel) else math.inf,
                                   row.module))
                previous = rel
            else:
                entry.update({k: None for k in ("max_abs_diff", "mean_abs_diff", "rel_error",
                                                "cosine", "ref_mean", "ref_std", "mean", "std")})
                entry["diverged"] = None
                entry["note"] = row.note or "no counterpart"
                if row.candidate_shape is not None and row.candidate_shape != row.shape:
                    entry["candidate_shape"] = row.candidate_shape
            layers.append(entry)
        # Only growth that matters next to the tolerance is named (FP32 noise is not).
        top = [m for g, m in sorted(growth, key=lambda t: -t[0])
               if g > GROWTH_FLOOR * tolerance][:TOP_GROWTH]
        return {"layers": layers, "first_divergence": first, "top_growth": top,
                "tolerance": tolerance,
                "compared": sum(1 for e in layers if e["diverged"] is not None),
                "not_compared": sum(1 for e in layers if e["diverged"] is None)}


def _squeezed(a: np.ndarray) -> tuple[int, ...]:
    return tuple(d for d in a.shape if d != 1)


def compare_layers(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                   *, order: Sequence[str] | None = None,
                   tensors: Mapping[str, str | None] | None = None,
                   tolerance: float = DEFAULT_TOLERANCE["fp32"]) -> dict[str, Any]:
    """Per-layer errors of ``candidate`` against ``reference`` for whole arrays, in one call.

    ``reference`` maps module keys to arrays (batch first); ``candidate`` maps the candidate's
    tensor names (``tensors[key]``; the key itself when ``tensors`` is None) to arrays of the
    same shape. ``order`` defaults to ``reference``'s order. Returns the ``layers`` /
    ``first_divergence`` / ``top_growth`` dict of :meth:`LayerComparison.result`.
    """
    comparison = LayerComparison(list(order or reference), tensors)
    comparison.add(reference, candidate)
    return comparison.result(tolerance)


# -- sources ----------------------------------------------------------------------------------
class TorchSource:
    """The PyTorch model with a forward hook on every module: ``{module key: output}``.

    Outputs are copied as the hook fires (an in-place ReLU after a BatchNorm would otherwise
    overwrite the BatchNorm's output). A module run k > 1 times in one forward gets keys
    ``path#1`` ... ``path#k``; the model itself is :data:`ROOT`. Non-tensor outputs are skipped.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.order: list[str] = []

    def batches(self, images: np.ndarray, batch_size: int
                ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """``(image batch, activations)`` for each batch of ``images``."""
        import torch

        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            calls: list[tuple[str, np.ndarray]] = []
            handles = []

            for path, module in self.model.named_modules():
                handles.append(module.register_forward_hook(_hook(path, calls)))
            try:
                with torch.inference_mode():
                    self.model(torch.from_numpy(np.ascontiguousarray(chunk)))
            finally:
                for handle in handles:
                    handle.remove()
            counts: dict[str, int] = {}
            for path, _ in calls:
                counts[path] = counts.get(path, 0) + 1
            seen: dict[str, int] = {}
            acts: dict[str, np.ndarray] = {}
            keys = []
            for path, value in calls:
                seen[path] = seen.get(path, 0) + 1
                key = module_key(path, seen[path], counts[path])
                acts[key] = value
                keys.append(key)
            if not self.order:
                self.order = keys
            yield chunk, acts


def _hook(path: str, calls: list[tuple[str, np.ndarray]]) -> Any:
    """A forward hook appending ``(path, copy of the output)`` to ``calls``."""
    import torch

    def fire(_module: Any, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            calls.append((path, output.detach().float().cpu().numpy().copy()))
    return fire


class OnnxSource:
    """An ONNX graph with its module outputs exposed (ORT CPU, fusions off)."""

    def __init__(self, model: Any, card: Any, *, what: str) -> None:
        from port.engines.activations import IntermediateRunner, float_tensors
        from port.engines.adapter import GraphIO

        self.graph = model
        self.what = what
        self.map: ModuleMap = map_modules(model, {t.name for t in float_tensors(model)})
        self.tensors = {m.key: m.tensor for m in self.map.outputs}
        self.source_tensors = {m.key: m.source_tensor for m in self.map.outputs}
        self.order = [m.key for m in self.map.outputs]
        wanted = sorted(set(self.tensors.values()))
        self.runner = IntermediateRunner(model, wanted, what=what)
        missing = [n for n in wanted if n not in set(self.runner.names)]
        if missing:  # a compared tensor ORT cannot expose (not float by shape inference)
            for key in [k for k, t in self.tensors.items() if t in missing]:
                self.map.unmatched.append({"tensor": self.tensors.pop(key),
                                           "reason": "type not inferable: not exposed"})
                self.order.remove(key)
        inp = model.graph.input[0]
        dims = tuple(d.dim_value or None for d in inp.type.tensor_type.shape.dim)
        from onnx.helper import tensor_dtype_to_np_dtype

        self.io = GraphIO.from_card(card, input_name=self.runner.input_names[0],
                                    graph_shape=dims,
                                    graph_dtype=tensor_dtype_to_np_dtype(
                                        inp.type.tensor_type.elem_type))

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``{tensor name: array}`` of every exposed tensor for a canonical NCHW batch."""
        parts: dict[str, list[np.ndarray]] = {}
        for chunk, real in self.io.chunks(images, len(images)):
            try:
                outs = self.runner.run({self.io.input_name: self.io.to_graph(chunk)})
            except Exception as exc:  # ORT's errors (wrong input size, bad graph) are generic
                raise ModelError(f"{self.what}: ONNX Runtime cannot run it on the model's "
                                 f"{list(chunk.shape[1:])} images ({first_line(exc)}): compare "
                                 "an export of this run's model") from None
            for name, value in outs.items():
                if value.ndim == 0 or value.shape[0] != len(chunk):
                    # A float constant (GELU's 0.5, a scale) or a shape-like tensor: one value
                    # for the whole batch, not an activation per image, so nothing to compare.
                    self._not_per_image(name, value.shape)
                    continue
                parts.setdefault(name, []).append(value[:real])
        return {name: np.concatenate(v) for name, v in parts.items()}

    def _not_per_image(self, tensor: str, shape: tuple[int, ...]) -> None:
        """Stop offering ``tensor`` for comparison and list it with the reason (once)."""
        keys = [k for k, t in self.tensors.items() if t == tensor]
        if not keys:
            return
        for key in keys:
            del self.tensors[key]
            self.order.remove(key)
        self.map.unmatched.append({"tensor": tensor,
                                   "reason": f"not per image (shape {list(shape)}): not compared"})

    def keyed(self, by_tensor: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The same activations keyed by module key (for an ONNX graph used as reference)."""
        return {k: by_tensor[t] for k, t in self.tensors.items() if t in by_tensor}


class TrtDebugSource:
    """A TensorRT build of an engine's ONNX with the module outputs as debug tensors (GPU).

    The mapping is the ONNX graph's (:func:`map_modules`, CPU); the run is
    :func:`port.engines.trt_debug.run_debug_tensors`, once over the whole batch (one engine
    build), then served batch by batch.
    """

    def __init__(self, onnx_path: Path, card: Any) -> None:
        import onnx

        from port.engines.activations import float_tensors
        from port.engines.adapter import GraphIO

        self.onnx_path = onnx_path
        model = onnx.load(str(onnx_path))
        self.map = map_modules(model, {t.name for t in float_tensors(model)})
        self.tensors = {m.key: m.tensor for m in self.map.outputs}
        self.source_tensors = {m.key: m.source_tensor for m in self.map.outputs}
        self.order = [m.key for m in self.map.outputs]
        self.io = GraphIO.from_card(card, input_name=model.graph.input[0].name)
        self._all: dict[str, np.ndarray] | None = None
        self._images: np.ndarray | None = None
        self._cursor = 0

    def prepare(self, images: np.ndarray) -> None:
        """Build and run once over ``images`` (the whole comparison batch)."""
        from port.engines.trt_debug import run_debug_tensors

        self._images = images
        self._all = run_debug_tensors(self.onnx_path, sorted(set(self.tensors.values())),
                                      self.io.to_graph(images))
        self._cursor = 0

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The next ``len(images)`` rows of every reported tensor (batches come in order)."""
        assert self._all is not None, "prepare() first"
        start, self._cursor = self._cursor, self._cursor + len(images)
        return {k: v[start:self._cursor] for k, v in self._all.items()}


class NpySource:
    """Activations dumped by another implementation: ``DIR/<module key>.npy``, batch first.

    ``DIR/input.npy``, when present, is the batch they were computed from. Files are opened as
    memory maps and sliced per batch; object arrays (pickles) are refused.
    """

    INPUT = "input.npy"

    def __init__(self, directory: Path) -> None:
        if not directory.is_dir():
            raise UsageError(f"--against {directory} is not a directory: pass the folder of "
                             "<module>.npy files (porter evaluate --layerwise model --dump DIR "
                             "shows the layout)")
        self.dir = directory
        self.arrays: dict[str, np.ndarray] = {}
        for path in sorted(directory.glob("*.npy")):
            if path.name == self.INPUT:
                continue
            self.arrays[path.stem] = _load_npy(path)
        if not self.arrays:
            raise UsageError(f"--against {directory} holds no <module>.npy files: dump one "
                             "array per module (batch first), named by module path, e.g. "
                             "layer1.0.conv1.npy")

    def input_batch(self) -> np.ndarray | None:
        """``input.npy`` when the directory has one."""
        path = self.dir / self.INPUT
        return _load_npy(path) if path.is_file() else None

    def slice(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` of every array that has them."""
        return {k: np.asarray(a[start:stop], dtype=np.float32) for k, a in self.arrays.items()
                if a.ndim >= 1 and len(a) >= stop}


def _load_npy(path: Path) -> np.ndarray:
    """A float array from ``path`` (memory-mapped), or a DataError naming the file and the fix."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npy array ({str(exc)[:120]}): write it "
                        "with numpy.save (float32, batch first, no pickled objects)") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        kind = getattr(array, "dtype", type(array))
        raise DataError(f"{path} holds {kind}, not floats: save the activation as float32 "
                        "(batch first)")
    return array


def write_dump(directory: Path, batches: Iterator[tuple[int, np.ndarray, Mapping[str, np.ndarray]]],
               total: int) -> list[str]:
    """Write ``input.npy`` and one ``<key>.npy`` per layer (batch first) into ``directory``.

    ``batches`` yields ``(start, images, {key: activation})`` in execution order; arrays are
    written through memory maps of the final size, so memory holds one batch. Returns the keys
    written, in execution order.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, np.ndarray] = {}
    written: list[str] = []
    for start, images, acts in batches:
        for key, value in [("input", images), *acts.items()]:
            if "/" in key or "\\" in key or key.startswith("."):
                continue  # a key is a file name, never a path
            if key not in files:
                files[key] = np.lib.format.open_memmap(
                    directory / f"{key}.npy", mode="w+", dtype=np.float32,
                    shape=(total, *value.shape[1:]))
                if key != "input":
                    written.append(key)
            files[key][start:start + len(value)] = value
    for array in files.values():
        array.flush()
    return written


__all__ = ["DEFAULT_TOLERANCE", "ROOT", "LayerComparison", "LayerStats", "NpySource",
           "OnnxSource", "TorchSource", "TrtDebugSource", "compare_layers", "write_dump"]
