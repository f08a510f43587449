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

from port.ground.errors import DataError, ManifestError, UsageError

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
    gate: tuple[str, ...] = ()  # --gate PRECISION.LIMIT=VALUE, applied after the aliases

    def overrides(self) -> dict[str, dict[str, float | None]]:
        """The thresholds asked for, checked (port.gates.gate_overrides)."""
        from port.gates import gate_overrides

        return gate_overrides({"--max-top1-drop": self.max_top1_drop,
                               "--min-agreement": self.min_agreement,
                               "--fp16-min-ratio": self.fp16_min_ratio,
                               "--int8-min-ratio": self.int8_min_ratio}, self.gate)


def row_key(report: dict[str, Any], row: dict[str, Any]) -> str:
    """A row's key in outputs.npz: ``artifact@backend`` (report schema 2), the artifact id in
    reports made before rows were per backend (schema 1)."""
    return row.get("row") or (row["artifact"] if report.get("schema", 1) < 2
                              else f"{row['artifact']}@{row['backend']}")


def run_gate(run: Path, req: GateRequest) -> dict[str, Any]:
    """The verdicts: ``{"passed", "run", "gates", "rows": [{row, artifact, backend, precision,
    gated_as, passed, why, top1, top1_drop_pp, agreement}]}``; ``passed`` is True when every
    row that ran passes. Every (artifact, backend) row is re-gated on its own logits."""
    from port.evaluate.accuracy import accuracy
    from port.evaluate.compare import verdict
    from port.evaluate.parity import parity

    overrides = req.overrides()  # thresholds checked before any file is read
    report_path, report = _read_report(run)
    labels, logits = _read_outputs(report_path.parent, report)
    gates = _gates(report, overrides)
    ref_id = report["reference"].get("row") or row_key(report, report["rows"][0])
    ref_acc = accuracy(logits[ref_id], labels)
    rows = []
    for row in report["rows"]:
        key = row_key(report, row)
        head = {"row": key, "artifact": row["artifact"], "backend": row.get("backend"),
                "precision": row["precision"],
                "gated_as": row.get("gated_as") or row["precision"]}
        if key not in logits:  # a skipped row: nothing ran, nothing to gate
            rows.append({**head, "passed": None, "why": row.get("why"), "top1": None,
                         "top1_drop_pp": None, "agreement": None})
            continue
        got = logits[key]
        acc = accuracy(got, labels)
        par = parity(got, logits[ref_id])
        fresh = {**row, "top1": acc["top1"], "top5": acc["top5"],
                 "top1_drop_pp": (ref_acc["top1"] - acc["top1"]) * 100.0, **par}
        _same_numbers(row, fresh, report_path)
        if key == ref_id:
            passed, why = True, None
        else:
            passed, why = verdict(fresh, gates, ref_acc["top1"])
        rows.append({**head, "passed": passed, "why": why, "top1": fresh["top1"],
                     "top1_drop_pp": fresh["top1_drop_pp"], "agreement": fresh["agreement"]})
    ran = [r for r in rows if r["passed"] is not None]
    return {"passed": all(r["passed"] for r in ran), "run": str(run),
            "report": str(report_path), "images": len(labels),
            "gates": gates.to_dict(), "rows": rows}


def _gates(report: dict[str, Any], overrides: dict[str, dict[str, float | None]]) -> Any:
    """The report's recorded gates with the command line's thresholds replacing theirs."""
    from port.gates import Gates

    try:
        gates = Gates().with_overrides(report.get("gates") or {})
    except UsageError as err:
        raise DataError(f"report.json records gates porter does not know ({err}): re-run "
                        "porter evaluate") from None
    return gates.with_overrides(overrides)


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
    from port.ground.digest import sha256_file

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
    ran = [row_key(report, r) for r in report["rows"] if r.get("top1") is not None]
    ref = report["reference"].get("row") or (ran[0] if ran else None)
    if sorted(ran) != sorted(logits) or ref not in logits:
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
            raise DataError(f"{report_path}: row {recorded.get('row') or recorded['artifact']} "
                            f"records {key} {was}, its "
                            f"saved logits give {now}: the files do not belong together; re-run "
                            "porter evaluate")


def gate_lines(result: dict[str, Any]) -> list[str]:
    """One plain line per row (its verdict and numbers), then the overall verdict."""
    lines = []
    for row in result["rows"]:
        if row["passed"] is None:
            lines.append(f"SKIP  {row['row']} ({_gated(row)}): {row['why']}")
            continue
        mark = "PASS" if row["passed"] else "FAIL"
        lines.append(f"{mark}  {row['row']} ({_gated(row)}): top-1 "
                     f"{row['top1']:.2%}, drop {row['top1_drop_pp']:.2f} pp, agreement "
                     f"{row['agreement']:.4f}" + (f": {row['why']}" if row["why"] else ""))
    verdict = "PASSED" if result["passed"] else "FAILED"
    lines.append(f"{verdict}: {result['images']} images re-gated from {result['report']} "
                 "(recorded report unchanged)")
    return lines


def _gated(row: dict[str, Any]) -> str:
    """``fp32`` or, for a row gated as another precision, ``fp32 gated as bf16``."""
    if row["gated_as"] == row["precision"]:
        return row["precision"]
    return f"{row['precision']} gated as {row['gated_as']}"
