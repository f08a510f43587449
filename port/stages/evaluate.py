"""`porter evaluate`: run the reference and every export on the same images; gate; record."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from port.formats import exported_kinds
from port.ground.errors import ManifestError
from port.ground.limits import MAX_BATCH, MAX_IMAGES, check_int
from port.ground.vocab import EVALUATE_BATCH_SIZES, MAX_WORKERS, REPORT_DIR, REPORT_ID
from port.manifest import Manifest, Record, run_lock
from port.manifest.params import ReportParams
from port.stages.common import (
    check_classes,
    check_eval_numbers,
    open_run,
    reference,
    reference_card,
    run_data,
)

_ORT_CPU = "CPUExecutionProvider"  # the ONNX Runtime device the FP16 exporter measured


@dataclass
class EvaluateRequest:
    """Flags of `porter evaluate`."""

    compare: bool = False
    data: str | None = None
    limit: int | None = None
    batch_sizes: tuple[int, ...] = EVALUATE_BATCH_SIZES
    max_top1_drop: float | None = None
    min_agreement: float | None = None
    fp16_min_ratio: float | None = None
    int8_min_ratio: float | None = None
    download: bool = False
    # The backends whose rows to make (port.formats.BACKENDS names; None: the default ones
    # installed here, see port.evaluate.plan).
    backends: tuple[str, ...] | None = None
    # Backend options by name (port.formats.backend_options(): int8_cpu_kernels, int8_cpu_graph,
    # openvino_device, ...); absent ones take the option's default.
    backend_options: dict[str, Any] = field(default_factory=dict)
    # --gate PRECISION.LIMIT=VALUE overrides (port.gates.parse_gate_overrides), applied
    # after the four alias flags above.
    gate: tuple[str, ...] = ()
    # Evaluate on data whose class names differ from the model's (same count): recorded.
    ignore_class_names: bool = False
    # Decoding processes (None: stream.default_workers(); 0: in this process).
    workers: int | None = None


def _gates(req: EvaluateRequest) -> Any:
    """Default gates with the user's overrides applied (aliases, then --gate)."""
    from port.gates import Gates, gate_overrides

    return Gates().with_overrides(gate_overrides(_gate_aliases(req), req.gate))


def _gate_aliases(req: EvaluateRequest) -> dict[str, float | None]:
    """The four alias flags' values (port.gates.GATE_ALIASES)."""
    return {"--max-top1-drop": req.max_top1_drop, "--min-agreement": req.min_agreement,
            "--fp16-min-ratio": req.fp16_min_ratio, "--int8-min-ratio": req.int8_min_ratio}


def _candidate(manifest: Manifest, record: Record, precision: str, backend: str,
               req: EvaluateRequest) -> Any:
    """An evaluate Candidate for ``record`` on ``backend``; its runner is made from the
    artifact's file only when the row runs."""
    from port import engines
    from port.engines.adapter import adapt
    from port.evaluate.compare import Candidate
    from port.formats import BACKENDS

    path = manifest.run_dir / record.path
    # The runner takes porter's canonical batch and feeds the graph what its card says (layout,
    # dtype, fixed batch, [N,C,1,1] output): an export carries the card it was made with, an
    # imported ONNX's card lives only in the manifest.
    card = reference_card(manifest, record) if record.typed_params.card else None
    notes, computes = {}, {}
    ort_cpu = (record.metrics or {}).get("ort_cpu") or {}
    if ort_cpu.get("how") and backend == "onnxruntime":  # the FP16 exporter measured how ORT's
        notes[_ORT_CPU] = ort_cpu["how"]  # CPU provider runs the graph: say so, compute in it
        if ort_cpu.get("fp16_compute_nodes") == 0:
            computes[_ORT_CPU] = "fp32"
        elif ort_cpu.get("fp32_fallback_nodes"):
            computes[_ORT_CPU] = "fp16+fp32"
    # The backend's own options only (the INT8 kernel choice concerns ONNX Runtime alone).
    kwargs = BACKENDS[backend].runner_kwargs(req.backend_options)
    return Candidate(
        artifact_id=record.id, precision=precision, kind=record.kind, path=path,
        size_bytes=_model_bytes(manifest, record), backend=backend,
        make_runner=lambda: adapt(engines.load(path, backend=backend, **kwargs), card),
        notes=notes, computes=computes,
    )


def _model_bytes(manifest: Manifest, record: Record) -> int:
    """The model's size on disk: its file, plus the external weight files an imported ONNX or
    an OpenVINO IR keeps beside it (its params' ``external_data``, relative to the model's
    folder; without them a 100 MB model would show as its few-kB graph)."""
    total = record.bytes
    folder = (manifest.run_dir / record.path).parent
    for rel in (record.params or {}).get("external_data") or []:
        data = folder / rel
        if data.is_file():
            total += data.stat().st_size
    return total


def _exports(manifest: Manifest, ref: Record) -> list[Record]:
    """Every export of the run, refusing ones that are no longer what their files say."""
    chosen = []
    for record in manifest.records():
        if record.kind not in exported_kinds() or record.id == ref.id:
            continue
        state = manifest.state(record.id)
        if state.name != "fresh":
            raise ManifestError(
                f"artifact '{record.id}' ({record.path}) is {state.name}: {state.reason}; "
                f"re-export it (porter export --run {manifest.run_dir} "
                f"--to {record.typed_params.to or record.kind} "
                f"--precision {record.typed_params.precision})"
            )
        chosen.append(record)
    return chosen


def run_evaluate(run: Path, req: EvaluateRequest, *, console: Console) -> bool:
    """Evaluate, write ``RUN/report/`` and record it; returns whether every gate passed."""
    from port.formats import normalize_backend_options, parse_backends

    # Names and choices are checked before the run is touched (the CLI did it already; an API
    # caller's request is held to the same rules).
    req.backend_options = normalize_backend_options(req.backend_options)
    if req.backends is not None:
        req.backends = parse_backends(",".join(req.backends))
    _check_flags(req)
    manifest = open_run(run)
    # Held from the first read to the record: the report's parents are the files its rows
    # measured, and no export can re-make one of them meanwhile (port.manifest.lock).
    with run_lock(run, "evaluate"):
        return _evaluate_locked(run, manifest, req, console=console)


def _rows(manifest: Manifest, ref: Record, req: EvaluateRequest, console: Console
          ) -> tuple[Any, list[Any], list[Record]]:
    """The reference candidate, one candidate per (artifact, backend) row
    (:func:`port.evaluate.plan.plan_rows`), and the export records they read."""
    from port import engines
    from port.evaluate.plan import Artifact, plan_rows

    # An imported INT8/FP16 ONNX is recorded as such (port.models.onnx_signature): its row and
    # gate say what it is; trained and state-dict references are FP32.
    ref_art = Artifact(ref.id, ref.kind, (ref.params or {}).get("precision") or "fp32")
    exports = _exports(manifest, ref) if req.compare else []
    if req.compare and not exports:
        console.print("[yellow]no exports in this run yet: only the reference is evaluated "
                      "(porter export --to onnx first)[/yellow]")
    plan = plan_rows(ref_art, [Artifact(r.id, r.kind, r.typed_params.precision) for r in exports],
                     compare=req.compare, chosen=req.backends, available=engines.available)
    for note in plan.notes:
        console.print(f"[yellow]{note}[/yellow]")
    records = {r.id: r for r in (ref, *exports)}

    def make(row: Any) -> Any:
        return _candidate(manifest, records[row.artifact.id], row.artifact.precision,
                          row.backend, req)

    return make(plan.reference), [make(row) for row in plan.candidates], exports


def _resolved_backend_options(req: EvaluateRequest) -> dict[str, Any]:
    """Every backend option's value this evaluation ran with (given, else its default)."""
    from port.formats import backend_options

    return {name: req.backend_options.get(name, option.default)
            for name, option in backend_options().items()}


def _check_flags(req: EvaluateRequest) -> None:
    """Gate values must be finite numbers in their range; counts in theirs (before any load)."""
    _gates(req)  # every gate value checked before any load
    check_int("--limit", req.limit, 1, MAX_IMAGES)
    check_int("--workers", req.workers, 0, MAX_WORKERS)
    for size in req.batch_sizes:
        check_int("--batch-sizes", size, 1, MAX_BATCH)


def _evaluate_locked(run: Path, manifest: Manifest, req: EvaluateRequest, *,
                     console: Console) -> bool:
    """:func:`run_evaluate` under the run lock."""
    from port.data.spec import parse_data_spec
    from port.data.stream import open_split
    from port.evaluate.compare import evaluate_stream
    from port.evaluate.plot_process import PlotProcess, ReadyAtEnd
    from port.evaluate.report import notes_lines, render_table, write_report

    ref = reference(manifest)
    card = reference_card(manifest, ref)
    spec_text = run_data(ref, req.data, "evaluation")
    spec = parse_data_spec(spec_text, download=req.download)
    # Listed without torch (an ONNX reference never needs it); read, decoded and preprocessed
    # chunk by chunk in worker processes, once for every row: memory is bounded by the chunk
    # size, not by the number of images.
    # evaluate_stream is done with a chunk when it asks for the next: one buffer serves them all.
    # Chunks hold whole batches of the size evaluate_stream runs (the largest timed size).
    stream = open_split(spec, "val", preprocess=card.preprocess, limit=req.limit, seed=0,
                        workers=req.workers, recycle=True, batch=max(req.batch_sizes))
    differ = check_classes(card, stream.classes or [], spec_text,
                           ignore_names=req.ignore_class_names, override="--ignore-class-names")
    if differ:  # only reached with --ignore-class-names: say what the numbers rest on
        console.print(f"[yellow]{differ} class names of the data differ from the model's "
                      "(--ignore-class-names): labels are matched by position[/yellow]")
    # What evaluate holds at once is the chunks in flight (one running, `prefetch` decoding
    # ahead, and a chunk's parts while they are joined), not the whole split.
    in_flight = min(len(stream), (stream.prefetch + 2) * stream.chunk_size)
    check_eval_numbers(None, req.batch_sizes, card, in_flight)

    reference_candidate, candidates, exports = _rows(manifest, ref, req, console)
    dataset = {"spec": str(spec), "split": "val", "images": len(stream),
               "limit": req.limit}
    # The plots' helper loads matplotlib beside the pass and is ready before latency is timed.
    plots = PlotProcess()
    try:
        report, outputs = evaluate_stream(reference_candidate, candidates,
                                          ReadyAtEnd(stream, plots),
                                          batch_sizes=req.batch_sizes, gates=_gates(req),
                                          dataset=dataset)
        out_dir = run / REPORT_DIR
        written = write_report(report, out_dir, outputs=outputs, plotter=plots)
    finally:
        plots.close()
    report_json = next(p for p in written if p.name == "report.json")
    manifest.record(
        "evaluate", "report", report_json, id=REPORT_ID,
        # The records read above: a parent re-made meanwhile is refused, never claimed.
        parents=[ref, *exports],
        # report.md, the plots and outputs.npz are covered by the record too (status: modified
        # if edited; porter gate refuses an edited outputs.npz).
        companions=[p for p in written if p != report_json],
        params=ReportParams(data=str(spec), limit=req.limit, batch_sizes=list(req.batch_sizes),
                            compare=req.compare,
                            extra={**_resolved_backend_options(req),
                                   "backends": list(req.backends) if req.backends else None,
                                   "ignore_class_names": req.ignore_class_names,
                                   "class_names_differ": differ}),
        metrics={"passed": report["passed"], "rows": len(report["rows"])},
    )
    console.print(render_table(report))
    for line in notes_lines(report):
        console.print(line.replace("`", ""), highlight=False)
    verdict = "[green]PASSED[/green]" if report["passed"] else "[red]FAILED[/red]"
    console.print(f"{verdict}: report in {out_dir}/ (report.json, report.md, plots, per-image "
                  "outputs.npz: re-gate with porter gate)")
    return bool(report["passed"])
