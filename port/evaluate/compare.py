"""Run the reference and every candidate on the same images; build the report (DESIGN.md schema).

Preprocessing happens once, by the caller (``data.materialize``); every runner sees the same
float32 NCHW batches, converted to its input dtype once, outside any timing. A candidate whose
runner cannot run on this machine (``BackendUnavailable``: no GPU, no TensorRT) gets a row with
``passed = None`` and ``why = "skipped: ..."`` and every measurement ``None``, so one report can
list everything in a run directory; the top-level ``passed`` is true when every row that ran
passed. Any other error (a damaged artifact, a shape mismatch) stops the evaluation.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from port.engines.base import Runner
from port.errors import BackendUnavailable, DataError, ModelError, UsageError
from port.evaluate.accuracy import accuracy
from port.evaluate.gates import Gates, check
from port.evaluate.latency import measure_latency
from port.evaluate.parity import parity
from port.formats import format_for_kind
from port.hostinfo import env_info

ROW_FIELDS = (
    "artifact", "kind", "backend", "device", "precision", "top1", "top5", "top1_drop_pp",
    "agreement", "max_abs_diff", "mean_abs_diff", "latency_ms", "throughput", "size_bytes",
    "passed", "why", "note", "phases_ms", "int8_cpu", "timing",
)


@dataclass
class Candidate:
    """One artifact to evaluate, and how to get a runner for it (created only when it runs)."""

    artifact_id: str  # manifest id (or any label)
    precision: str  # fp32, fp16, int8: selects the gate
    kind: str  # manifest kind: checkpoint, onnx, engine
    path: Path | str | None  # the artifact file; None for in-memory models
    size_bytes: int | None  # artifact size; None = take it from ``path``
    make_runner: Callable[[], Runner]  # returns an *inactive* runner; called only when it runs
    backend: str | None = None  # label for a skipped row; defaults from ``kind``
    # How the artifact really ran on a given device, when that is not obvious from the row
    # (e.g. an FP16 graph on ONNX Runtime's CPU provider computes in FP32): device -> note.
    notes: dict[str, str] = field(default_factory=dict)

    def artifact_bytes(self) -> int | None:
        """``size_bytes`` if given, else the file size of ``path`` (None when unknown)."""
        if self.size_bytes is not None:
            return self.size_bytes
        if self.path is not None and Path(self.path).is_file():
            return Path(self.path).stat().st_size
        return None


@dataclass
class _Measured:
    backend: str
    device: str
    logits: np.ndarray
    latency_ms: dict[str, dict[str, float]]
    # Per batch size, transfer and compute apart (H2D / compute / D2H ms), as trtexec reports
    # them; only runners that can time device phases (TensorRT) fill it.
    phases_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # Runner.details(): what really ran
    timing: str | None = None  # Runner.timing_mode: what one timed run covers


def evaluate(
    reference: Candidate,
    candidates: Sequence[Candidate],
    images: np.ndarray,
    labels: np.ndarray,
    batch_sizes: Sequence[int] = (1, 32),
    gates: Gates | None = None,
    *,
    dataset: dict[str, Any] | None = None,
    progress: bool = True,
    eval_batch_size: int | None = None,
    warmup: int = 10,
    min_runs: int = 20,
    min_seconds: float = 1.0,
    console: Any = None,
) -> dict[str, Any]:
    """Score ``reference`` and ``candidates`` on ``images``/``labels``; return the report dict.

    ``images`` is float32 NCHW (already preprocessed), ``labels`` int class indices. Accuracy and
    parity use every image, in batches of ``eval_batch_size`` (default: the largest of
    ``batch_sizes``; the last batch may be smaller). Latency is measured per batch size on the
    first images (repeated when there are fewer). ``dataset`` (spec, split, ...) is copied into
    the report with ``images`` set to the count. The reference must run here.
    """
    gates = gates or Gates()
    images, labels = _check_inputs(images, labels)
    sizes = _check_batch_sizes(batch_sizes)
    settings = {"eval_batch_size": eval_batch_size or max(sizes), "warmup": warmup,
                "min_runs": min_runs, "min_seconds": min_seconds}
    gates.for_precision(reference.precision)  # unknown precisions fail before any work
    for cand in candidates:
        gates.for_precision(cand.precision)

    with _progress(progress, console) as bar:
        ref = _measure(reference, images, sizes, bar, **settings)
        ref_acc = accuracy(ref.logits, labels)
        rows = [_row(reference, ref, ref_acc, ref_acc["top1"], parity(ref.logits, ref.logits))]
        rows[0]["passed"], rows[0]["why"] = True, None
        for cand in candidates:
            try:
                got = _measure(cand, images, sizes, bar, **settings)
            except BackendUnavailable as err:
                rows.append(_skipped_row(cand, str(err)))
                continue
            row = _row(cand, got, accuracy(got.logits, labels), ref_acc["top1"],
                       parity(got.logits, ref.logits))
            row["passed"], row["why"] = _verdict(row, gates, ref_acc["top1"])
            rows.append(row)

    ran = [r for r in rows if r["passed"] is not None]
    return {
        "passed": all(r["passed"] for r in ran),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": {**(dataset or {}), "images": len(images)},
        "reference": {"artifact": reference.artifact_id, "backend": ref.backend,
                      "device": ref.device, "top1": ref_acc["top1"]},
        "gates": gates.to_dict(),
        "batch_sizes": sizes,
        "latency_settings": settings,
        "env": env_info(),  # versions, device and the CPU (int8 flags) the rows ran on
        "rows": rows,
    }


# -- running one candidate ---------------------------------------------------------------------
def _measure(cand: Candidate, images: np.ndarray, sizes: list[int], bar: Any, *,
             eval_batch_size: int, warmup: int, min_runs: int, min_seconds: float) -> _Measured:
    runner = cand.make_runner()
    with runner:
        meta = runner.input_metadata()
        if len(meta) != 1:
            raise ModelError(f"{cand.artifact_id} has {len(meta)} inputs: porter evaluates "
                             "single-input image classifiers only")
        name, dtype = meta[0].name, np.dtype(meta[0].dtype)
        logits_name = runner.logits_output()  # from the runner's output metadata, once
        label = f"{cand.artifact_id} ({runner.backend})"  # no [..]: rich reads it as markup
        task = bar.add_task(label, total=len(images)) if bar else None
        chunks = []
        for start in range(0, len(images), eval_batch_size):
            # One conversion per batch, to the runner's own input dtype (e.g. float16 graphs).
            batch = np.ascontiguousarray(images[start:start + eval_batch_size], dtype=dtype)
            chunks.append(np.asarray(runner.infer({name: batch})[logits_name], dtype=np.float32))
            if bar:
                bar.advance(task, len(batch))
        latency: dict[str, dict[str, float]] = {}
        phases: dict[str, dict[str, float]] = {}
        # A fixed-batch graph runs at its batch only: timed there, its row says so.
        fixed = getattr(runner, "fixed_batch", None)
        for size in [fixed] if fixed else sizes:
            if bar:
                bar.update(task, description=f"{label} latency @ batch {size}")
            picked = np.take(images, np.arange(size) % len(images), axis=0)
            feed = {name: np.ascontiguousarray(picked, dtype=dtype)}
            latency[str(size)] = measure_latency(runner, feed, warmup=warmup, min_runs=min_runs,
                                                 min_seconds=min_seconds)
            timed = runner.time_phases(feed, runs=min_runs)  # None: backend cannot split them
            if timed is not None:
                phases[str(size)] = timed
        if bar:
            bar.update(task, description=label)
        details = {**runner.details(), **({"fixed_batch": fixed} if fixed else {})}
        return _Measured(runner.backend, runner.device, np.concatenate(chunks), latency, phases,
                         details=details, timing=runner.timing_mode)


# -- rows --------------------------------------------------------------------------------------
def _verdict(row: dict[str, Any], gates: Gates, ref_top1: float) -> tuple[bool | None, str | None]:
    """The gate's verdict, except where the row measured the CPU rather than the model.

    An INT8 graph run on saturating int8 kernels (an x86 CPU without VNNI, forced onto ONNX
    Runtime's fast U8S8 kernels) understates what the same file computes on TensorRT or a VNNI
    CPU: failing the model for that would blame it for the CPU, passing it would prove nothing.
    """
    int8 = row.get("int8_cpu") or {}
    if int8.get("saturating"):
        return None, ("not gated: saturating int8 kernels on this CPU (rerun with "
                      "--int8-cpu-kernels auto, or export --int8-weights 7bit)")
    return check(row, gates, reference_top1=ref_top1)


def _note(cand: Candidate, got: _Measured) -> str | None:
    """The candidate's note for this device, plus how an INT8 graph ran on the CPU and why."""
    parts = [cand.notes.get(got.device)]
    if got.details.get("fixed_batch"):
        batch = got.details["fixed_batch"]
        parts.append(f"fixed batch {batch}: latency at batch {batch} only, short batches padded")
    int8 = got.details.get("int8_cpu")
    if int8:
        parts.append(f"{int8['kernels']} ({int8['why']})")
        if (int8.get("graph") or {}).get("why"):  # which graph ran (port.engines.int8_cpu_graph)
            parts.append(int8["graph"]["why"])
    text = "; ".join(p for p in parts if p)
    return text or None


def _row(cand: Candidate, got: _Measured, acc: dict[str, float], ref_top1: float,
         par: dict[str, float]) -> dict[str, Any]:
    return {
        "artifact": cand.artifact_id,
        "kind": cand.kind,
        "backend": got.backend,
        "device": got.device,
        "precision": cand.precision,
        "top1": acc["top1"],
        "top5": acc["top5"],
        "top1_drop_pp": (ref_top1 - acc["top1"]) * 100.0,
        "agreement": par["agreement"],
        "max_abs_diff": par["max_abs_diff"],
        "mean_abs_diff": par["mean_abs_diff"],
        "latency_ms": got.latency_ms,
        "throughput": {bs: int(bs) / (lat["mean"] / 1e3) for bs, lat in got.latency_ms.items()},
        "size_bytes": cand.artifact_bytes(),
        "passed": None,
        "why": None,
        "note": _note(cand, got),
        "phases_ms": got.phases_ms or None,
        "int8_cpu": got.details.get("int8_cpu"),
        "timing": got.timing,
    }


def _backend_of_kind(kind: str) -> str:
    """The backend a skipped row would have run on (from the format registry)."""
    fmt = format_for_kind(kind)
    return fmt.backend if fmt is not None else kind


def _skipped_row(cand: Candidate, reason: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
    row.update(artifact=cand.artifact_id, kind=cand.kind, precision=cand.precision,
               backend=cand.backend or _backend_of_kind(cand.kind),
               size_bytes=cand.artifact_bytes(), latency_ms={}, throughput={},
               passed=None, why=f"skipped: {reason}")
    return row


# -- checks and progress -----------------------------------------------------------------------
def _check_inputs(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or len(images) == 0:
        raise DataError(f"evaluate needs a non-empty NCHW image array, got shape {images.shape}: "
                        "preprocess the split with data.materialize")
    if labels.shape != (len(images),):
        raise DataError(f"{len(images)} images but labels of shape {labels.shape}: "
                        "pass one integer label per image")
    return np.ascontiguousarray(images, dtype=np.float32), labels.astype(np.int64)


def _check_batch_sizes(batch_sizes: Sequence[int]) -> list[int]:
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise UsageError(f"batch sizes {list(batch_sizes)} are invalid: pass positive integers, "
                         "e.g. --batch-sizes 1,32")
    return sizes


@contextmanager
def _progress(enabled: bool, console: Any) -> Iterator[Any]:
    """A rich progress bar with images/s (on stderr, so stdout stays clean for --json)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} img/s" if speed else "", style="cyan")

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  RateColumn(), TimeElapsedColumn(),
                  console=console or Console(stderr=True)) as bar:
        yield bar
