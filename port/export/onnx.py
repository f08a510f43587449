"""PyTorch -> ONNX (FP32) export that proves itself before it leaves a file behind.

``export_onnx`` exports with a dynamic batch axis, folds any external-data sidecar into one
self-contained ``.onnx`` file, runs ``onnx.checker`` (full check), writes the porter metadata,
and compares ONNX Runtime (CPU) against PyTorch on real sample images at two batch sizes. Only
when all of that passes is the file renamed into place, so a failed export never leaves a
half-made or wrong model where a user (or the manifest) would pick it up.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import site
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from port.ground.atomic import atomic_path
from port.ground.errors import ModelError, UsageError, first_line
from port.models.card import ModelCard
from port.models.card_codec import card_metadata, read_card, set_metadata

EXPORTERS = ("dynamo", "torchscript")
# ONNX's protobuf limit: above it weights must live in a separate file, which we do not produce.
_MAX_SINGLE_FILE_BYTES = 2**31 - 1
# The dynamic batch axis must accept at least this much; torch.export needs an upper bound.
_MAX_BATCH = 4096

__all__ = ["EXPORTERS", "check_parity", "export_onnx", "opset_range", "read_card",
           "strip_build_paths"]


def export_onnx(
    model: Any,
    card: ModelCard,
    out_path: str | Path,
    *,
    sample: np.ndarray,
    opset: int | None = None,
    exporter: str = "dynamo",
    atol: float = 1e-4,
    rtol: float = 1e-3,
    source_sha256: str | None = None,
    precision: str = "fp32",
    extra_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``model`` (a ``torch.nn.Module``) to ONNX at ``out_path`` and check it.

    ``sample`` is a float32 NCHW batch of real preprocessed images: the PyTorch-vs-ONNX Runtime
    parity check runs on it (all of it, then its first image alone to prove the batch axis is
    dynamic). ``exporter`` is ``"dynamo"`` (torch.export based, the default) or
    ``"torchscript"`` (the legacy tracer, for models dynamo cannot capture). Raises
    ``ModelError`` when export, the checker or the parity check fails; no file is left at
    ``out_path`` then (an existing file there is kept). Returns the metrics for the manifest.
    """
    import onnx
    import torch

    if exporter not in EXPORTERS:
        raise UsageError(
            f"unknown ONNX exporter '{exporter}': choose one of {', '.join(EXPORTERS)}"
        )
    sample = _check_sample(sample, card)
    lo, hi = opset_range(exporter)
    if opset is not None and not lo <= opset <= hi:
        raise UsageError(
            f"--opset {opset} is outside what the {exporter} exporter writes ({lo}..{hi}): "
            f"pick one in range{' or use --exporter torchscript' if exporter == 'dynamo' else ''}"
        )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    with _eval_on_cpu(model) as net:
        with torch.inference_mode():
            reference = net(torch.from_numpy(sample)).float().numpy()
        with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".porter-onnx-") as tmp:
            raw = Path(tmp) / "model.onnx"
            _run_exporter(net, card, raw, sample, opset=opset, exporter=exporter)
            # Loading with external data and saving once folds a ".onnx.data" sidecar into the file.
            proto = onnx.load(str(raw), load_external_data=True)
    strip_build_paths(proto)
    export_seconds = time.perf_counter() - started

    set_metadata(proto, card_metadata(card, precision=precision, source_sha256=source_sha256,
                                       extra=extra_metadata))
    if proto.ByteSize() > _MAX_SINGLE_FILE_BYTES:
        raise ModelError(
            f"{card.arch} is larger than 2 GB, which one ONNX file cannot hold: "
            "export a smaller model (porter writes self-contained ONNX files only)"
        )
    used_opset = _default_opset(proto)
    hint = _hint(exporter, used_opset)
    if opset is not None and used_opset != opset:
        # The exporter may fall back to another opset with only a log line: never pass that on.
        raise ModelError(f"the {exporter} exporter wrote opset {used_opset}, not the requested "
                         f"{opset}: {hint}")

    # Checked and compared in a temp file: the final name only ever holds a verified export.
    with atomic_path(out_path) as tmp_file:
        tmp_file.write_bytes(proto.SerializeToString())
        try:
            onnx.checker.check_model(str(tmp_file), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
            raise ModelError(
                f"exported ONNX fails onnx.checker ({first_line(err)}): {hint}"
            ) from None
        parity = check_parity(tmp_file, reference, sample, atol=atol, rtol=rtol,
                              input_name=card.input_name, hint=hint)

    return {
        "exporter": exporter,
        "opset": used_opset,
        "precision": precision,
        "export_seconds": round(export_seconds, 3),
        "bytes": out_path.stat().st_size,
        **parity,
    }


def check_parity(
    onnx_path: str | Path,
    reference: np.ndarray,
    sample: np.ndarray,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    input_name: str | None = None,
    hint: str = "try --exporter torchscript or another --opset",
) -> dict[str, Any]:
    """Compare ONNX Runtime (CPU) on ``sample`` with the PyTorch ``reference`` logits.

    Runs the whole batch and then its first image alone, so a batch axis that was frozen during
    export fails here rather than in the user's app. Fails (``ModelError``) when any logit is
    off by more than ``atol + rtol * |reference|`` or when a top-1 class flips on an image whose
    reference margin is larger than that tolerance (flips inside the tolerance are ties, not
    errors). Returns ``max_abs_diff``, ``mean_abs_diff``, ``agreement``, ``parity_images``,
    ``batch_sizes_checked``, ``atol``, ``rtol``.
    """
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    from port.engines.ort_session import create_session

    ort_errors = (ort_state.Fail, ort_state.InvalidArgument, ort_state.RuntimeException,
                  ort_state.NotImplemented, ort_state.InvalidGraph, ort_state.InvalidProtobuf)
    session = create_session(onnx_path, what="the exported model", hint=hint)
    name = input_name or session.get_inputs()[0].name
    n_images = len(sample)
    if n_images == 1:
        # One image cannot show whether the batch axis is dynamic: run it twice over as well.
        sample = np.concatenate([sample, sample])
        reference = np.concatenate([reference, reference])
    batches = sorted({len(sample), 1}, reverse=True)
    outputs: dict[int, np.ndarray] = {}
    for n in batches:
        try:
            outputs[n] = np.asarray(session.run(None, {name: sample[:n]})[0], dtype=np.float32)
        except ort_errors as err:
            raise ModelError(
                f"exported ONNX does not run at batch size {n} ({first_line(err)}): the batch "
                f"axis is not dynamic; {hint}"
            ) from None

    ref = np.asarray(reference, dtype=np.float32)
    got = outputs[len(sample)]
    if got.shape != ref.shape:
        raise ModelError(f"exported ONNX returns shape {got.shape}, PyTorch {ref.shape}: {hint}")
    # Batch size 1 must give the same answer as the same image inside the full batch.
    got_all = np.concatenate([got, outputs[1]]) if len(sample) > 1 else got
    ref_all = np.concatenate([ref, ref[:1]]) if len(sample) > 1 else ref

    diff = np.abs(got_all - ref_all)
    allowed = atol + rtol * np.abs(ref_all)
    max_abs = float(np.max(diff)) if diff.size else 0.0
    ref_top1 = ref_all.argmax(axis=1)
    got_top1 = got_all.argmax(axis=1)
    agreement = float(np.mean(ref_top1 == got_top1)) if len(ref_all) else 1.0
    decisive_flips = int(np.sum((ref_top1 != got_top1) & (_margin(ref_all) > 2 * allowed.max(1))))
    # `not <=` rather than `>` so that NaN/inf outputs count as failures.
    if not np.all(diff <= allowed) or decisive_flips:
        raise ModelError(
            f"ONNX export differs from PyTorch: max |diff| {max_abs:.3g} on {n_images} images "
            f"(allowed {atol:g} + {rtol:g}*|ref|), top-1 agreement {agreement:.4f}: {hint}"
        )
    return {
        "max_abs_diff": max_abs,
        "mean_abs_diff": float(np.mean(diff)) if diff.size else 0.0,
        "agreement": agreement,
        "parity_images": n_images,
        "batch_sizes_checked": batches,
        "atol": atol,
        "rtol": rtol,
    }


def build_path_prefixes() -> list[tuple[str, str]]:
    """(absolute directory + "/", replacement) pairs of this machine, longest first.

    Site-packages and sys.path entries become module-relative (``torch/nn/...``,
    ``port/models/...``), interpreter prefixes become ``lib/python3.x/...``, the home directory
    ``~/``: a stack trace keeps its use (which module, which line) without naming the machine.
    """
    dirs: dict[str, str] = {}
    home = os.path.expanduser("~")
    if home not in ("", "/"):
        dirs[home] = "~/"
    roots = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.getcwd(),
             str(Path(__file__).resolve().parents[2])]  # the tree holding the port package
    for path in [*roots, *sys.path, *site.getsitepackages(), site.getusersitepackages()]:
        if path and os.path.isabs(path) and path != "/":
            for form in {path, os.path.realpath(path)}:
                dirs.setdefault(form.rstrip("/"), "")
    return sorted(((d + "/", r) for d, r in dirs.items()), key=lambda pair: -len(pair[0]))


def strip_build_paths(proto: Any) -> int:
    """Make every absolute path of this machine in ``proto``'s text fields relative.

    torch.onnx writes the exporting process's stack traces into node metadata
    (``pkg.torch.onnx.stack_trace``) and doc strings: absolute paths of the checkout, the
    virtual environment and the interpreter. A deployed file must not carry them. Walks the
    model, graph (and subgraphs), nodes, functions and value infos; returns how many strings
    changed.
    """
    prefixes = build_path_prefixes()

    def clean(text: str) -> str:
        for prefix, replacement in prefixes:
            if prefix in text:
                text = text.replace(prefix, replacement)
        return text

    changed = 0

    def fix(message: Any) -> None:
        nonlocal changed
        if message.doc_string:
            new = clean(message.doc_string)
            changed += new != message.doc_string
            message.doc_string = new
        for entry in getattr(message, "metadata_props", ()):
            new = clean(entry.value)
            changed += new != entry.value
            entry.value = new

    def walk_graph(graph: Any) -> None:
        fix(graph)
        for item in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
            fix(item)
        for node in graph.node:
            walk_node(node)

    def walk_node(node: Any) -> None:
        fix(node)
        for attr in node.attribute:
            fix(attr)
            if attr.HasField("g"):
                walk_graph(attr.g)
            for sub in attr.graphs:
                walk_graph(sub)

    fix(proto)
    walk_graph(proto.graph)
    for function in proto.functions:
        fix(function)
        for node in function.node:
            walk_node(node)
    return changed


# -- helpers ---------------------------------------------------------------------------------
def _check_sample(sample: np.ndarray, card: ModelCard) -> np.ndarray:
    if not isinstance(sample, np.ndarray) or sample.ndim != 4 or len(sample) == 0:
        raise UsageError("export needs a non-empty float32 NCHW sample batch of real images: "
                         "pass sample=images[:N] from data.materialize")
    if tuple(sample.shape[1:]) != card.input_shape:
        raise UsageError(
            f"sample images have shape {tuple(sample.shape[1:])}, the model expects "
            f"{card.input_shape}: preprocess them with the model's card"
        )
    return np.ascontiguousarray(sample, dtype=np.float32)


@contextlib.contextmanager
def _eval_on_cpu(model: Any) -> Iterator[Any]:
    """The model in eval mode on the CPU, restoring the caller's train/eval mode afterwards.

    Export and reference both run on the CPU: a CUDA reference would use TF32 convolutions and
    miss the FP32 tolerance against ONNX Runtime on the CPU for reasons unrelated to the export.
    """
    import torch

    on_cpu = all(p.device.type == "cpu" for p in model.parameters()) and all(
        b.device.type == "cpu" for b in model.buffers()
    )
    net = model if on_cpu else copy.deepcopy(model).to(torch.device("cpu"))
    was_training = model.training
    net.eval()
    try:
        yield net
    finally:
        model.train(was_training)


def _run_exporter(net: Any, card: ModelCard, path: Path, sample: np.ndarray, *, opset: int | None,
                  exporter: str) -> None:
    import torch

    # torch.export specialises a dimension whose example size is 1, so export with >= 2 images.
    example = sample[:2] if len(sample) >= 2 else np.concatenate([sample, sample])
    args = (torch.from_numpy(np.ascontiguousarray(example)),)
    names = {"input_names": [card.input_name], "output_names": [card.output_name]}
    try:
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
            torch.onnx.export(net, args, str(path), **names, opset_version=opset, dynamo=True,
                              dynamic_shapes=({0: batch},), verbose=False, report=False)
        else:
            axes = {card.input_name: {0: "batch"}, card.output_name: {0: "batch"}}
            # The user chose the legacy exporter on purpose: its deprecation notice is noise here,
            # and it prints graph notes on stdout.
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore", category=DeprecationWarning)
                warnings.simplefilter("ignore", category=FutureWarning)
                warnings.simplefilter("ignore", category=UserWarning)
                torch.onnx.export(net, args, str(path), **names, opset_version=opset, dynamo=False,
                                  dynamic_axes=axes, verbose=False, do_constant_folding=True)
    except torch.onnx.errors.OnnxExporterError as err:
        other = "torchscript" if exporter == "dynamo" else "dynamo"
        raise ModelError(
            f"the {exporter} ONNX exporter failed on {card.arch} ({first_line(err)}): "
            f"try --exporter {other} or another --opset"
        ) from None
    if not path.is_file():
        raise ModelError(f"the {exporter} ONNX exporter wrote no file: try --exporter "
                         f"{'torchscript' if exporter == 'dynamo' else 'dynamo'}")


def _default_opset(proto: Any) -> int:
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def opset_range(exporter: str) -> tuple[int, int]:
    """The opsets ``exporter`` writes natively, from torch's own constants when it has them."""
    try:
        from torch.onnx import _constants as limits  # private, but where torch states its range
    except ImportError:
        limits = None
    if exporter == "dynamo":
        # torchlib implements opset 18 and later; lower requests go through a lossy converter.
        return 18, int(getattr(limits, "ONNX_MAX_OPSET", 23))
    return (int(getattr(limits, "ONNX_MIN_OPSET", 7)),
            int(getattr(limits, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)))


def _hint(exporter: str, opset: int) -> str:
    other = "torchscript" if exporter == "dynamo" else "dynamo"
    lo, hi = opset_range(exporter)
    alt = 17 if exporter == "torchscript" and opset != 17 else (lo if opset != lo else hi)
    return f"try --exporter {other} or --opset {alt}"


def _margin(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit per row (infinite with a single class: nothing can flip)."""
    if logits.shape[1] < 2:
        return np.full(len(logits), np.inf, dtype=np.float32)
    top2 = np.partition(logits, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]
