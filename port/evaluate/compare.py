"""Run the reference and every candidate on the same images; build the report (DESIGN.md schema).

One pass over the data (:func:`evaluate_stream`): every runner is open at once and each batch,
preprocessed once by the caller's source (:mod:`port.data.stream`, or arrays), is fed to every
row before the next batch is read; only per-image logits are kept, so memory does not grow with
the number of images. Each runner sees the same float32 NCHW batches, converted to its input
dtype once per batch, outside any timing; latency is measured after the pass. A candidate whose
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
from typing import Any, Protocol

import numpy as np

from port.engines.base import Runner
from port.evaluate.accuracy import accuracy
from port.evaluate.latency import measure_latency
from port.evaluate.parity import parity
from port.formats import compute_name, format_for_kind, gated_precision
from port.gates import Gates, check
from port.ground.errors import BackendUnavailable, DataError, ModelError, UsageError
from port.hostinfo import env_info

# report.json's schema: 2 keys rows (and outputs.npz) by (artifact, backend); 1 (before) had one
# row per artifact. porter gate reads both.
REPORT_SCHEMA = 2
ROW_FIELDS = (
    "row", "artifact", "kind", "backend", "device", "precision", "compute_precision", "gated_as",
    "top1", "top5", "top1_drop_pp",
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
    backend: str | None = None  # the backend it runs on (port.formats.BACKENDS); None: the kind's
    # How the artifact really ran on a given device, when that is not obvious from the row
    # (e.g. an FP16 graph on ONNX Runtime's CPU provider computes in FP32): device -> note.
    notes: dict[str, str] = field(default_factory=dict)
    # What it computes in on a device when the runner cannot say and it is not the file's
    # precision (that same FP16 graph: "fp32"): device -> precision name.
    computes: dict[str, str] = field(default_factory=dict)

    @property
    def backend_name(self) -> str:
        """The backend this row runs on: the given one, else the format's default."""
        return self.backend or _backend_of_kind(self.kind)

    @property
    def row_id(self) -> str:
        """The row's key in report.json and outputs.npz: ``artifact@backend``."""
        return row_id(self.artifact_id, self.backend_name)

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
    """Score ``reference`` and ``candidates`` on in-memory ``images``/``labels``; the report dict.

    ``images`` is float32 NCHW (already preprocessed), ``labels`` int class indices: streamed as
    slices through :func:`evaluate_stream` (same numbers; see there for the rest).
    """
    images, labels = _check_inputs(images, labels)
    report, _ = evaluate_stream(
        reference, candidates, ArrayChunks(images, labels), batch_sizes, gates, dataset=dataset,
        progress=progress, eval_batch_size=eval_batch_size, warmup=warmup, min_runs=min_runs,
        min_seconds=min_seconds, console=console)
    return report


class ChunkSource(Protocol):
    """What :func:`evaluate_stream` reads: a length and, per pass, ``(images, labels)`` chunks.

    ``images`` float32 NCHW (preprocessed), ``labels`` int64; chunks may have any sizes (e.g.
    :class:`port.data.stream.ImageStream`). A source may write the next chunk into the array of
    the previous one (``ImageStream.recycle``): evaluate_stream holds nothing of a chunk, other
    than copies, once it asks for the next.
    """

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


@dataclass
class ArrayChunks:
    """In-memory preprocessed arrays as a :class:`ChunkSource` (one chunk: nothing is copied)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield self.images, self.labels


def row_id(artifact: str, backend: str) -> str:
    """The key of one (artifact, backend) row: ``onnx-int8@openvino``."""
    return f"{artifact}@{backend}"


@dataclass
class Outputs:
    """What every row computed, per image: the labels and each row's float32 logits (by
    :func:`row_id`)."""

    labels: np.ndarray
    logits: dict[str, np.ndarray]


def evaluate_stream(
    reference: Candidate,
    candidates: Sequence[Candidate],
    source: ChunkSource,
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
) -> tuple[dict[str, Any], Outputs]:
    """Score every row in one pass over ``source``; return the report dict and the outputs.

    Every runner is opened first (a candidate whose backend is not here gets a skipped row; the
    reference must run), then each chunk is cut into batches of ``eval_batch_size`` (default: the
    largest of ``batch_sizes``; the last batch may be smaller) and every batch is fed to every
    row before the next is read. Batches are formed across chunk boundaries, so the logits do not
    depend on how the source chunks the data. Only the per-image logits are kept, plus the first
    images for latency, which is measured per row and batch size after the pass (repeating the
    images when there are fewer than a batch). ``dataset`` (spec, split, ...) is copied into the
    report with ``images`` set to the count.
    """
    gates = gates or Gates()
    sizes = _check_batch_sizes(batch_sizes)
    settings = {"eval_batch_size": eval_batch_size or max(sizes), "warmup": warmup,
                "min_runs": min_runs, "min_seconds": min_seconds}
    gates.for_precision(reference.precision)  # unknown precisions fail before any work
    for cand in candidates:
        gates.for_precision(cand.precision)
    ids = [c.row_id for c in (reference, *candidates)]
    if len(set(ids)) != len(ids):  # a caller's bug: two rows would share one outputs.npz key
        raise UsageError(f"evaluate was given the same (artifact, backend) row twice: {ids}")
    if len(source) == 0:
        raise DataError("evaluate needs at least one image: the data set or --limit gave none")

    rows: list[_Row] = []
    try:
        ref_row = _Row.open(reference)  # BackendUnavailable propagates: the reference must run
        rows.append(ref_row)
        for cand in candidates:
            try:
                rows.append(_Row.open(cand))
            except BackendUnavailable as err:
                rows.append(_Row(cand, skipped=str(err)))
        with _progress(progress, console) as bar:
            labels = _accuracy_pass(rows, source, settings["eval_batch_size"],
                                    _needed_images(rows, sizes), bar)
            for row in rows:
                row.time(sizes, bar, warmup=warmup, min_runs=min_runs, min_seconds=min_seconds)
            if bar:
                bar.update(bar.task_ids[0], description=_labels(rows))
    finally:
        for row in rows:
            row.close()

    if ref_row.skipped:
        raise BackendUnavailable(ref_row.skipped)  # the reference stopped running mid-way
    ref = ref_row.measured()
    ref_acc = accuracy(ref.logits, labels)
    report_rows = [_row(reference, ref, ref_acc, ref_acc["top1"], parity(ref.logits, ref.logits))]
    report_rows[0]["passed"], report_rows[0]["why"] = True, None
    outputs = Outputs(labels=labels, logits={reference.row_id: ref.logits})
    for row in rows[1:]:
        if row.skipped:
            report_rows.append(_skipped_row(row.cand, row.skipped))
            continue
        got = row.measured()
        out = _row(row.cand, got, accuracy(got.logits, labels), ref_acc["top1"],
                   parity(got.logits, ref.logits))
        out["passed"], out["why"] = verdict(out, gates, ref_acc["top1"])
        report_rows.append(out)
        outputs.logits[row.cand.row_id] = got.logits

    ran = [r for r in report_rows if r["passed"] is not None]
    report = {
        "schema": REPORT_SCHEMA,
        "passed": all(r["passed"] for r in ran),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": {**(dataset or {}), "images": len(labels)},
        "reference": {"row": reference.row_id, "artifact": reference.artifact_id,
                      "backend": ref.backend, "device": ref.device, "top1": ref_acc["top1"]},
        "gates": gates.to_dict(),
        "batch_sizes": sizes,
        "latency_settings": settings,
        "env": env_info(),  # versions, device and the CPU (int8 flags) the rows ran on
        "rows": report_rows,
    }
    return report, outputs


# -- running the rows --------------------------------------------------------------------------
class _Row:
    """One candidate's open runner and what it has computed so far."""

    def __init__(self, cand: Candidate, runner: Runner | None = None, *,
                 skipped: str | None = None) -> None:
        self.cand, self.runner, self.skipped = cand, runner, skipped
        self.chunks: list[np.ndarray] = []
        self.latency: dict[str, dict[str, float]] = {}
        self.phases: dict[str, dict[str, float]] = {}
        self.name = self.logits_name = ""
        self.dtype = np.dtype(np.float32)
        self.fixed: int | None = None
        self.label = cand.artifact_id
        self.kept: np.ndarray | None = None  # the pass's first images, for latency
        self._closed = False

    @classmethod
    def open(cls, cand: Candidate) -> _Row:
        """Make and activate the candidate's runner; ``BackendUnavailable`` if it cannot run."""
        runner = cand.make_runner()
        runner.__enter__()
        row = cls(cand, runner)
        try:
            meta = runner.input_metadata()
            if len(meta) != 1:
                raise ModelError(f"{cand.artifact_id} has {len(meta)} inputs: porter evaluates "
                                 "single-input image classifiers only")
            row.name, row.dtype = meta[0].name, np.dtype(meta[0].dtype)
            row.logits_name = runner.logits_output()  # from the runner's output metadata, once
            # A fixed-batch graph runs at its batch only: timed there, its row says so.
            row.fixed = getattr(runner, "fixed_batch", None)
        except BaseException:
            row.close()
            raise
        row.label = f"{cand.artifact_id} ({cand.backend_name})"  # no [..]: rich reads markup
        return row

    @property
    def running(self) -> bool:
        return self.runner is not None and not self.skipped

    def infer(self, batch: np.ndarray) -> None:
        """Logits of one batch, kept as float32 (converted once to the runner's input dtype)."""
        assert self.runner is not None
        feed = {self.name: np.ascontiguousarray(batch, dtype=self.dtype)}
        out = self.runner.infer(feed)[self.logits_name]
        self.chunks.append(np.asarray(out, dtype=np.float32))

    def time(self, sizes: list[int], bar: Any, *, warmup: int, min_runs: int,
             min_seconds: float) -> None:
        """Latency (and device phases where the backend splits them) per batch size."""
        if not self.running:
            return
        runner = self.runner
        assert runner is not None and self.kept is not None
        try:
            for size in [self.fixed] if self.fixed else sizes:
                if bar:
                    bar.update(bar.task_ids[0],
                               description=f"{self.label} latency @ batch {size}")
                picked = np.take(self.kept, np.arange(size) % len(self.kept), axis=0)
                feed = {self.name: np.ascontiguousarray(picked, dtype=self.dtype)}
                # Timed on inputs already in the backend's format (README): an adapted runner
                # converts once here, not in every timed run.
                form = getattr(runner, "timed_form", None)
                timed_runner, timed_feed = form(feed) if form else (runner, feed)
                self.latency[str(size)] = measure_latency(
                    timed_runner, timed_feed, warmup=warmup, min_runs=min_runs,
                    min_seconds=min_seconds)
                timed = runner.time_phases(feed, runs=min_runs)  # None: cannot split them
                if timed is not None:
                    self.phases[str(size)] = timed
        except BackendUnavailable as err:
            self.skip(str(err))

    def skip(self, reason: str) -> None:
        """The backend gave up part-way (e.g. a device that went away): a skipped row."""
        self.skipped = reason
        self.chunks.clear()
        self.close()

    def measured(self) -> _Measured:
        runner = self.runner
        assert runner is not None
        details = {**runner.details(), **({"fixed_batch": self.fixed} if self.fixed else {})}
        return _Measured(runner.backend, runner.device, np.concatenate(self.chunks),
                         self.latency, self.phases, details=details, timing=runner.timing_mode)

    def close(self) -> None:
        """Deactivate the runner (idempotent); its details stay readable."""
        if self.runner is not None and not self._closed:
            self._closed = True
            self.runner.__exit__(None, None, None)


def _needed_images(rows: list[_Row], sizes: list[int]) -> int:
    """How many of the first images latency needs: the largest batch any row is timed at."""
    return max([*sizes, *(r.fixed for r in rows if r.fixed)])


def _labels(rows: list[_Row]) -> str:
    return ", ".join(r.label for r in rows if r.running)


def _batch_groups(source: ChunkSource, size: int
                  ) -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
    """Per source chunk, the batches of exactly ``size`` images it completes (the very last
    batch may be smaller): batches are formed across chunk boundaries, whatever the chunking."""
    carry_x: list[np.ndarray] = []
    carry_y: list[np.ndarray] = []
    held = 0
    for images, labels in source:
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim != 4 or len(images) != len(labels):
            raise DataError(f"a chunk of {len(labels)} labels came with images of shape "
                            f"{images.shape}: the data source must yield NCHW batches")
        group = []
        start = 0
        if held:  # complete the batch left over from the previous chunk
            take = min(size - held, len(images))
            # Copied (under a batch): the source may reuse this chunk's array for the next one.
            carry_x.append(images[:take].copy())
            carry_y.append(labels[:take].copy())
            held += take
            start = take
            if held == size:
                group.append((np.concatenate(carry_x), np.concatenate(carry_y)))
                carry_x, carry_y, held = [], [], 0
        while len(images) - start >= size:
            group.append((images[start:start + size], labels[start:start + size]))
            start += size
        if start < len(images):  # copied, as above
            carry_x, carry_y = [images[start:].copy()], [labels[start:].copy()]
            held = len(images) - start
        if group:
            yield group
    if held:
        yield [(np.concatenate(carry_x), np.concatenate(carry_y))]


def _accuracy_pass(rows: list[_Row], source: ChunkSource, batch_size: int, keep: int,
                   bar: Any) -> np.ndarray:
    """Feed every batch of ``source`` to every running row; returns the labels in order.

    Each row runs all the batches of a chunk before the next row starts: switching between
    runtimes after every batch would leave one runtime's spinning thread pool (ONNX Runtime,
    OpenMP in torch) competing with the next one's for the cores. The first ``keep`` images are
    copied aside for the latency runs that follow.
    """
    total = len(source)
    task = bar.add_task(_labels(rows), total=total) if bar else None
    n_rows = sum(row.running for row in rows)
    labels: list[np.ndarray] = []
    kept: list[np.ndarray] = []
    n_kept = 0
    for group in _batch_groups(source, batch_size):
        batches = [np.ascontiguousarray(x, dtype=np.float32) for x, _ in group]
        for batch in batches:
            if n_kept < keep:
                kept.append(batch[:keep - n_kept].copy())
                n_kept += len(kept[-1])
        for row in rows:
            if not row.running:
                continue
            try:
                for batch in batches:
                    row.infer(batch)
                    if bar:  # a row's share of the batch: the bar counts images all rows ran
                        bar.advance(task, len(batch) / n_rows)
            except BackendUnavailable as err:
                if row is rows[0]:
                    raise
                row.skip(str(err))
        labels.extend(np.asarray(y, dtype=np.int64) for _, y in group)
    got = np.concatenate(labels) if labels else np.empty(0, dtype=np.int64)
    if len(got) != total:
        raise DataError(f"the data source gave {len(got)} images, not the {total} it announced")
    first = np.concatenate(kept)
    for row in rows:
        row.kept = first
    return got


# -- rows --------------------------------------------------------------------------------------
def verdict(row: dict[str, Any], gates: Gates, ref_top1: float) -> tuple[bool | None, str | None]:
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
    # What the backend computed in, as it said after compiling (OpenVINO's bf16 on a BF16 CPU;
    # a TensorRT engine's build precision); else what was measured at export for this device
    # (ONNX Runtime's CPU provider runs an FP16 graph in FP32); else what the file carries.
    computed = (compute_name(got.details.get("compute_precision"))
                or cand.computes.get(got.device) or cand.precision)
    return {
        "row": cand.row_id,
        "artifact": cand.artifact_id,
        "kind": cand.kind,
        "backend": cand.backend_name,
        "device": got.device,
        "precision": cand.precision,
        "compute_precision": computed,
        # The gate this row must pass: the looser of the file's precision and the arithmetic's.
        "gated_as": gated_precision(cand.precision, computed),
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
    row.update(row=cand.row_id, artifact=cand.artifact_id, kind=cand.kind,
               precision=cand.precision, backend=cand.backend_name,
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
