"""`porter gate`: re-apply the accuracy gates to a recorded evaluation, running no model.

``porter evaluate`` saves every row's per-image logits in ``RUN/report/outputs.npz`` and that
file's sha256 in ``report.json``. This stage reads both, checks that they belong together (the
hash, the rows, the image count, and that the numbers recomputed from the logits are the ones the
report recorded), recomputes each row's top-1, drop and agreement from the saved logits and
applies the gates: the recorded ones, with the thresholds given on the command line replacing
theirs (as ``polygraphy check accuracy`` re-checks saved outputs). Nothing is written: the
recorded report stays what evaluate measured.

Exit codes (the CLI's): 0 every row that ran passes, 1 a gate failed, 2 bad input.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from port.errors import DataError, ManifestError, UsageError

REPORT_ID = "report"  # port.stages.evaluate.REPORT_ID (not imported: it pulls in rich)
# A recomputed number may differ from the recorded one by float rounding only.
_TOLERANCE = 1e-9


@dataclass
class GateRequest:
    """Flags of `porter gate` (``None`` keeps the threshold report.json recorded)."""

    max_top1_drop: float | None = None
    min_agreement: float | None = None
    fp16_min_ratio: float | None = None
    int8_min_ratio: float | None = None


def run_gate(run: Path, req: GateRequest) -> dict[str, Any]:
    """The verdicts: ``{"passed", "run", "gates", "rows": [{artifact, precision, passed, why,
    top1, top1_drop_pp, agreement}]}``; ``passed`` is True when every row that ran passes."""
    from port.evaluate.accuracy import accuracy
    from port.evaluate.compare import verdict
    from port.evaluate.parity import parity

    _check_flags(req)
    report_path, report = _read_report(run)
    labels, logits = _read_outputs(report_path.parent, report)
    gates = _gates(report, req)
    ref_id = report["reference"]["artifact"]
    ref_acc = accuracy(logits[ref_id], labels)
    rows = []
    for row in report["rows"]:
        if row["artifact"] not in logits:  # a skipped row: nothing ran, nothing to gate
            rows.append({"artifact": row["artifact"], "precision": row["precision"],
                         "passed": None, "why": row.get("why"), "top1": None,
                         "top1_drop_pp": None, "agreement": None})
            continue
        got = logits[row["artifact"]]
        acc = accuracy(got, labels)
        par = parity(got, logits[ref_id])
        fresh = {**row, "top1": acc["top1"], "top5": acc["top5"],
                 "top1_drop_pp": (ref_acc["top1"] - acc["top1"]) * 100.0, **par}
        _same_numbers(row, fresh, report_path)
        if row["artifact"] == ref_id:
            passed, why = True, None
        else:
            passed, why = verdict(fresh, gates, ref_acc["top1"])
        rows.append({"artifact": row["artifact"], "precision": row["precision"],
                     "passed": passed, "why": why, "top1": fresh["top1"],
                     "top1_drop_pp": fresh["top1_drop_pp"], "agreement": fresh["agreement"]})
    ran = [r for r in rows if r["passed"] is not None]
    return {"passed": all(r["passed"] for r in ran), "run": str(run),
            "report": str(report_path), "images": len(labels),
            "gates": gates.to_dict(), "rows": rows}


def _check_flags(req: GateRequest) -> None:
    """Thresholds in their ranges, before any file is read."""
    from port.evaluate.gates import check_gate_flags

    check_gate_flags(req.max_top1_drop, req.min_agreement, req.fp16_min_ratio,
                     req.int8_min_ratio)


def _gates(report: dict[str, Any], req: GateRequest) -> Any:
    """The report's recorded gates with the command line's thresholds replacing theirs."""
    from port.evaluate.gates import Gates

    try:
        gates = Gates().with_overrides(report.get("gates") or {})
    except UsageError as err:
        raise DataError(f"report.json records gates porter does not know ({err}): re-run "
                        "porter evaluate") from None
    wanted = {
        "fp32": {"max_top1_drop_pp": req.max_top1_drop, "min_agreement": req.min_agreement},
        "fp16": {"min_top1_ratio": req.fp16_min_ratio},
        "int8": {"min_top1_ratio": req.int8_min_ratio},
    }
    return gates.with_overrides({p: {k: v for k, v in limits.items() if v is not None}
                                 for p, limits in wanted.items()})


def _read_report(run: Path) -> tuple[Path, dict[str, Any]]:
    """report.json of the run's recorded evaluation; refuses a report edited since."""
    from port.stages.common import open_run

    run = Path(run)
    manifest = open_run(run)
    path = run / "report" / "report.json"
    if manifest.get(REPORT_ID) is None or not path.is_file():
        raise DataError(f"{run} has no recorded evaluation report: run porter evaluate --run "
                        f"{run} --compare first")
    state = manifest.state(REPORT_ID)
    if state.name in ("modified", "missing"):
        raise ManifestError(f"the evaluation report of {run} is {state.name}: {state.reason}; "
                            f"re-run porter evaluate --run {run} --compare")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(report["rows"], list) or not report["reference"]["artifact"]:
            raise ValueError("no rows or no reference")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path} is not a porter report ({err}): re-run porter evaluate") from None
    if not report.get("outputs"):
        raise DataError(f"{path} has no per-image outputs (made by an older porter): re-run "
                        f"porter evaluate --run {run} --compare to save report/outputs.npz")
    return path, report


def _read_outputs(report_dir: Path, report: dict[str, Any]
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """labels and logits per row from outputs.npz, checked against report.json."""
    from port.digest import sha256_file

    info = report["outputs"]
    path = report_dir / str(info.get("file", "outputs.npz"))
    fix = "re-run porter evaluate to save it again"
    if not path.is_file():
        raise DataError(f"{path} is missing: {fix}")
    if sha256_file(path) != info.get("sha256"):
        raise DataError(f"{path} is not the file report.json recorded (sha256 differs): {fix}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            labels = np.asarray(npz["labels"], dtype=np.int64)
            logits = {row: np.asarray(npz[f"logits/{row}"], dtype=np.float32)
                      for row in info["rows"]}
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{path} cannot be read ({err}): {fix}") from None
    ran = [r["artifact"] for r in report["rows"] if r.get("top1") is not None]
    if sorted(ran) != sorted(logits) or report["reference"]["artifact"] not in logits:
        raise DataError(f"{path} holds rows {sorted(logits)} but report.json rows that ran are "
                        f"{sorted(ran)}: {fix}")
    images = report.get("dataset", {}).get("images")
    for row, values in logits.items():
        if values.ndim != 2 or len(values) != len(labels) or len(labels) != images:
            raise DataError(f"{path}: {row} has logits of shape {values.shape} for "
                            f"{len(labels)} labels, report.json says {images} images: {fix}")
    return labels, logits


def _same_numbers(recorded: dict[str, Any], fresh: dict[str, Any], report_path: Path) -> None:
    """The recomputed top-1 and agreement must be the recorded ones, or the files disagree."""
    for key in ("top1", "agreement"):
        was, now = recorded.get(key), fresh[key]
        if was is None or not math.isclose(float(was), float(now), abs_tol=_TOLERANCE):
            raise DataError(f"{report_path}: row {recorded['artifact']} records {key} {was}, its "
                            f"saved logits give {now}: the files do not belong together; re-run "
                            "porter evaluate")


def gate_lines(result: dict[str, Any]) -> list[str]:
    """One plain line per row (its verdict and numbers), then the overall verdict."""
    lines = []
    for row in result["rows"]:
        if row["passed"] is None:
            lines.append(f"SKIP  {row['artifact']} ({row['precision']}): {row['why']}")
            continue
        mark = "PASS" if row["passed"] else "FAIL"
        lines.append(f"{mark}  {row['artifact']} ({row['precision']}): top-1 "
                     f"{row['top1']:.2%}, drop {row['top1_drop_pp']:.2f} pp, agreement "
                     f"{row['agreement']:.4f}" + (f": {row['why']}" if row["why"] else ""))
    verdict = "PASSED" if result["passed"] else "FAILED"
    lines.append(f"{verdict}: {result['images']} images re-gated from {result['report']} "
                 "(recorded report unchanged)")
    return lines
