"""`--keep-fp32 auto` (FP16) and `--exclude auto` (INT8): keep the worst layers in FP32, one step
at a time, until the precision's accuracy gate passes or the budget is spent.

The loop, and why it is built this way:

- **Start**: the layers the user named (and, for FP16, the layers the pre-flight says would
  overflow: without them the graph computes ``inf``) are converted and measured first.
- **Rank once** (``port.export.sensitivity.rank_layers``): the start model and the FP32 graph run
  side by side on real images (the training split, never the held-out ones) and every candidate
  layer is ranked by the error it adds. One pass ranks every layer; re-converting once per layer
  to rank them (the brute-force way) would cost a calibration per layer.
- **Greedy steps**: the next-worst layer is added to the FP32 set, the graph re-converted and
  re-measured on held-out validation images (top-1 against the labels, top-1 agreement with the
  FP32 ONNX, latency). A step is kept only when it improves the gate's metric (top-1; agreement
  breaks ties); otherwise it is dropped and recorded as dropped, so the model returned is never
  worse than the start and carries no FP32 layer that did not help.
- **Stop** when the gate passes, when ``--max-fp32-layers`` steps have been tried, or when no
  ranked layer is left. The best model found is written either way; the caller exits 1 when the
  gate was not reached (like a failed ``porter evaluate`` gate), after recording it.

The gate is the precision's default (``port.formats.PRECISIONS``, applied by
``port.gates.check``) measured against the FP32 ONNX on the same held-out images.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from port.export.sensitivity import LayerSensitivity, candidate_nodes, fp32_unit, rank_layers
from port.ground.atomic import atomic_path
from port.ground.errors import PorterError, UsageError, first_line

AUTO = "auto"
DEFAULT_MAX_FP32_LAYERS = 8  # steps tried: enough for a ResNet's sensitive stem/head layers
HELDOUT_IMAGES = 1000  # validation images each step is measured on (or the whole split)
SENSITIVITY_IMAGES = 64  # training images the ranking is measured on (one pass per graph)
EVAL_BATCH = 32  # batch of the held-out runs; its median time is the step's latency
# The flag that names FP32 layers, per precision.
FLAGS = {"fp16": "--keep-fp32", "int8": "--exclude"}

Converter = Callable[[Sequence[str], Path], dict[str, Any]]


@dataclass(frozen=True)
class AutoRequest:
    """What the user asked for: named FP32 nodes, whether to search, the step budget."""

    precision: str
    named: tuple[str, ...]  # nodes the user named (always kept in FP32)
    auto: bool
    max_layers: int


def parse_request(precision: str, options: dict[str, Any]) -> AutoRequest:
    """Read ``--keep-fp32``/``--exclude`` and ``--max-fp32-layers`` for ``precision``.

    Refusals (``UsageError``, exit 2): a negative budget, a budget without ``auto``. Node names
    are checked against the FP32 graph later (:func:`check_node_names`), when it exists.
    """
    flag = FLAGS.get(precision)
    key = {"fp16": "keep_fp32", "int8": "exclude"}.get(precision, "")
    values = [str(v).strip() for v in options.get(key) or [] if str(v).strip()]
    auto = any(v.lower() == AUTO for v in values)
    named = tuple(dict.fromkeys(v for v in values if v.lower() != AUTO))
    budget = options.get("max_fp32_layers")
    if budget is not None:
        if int(budget) < 0:
            raise UsageError(f"--max-fp32-layers {budget} is negative: give the number of layers "
                             "the automatic search may keep in FP32 (0 or more)")
        if not auto:
            raise UsageError(f"--max-fp32-layers only applies to the automatic search: add "
                             f"{flag} auto (or remove --max-fp32-layers)")
    return AutoRequest(precision, named, auto,
                       DEFAULT_MAX_FP32_LAYERS if budget is None else int(budget))


def check_node_names(model: onnx.ModelProto, names: Iterable[str], flag: str) -> list[str]:
    """``names`` when every one is a node of ``model`` (the FP32 graph), else one ``UsageError``."""
    wanted = list(dict.fromkeys(names))
    valid = [n.name for n in model.graph.node if n.name]
    unknown = [n for n in wanted if n not in set(valid)]
    if unknown:
        sample = ", ".join(valid[:3]) + (", ..." if len(valid) > 3 else "")
        raise UsageError(f"{flag} names unknown node(s) {', '.join(unknown[:5])}: use node names "
                         f"of the FP32 ONNX such as {sample} ({len(valid)} nodes; see them in "
                         f"Netron), or {flag} auto")
    return wanted


def fp16_required(fp32_onnx: Path, sample_images: np.ndarray | None,
                  named: Sequence[str]) -> list[str]:
    """Nodes FP16 cannot do without: those the pre-flight finds overflowing (and their readers,
    so the tensor stays FP32), beyond ``named``."""
    from port.export.fp16 import preflight_fp16

    findings = preflight_fp16(fp32_onnx, sample_images, keep_fp32=named)
    return list(dict.fromkeys(n for f in findings if f.kind == "overflow" and not f.kept_fp32
                              for n in f.keep if n not in named))


@dataclass
class Step:
    """One conversion of the search and what it measured on the held-out images."""

    step: int
    tried: str | None  # the layer this step added to the FP32 set (None: the start)
    fp32_nodes: list[str]
    top1: float
    agreement: float  # top-1 agreement with the FP32 ONNX
    latency_ms: float  # median time of one batch of EVAL_BATCH images (ORT CPU)
    gate_passed: bool
    accepted: bool
    why: str  # start | improved | dropped: ...

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for the manifest."""
        d = asdict(self)
        for k in ("top1", "agreement", "latency_ms"):
            d[k] = round(d[k], 6)
        return d


@dataclass
class AutofixResult:
    """The chosen FP32 layers, every step, why the search stopped, and the ranking used."""

    precision: str
    chosen: list[str]
    passed: bool
    stop_reason: str
    reference_top1: float
    images: int
    gate: dict[str, float | None]
    steps: list[Step] = field(default_factory=list)
    ranking: list[LayerSensitivity] = field(default_factory=list)
    convert_metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``metrics["autofix"]``."""
        return {
            "precision": self.precision, "chosen": self.chosen, "passed": self.passed,
            "stop_reason": self.stop_reason, "reference_top1": round(self.reference_top1, 6),
            "heldout_images": self.images, "gate": self.gate,
            "steps": [s.to_dict() for s in self.steps],
            "ranking": [r.to_dict() for r in self.ranking],
        }


class HeldoutCheck:
    """Top-1, agreement with the FP32 ONNX and latency of a graph on held-out images."""

    def __init__(self, fp32_onnx: Path, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels
        self.reference, _ = self._run(fp32_onnx)
        self.reference_top1 = float(np.mean(self.reference == labels))

    def _run(self, path: Path) -> tuple[np.ndarray, float]:
        from port.engines.adapter import adapt
        from port.engines.onnxrt import OnnxRuntimeRunner

        # The runner `porter evaluate` uses (same INT8 kernel choice), on the CPU provider, fed
        # the canonical batch in the graph's own form (layout, dtype, fixed batch).
        with adapt(OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"])) as runner:
            name = runner.input_metadata()[0].name
            out_name = runner.logits_output()
            preds, times = [], []
            for start in range(0, len(self.images), EVAL_BATCH):
                batch = self.images[start:start + EVAL_BATCH]
                t0 = time.perf_counter()
                logits = runner.infer({name: batch}, check_inputs=start == 0)[out_name]
                if len(batch) == EVAL_BATCH or not times:
                    times.append(time.perf_counter() - t0)
                preds.append(np.asarray(logits).argmax(1))
        return np.concatenate(preds), 1000 * statistics.median(times)

    def measure(self, path: Path) -> tuple[float, float, float]:
        """``(top1, agreement, latency_ms)`` of the graph at ``path``."""
        preds, latency = self._run(path)
        return (float(np.mean(preds == self.labels)), float(np.mean(preds == self.reference)),
                latency)


def gate_check(precision: str, top1: float, agreement: float,
               reference_top1: float) -> tuple[bool, str | None]:
    """The precision's default gate (``port.gates``) applied to one step."""
    from port.gates import Gates, check

    row = {"precision": precision, "top1": top1, "agreement": agreement,
           "top1_drop_pp": 100 * (reference_top1 - top1)}
    return check(row, Gates(), reference_top1=reference_top1)


def _improves(new: Step, best: Step) -> bool:
    # The gate's metric is top-1 (fp16/int8 gates are top-1 ratios); agreement breaks ties. A
    # step that changes neither is dropped: an FP32 layer that buys nothing only costs speed.
    return (new.top1, new.agreement) > (best.top1, best.agreement)


def run_autofix(
    request: AutoRequest,
    fp32_onnx: Path,
    out: Path,
    convert: Converter,
    *,
    start: Sequence[str],
    sensitivity_images: np.ndarray,
    heldout: HeldoutCheck,
    console: Any,
) -> AutofixResult:
    """Search for the FP32 layers that bring ``request.precision`` through its gate.

    ``convert(nodes, path)`` writes the converted graph with ``nodes`` in FP32 and returns its
    metrics. ``start`` are the layers kept from the beginning (named by the user or required).
    The best graph found is moved to ``out``; the result holds every step.
    """
    from rich.table import Table

    precision = request.precision
    fp32_model = onnx.load(str(fp32_onnx))
    gate = dict(_gate_limits(precision))
    result = AutofixResult(precision, list(start), False, "", heldout.reference_top1,
                           len(heldout.labels), gate)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".porter-autofix-") as tmp:

        def attempt(nodes: list[str], index: int, tried: str | None) -> tuple[Path, dict, Step]:
            path = Path(tmp) / f"step{index}.onnx"
            metrics = convert(nodes, path)
            top1, agreement, latency = heldout.measure(path)
            passed, _ = gate_check(precision, top1, agreement, heldout.reference_top1)
            step = Step(index, tried, list(nodes), top1, agreement, latency, passed, False, "")
            return path, metrics, step

        best_path, best_metrics, best = attempt(list(start), 0, None)
        best.accepted, best.why = True, "start"
        result.steps.append(best)
        _print_step(console, best, heldout.reference_top1)
        if best.gate_passed:
            result.stop_reason = "the gate passed without further FP32 layers"
        else:
            candidates = candidate_nodes(fp32_model, precision, exclude=start)
            result.ranking = rank_layers(fp32_onnx, best_path, sensitivity_images, candidates,
                                         precision)
            queue = [r.node for r in result.ranking if r.added > 0]
            while not best.gate_passed:
                tried = len(result.steps) - 1
                if tried >= request.max_layers:
                    result.stop_reason = (f"budget spent: {tried} step(s) tried "
                                          f"(--max-fp32-layers {request.max_layers})")
                    break
                if not queue:
                    result.stop_reason = "no ranked layer left to keep in FP32"
                    break
                node = queue.pop(0)
                if node in best.fp32_nodes:
                    continue  # already FP32 as part of a kept layer's unit
                unit = [n for n in fp32_unit(fp32_model, node, precision)
                        if n not in best.fp32_nodes]
                nodes = [*best.fp32_nodes, *unit]
                try:
                    path, metrics, step = attempt(nodes, tried + 1, node)
                except PorterError as exc:
                    # A set the converter refuses (e.g. a graph onnx.checker rejects) is a step
                    # that did not help: recorded, dropped, and the search goes on.
                    step = Step(tried + 1, node, nodes, 0.0, 0.0, 0.0, False, False,
                                f"dropped: conversion failed ({first_line(exc)})")
                    result.steps.append(step)
                    _print_step(console, step, heldout.reference_top1)
                    continue
                if _improves(step, best):
                    step.accepted, step.why = True, "improved"
                    best_path, best_metrics, best = path, metrics, step
                else:
                    step.why = ("dropped: top-1 fell" if step.top1 < best.top1 else
                                "dropped: no gain")
                result.steps.append(step)
                _print_step(console, step, heldout.reference_top1)
            else:
                result.stop_reason = "the gate passed"
        # Through port.ground.atomic like every artifact: fsynced, the user's file mode, and a crash
        # here leaves the previous file (or none), never half of the new one.
        with atomic_path(out) as target:
            shutil.copyfile(best_path, target)
    result.chosen = list(best.fp32_nodes)
    result.passed = best.gate_passed
    result.convert_metrics = best_metrics
    table = Table(title=f"{FLAGS[precision]} auto: {precision.upper()} steps on "
                        f"{result.images} held-out images (FP32 top-1 "
                        f"{heldout.reference_top1:.4f})")
    for column in ("step", "FP32 layer added", "top-1", "agreement", f"ms/batch {EVAL_BATCH}",
                   "gate", "kept"):
        table.add_column(column)
    for s in result.steps:
        table.add_row(str(s.step), s.tried or "(start)" + (f" {len(s.fp32_nodes)} named/required"
                                                         if s.fp32_nodes else ""),
                      f"{s.top1:.4f}", f"{s.agreement:.4f}", f"{s.latency_ms:.1f}",
                      "pass" if s.gate_passed else "fail", s.why)
    console.print(table)
    return result


def _gate_limits(precision: str) -> dict[str, float | None]:
    from port.formats import PRECISIONS

    return dict(PRECISIONS[precision].gate)


def _print_step(console: Any, step: Step, reference_top1: float) -> None:
    what = step.tried or "start"
    kept = f"{step.top1 / reference_top1:.2%}" if reference_top1 > 0 else "n/a"
    console.print(f"  step {step.step} ({what}): top-1 {step.top1:.4f} "
                  f"({kept} of FP32) agreement {step.agreement:.4f} "
                  f"{step.latency_ms:.1f} ms/batch{EVAL_BATCH} "
                  f"{'gate pass' if step.gate_passed else 'gate fail'}"
                  + ("" if step.step == 0 else f" -> {'kept' if step.accepted else step.why}"),
                  soft_wrap=True)
