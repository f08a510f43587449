"""Write an evaluation report: report.json (the contract), report.md, two plots; a rich table.

The JSON follows DESIGN.md "Evaluate report". Non-finite floats (an FP16 graph that overflowed)
are written as ``null`` because JSON has no NaN; the row's ``why`` says what happened. Plots use
matplotlib's object API with the Agg canvas, so no global backend is switched and no display is
needed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from port.ground.atomic import atomic_path, atomic_write_text
from port.ground.digest import sha256_file

if TYPE_CHECKING:
    from port.evaluate.compare import Outputs

REPORT_FILES = ("report.json", "report.md", "latency.png", "accuracy_vs_latency.png",
                "outputs.npz")
OUTPUTS_FILE = "outputs.npz"


class Plotter(Protocol):
    """Something that draws the two plots elsewhere (``plot_process.PlotProcess``)."""

    def request(self, report: dict[str, Any], latency: Path, scatter: Path) -> bool:
        """Ask for both plots; False if it cannot be asked."""
        ...

    def finish(self) -> bool:
        """Wait for them; whether both were written."""
        ...


def write_report(report: dict[str, Any], out_dir: str | Path, *,
                 outputs: Outputs | None = None, plotter: Plotter | None = None
                 ) -> list[Path]:
    """Write the report files into ``out_dir`` (created); returns their paths, JSON first.

    With ``outputs``, every row's per-image logits go to ``outputs.npz`` first and
    ``report["outputs"]`` records that file's sha256, rows and image count, so ``porter gate``
    can re-apply the gates to exactly these numbers later (:func:`write_outputs`).
    ``plotter``: a helper process that draws the two plots while the rest is written
    (:mod:`port.evaluate.plot_process`); if it cannot, they are drawn here.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    latency_png = out / "latency.png"
    scatter_png = out / "accuracy_vs_latency.png"
    asked = plotter is not None and plotter.request(report, latency_png, scatter_png)
    written_outputs = []
    if outputs is not None:
        npz = out / OUTPUTS_FILE
        report["outputs"] = write_outputs(outputs, npz)
        written_outputs.append(npz)
    json_path = out / "report.json"
    atomic_write_text(json_path, json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    md_path = out / "report.md"
    atomic_write_text(md_path, render_markdown(report))
    if not (asked and plotter is not None and plotter.finish()):
        plot_latency(report, latency_png)
        plot_accuracy_vs_latency(report, scatter_png)
    return [json_path, md_path, latency_png, scatter_png, *written_outputs]


# -- per-image outputs -------------------------------------------------------------------------
def write_outputs(outputs: Outputs, path: Path) -> dict[str, Any]:
    """``outputs.npz``: ``labels`` (int64) and, per row that ran, ``logits/<row>`` (float32
    images x classes) and ``predictions/<row>`` (int64 top-1 class), ``<row>`` being
    ``artifact@backend`` (report schema 2); returns its summary for
    report.json: ``{"file", "sha256", "rows", "images", "classes"}``.

    Plain arrays only (``np.load(..., allow_pickle=False)`` reads it), written atomically.
    """
    arrays: dict[str, np.ndarray] = {"labels": np.asarray(outputs.labels, dtype=np.int64)}
    for row, logits in outputs.logits.items():
        logits = np.asarray(logits, dtype=np.float32)
        arrays[f"logits/{row}"] = logits
        arrays[f"predictions/{row}"] = logits.argmax(axis=1).astype(np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    first = next(iter(outputs.logits.values()))
    return {"file": path.name, "sha256": sha256_file(path), "rows": list(outputs.logits),
            "images": len(outputs.labels), "classes": int(first.shape[1])}


# -- text --------------------------------------------------------------------------------------
def notes_lines(report: dict[str, Any]) -> list[str]:
    """Bullet lines for rows that ran in a way the table cannot show (notes, H2D/compute/D2H)."""
    lines = []
    for row in report["rows"]:
        label = f"`{row['artifact']}` ({row['backend']})"
        if row.get("note"):
            lines.append(f"- {label}: {row['note']}")
        for batch, ph in (row.get("phases_ms") or {}).items():
            lines.append(f"- {label} @ batch {batch}: H2D {ph.get('h2d_ms', 0):.3f} ms, compute "
                         f"{ph.get('compute_ms', 0):.3f} ms, D2H {ph.get('d2h_ms', 0):.3f} ms")
    return lines


def _machine_lines(report: dict[str, Any]) -> list[str]:
    """Where the rows ran: device and CPU with its int8 arithmetic (INT8 rows depend on it)."""
    env = report.get("env") or {}
    cpu = env.get("cpu") or {}
    if not cpu:
        return []
    flags = " ".join(cpu.get("flags") or []) or "none detected"
    return [f"Machine: {_md(env.get('device'))}; CPU {_md(cpu.get('model'))} ({_md(flags)}), "
            f"int8 {_md(cpu.get('int8'))}.", ""]


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: verdict, dataset, results table, latency detail, gate settings."""
    sizes = [str(b) for b in report.get("batch_sizes", [])] or _batch_keys(report)
    ref = report["reference"]
    ds = report.get("dataset", {})
    lines = [
        "# porter evaluation report",
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}**: every row that ran "
        f"{'passed its gate' if report['passed'] else 'must pass its gate; see `why`'}.",
        "",
        "## Dataset",
        "",
        *(f"- {k}: {_md(v)}" for k, v in ds.items()),
        "",
        f"Reference: `{ref['artifact']}` on {ref['backend']} ({ref['device']}), "
        f"top-1 {_pct(ref['top1'])}.",
        "",
        *_machine_lines(report),
        "## Results",
        "",
    ]
    head = ["artifact", "backend", "device", "precision", "top-1", "top-5", "drop (pp)",
            "agreement", "max abs diff", "mean abs diff",
            *(f"p50 ms @{b}" for b in sizes), *(f"img/s @{b}" for b in sizes), "size", "verdict"]
    lines += [_md_row(head), _md_row(["---"] * len(head))]
    for row in report["rows"]:
        lat, thr = row.get("latency_ms") or {}, row.get("throughput") or {}
        lines.append(_md_row([
            f"`{row['artifact']}`", row["backend"], row["device"] or "-", precision_text(row),
            _pct(row["top1"]), _pct(row["top5"]), _num(row["top1_drop_pp"], ".2f"),
            _num(row["agreement"], ".4f"), _num(row["max_abs_diff"], ".2e"),
            _num(row["mean_abs_diff"], ".2e"),
            *(_num(lat.get(b, {}).get("p50"), ".3f") for b in sizes),
            *(_num(thr.get(b), ",.0f") for b in sizes),
            _size(row["size_bytes"]), _verdict(row),
        ]))
    lines += ["", *notes_lines(report)]
    lines += ["", "## Latency (ms)", ""]
    settings = report.get("latency_settings")
    if settings:
        lines += [f"After {settings.get('warmup')} warm-up runs, at least "
                  f"{settings.get('min_runs')} timed runs and {settings.get('min_seconds')} s "
                  "per batch size; synchronised runs on batches already in memory.", ""]
    head = ["artifact", "backend", "batch", "p50", "p90", "p99", "mean", "img/s", "runs",
            "p50 over repeats", "p99 over repeats"]
    lines += [_md_row(head), _md_row(["---"] * len(head))]
    for row in report["rows"]:
        for b, lat in (row.get("latency_ms") or {}).items():
            lines.append(_md_row([f"`{row['artifact']}`", row["backend"], b,
                                  *(_num(lat[k], ".3f") for k in ("p50", "p90", "p99", "mean")),
                                  _num((row.get("throughput") or {}).get(b), ",.0f"),
                                  str(lat.get("runs", "-")), _range(lat.get("p50_range")),
                                  _range(lat.get("p99_range"))]))
    modes = {row["timing"] for row in report["rows"] if row.get("timing")}
    if modes:
        lines += ["", "What one timed run covers:", ""]
        lines += [f"- `{row['artifact']}` ({row['backend']}): {row['timing']}"
                  for row in report["rows"] if row.get("timing")]
    # One column per limit a gate has (port.gates.PrecisionGate's fields), so a new limit
    # shows here without an edit.
    from port.gates import LIMIT_LABELS

    lines += ["", "## Gates", "", _md_row(["precision", *LIMIT_LABELS.values()]),
              _md_row(["---"] * (1 + len(LIMIT_LABELS)))]
    for precision, gate in report.get("gates", {}).items():
        lines.append(_md_row([precision, *(_num(gate.get(k), "g") for k in LIMIT_LABELS)]))
    lines += ["", "`-` = not checked. fp32 must compute the same function; fp16/bf16/int8 must "
              "keep the stated fraction of the reference top-1 (MLPerf convention). A row is "
              "gated as the looser of its file's precision and what its backend computed in "
              "(`fp32→bf16`: the bf16 gate).", "",
              "![latency](latency.png)", "", "![accuracy vs latency](accuracy_vs_latency.png)", ""]
    return "\n".join(lines)


def render_table(report: dict[str, Any]) -> Any:
    """A ``rich.table.Table`` of the rows for the console."""
    from rich.table import Table

    sizes = [str(b) for b in report.get("batch_sizes", [])] or _batch_keys(report)
    verdict = "[green]PASSED[/green]" if report["passed"] else "[red]FAILED[/red]"
    ds = report.get("dataset", {})
    table = Table(title=f"porter evaluate: {verdict} ({ds.get('images', '?')} images"
                        f"{', ' + str(ds['spec']) if ds.get('spec') else ''})")
    for name in ("artifact", "backend", "device", "precision"):
        table.add_column(name)
    for name in ("top-1", "drop pp", "agree", "max|Δ|", *(f"p50 ms @{b}" for b in sizes),
                 f"img/s @{sizes[-1]}" if sizes else "img/s", "size"):
        table.add_column(name, justify="right")
    table.add_column("verdict")
    for row in report["rows"]:
        lat, thr = row.get("latency_ms") or {}, row.get("throughput") or {}
        if row["passed"] is None:
            mark = f"[yellow]{row['why']}[/yellow]"
        elif row["passed"]:
            mark = "[green]pass[/green]"
        else:
            mark = f"[red]FAIL[/red] {row['why'] or ''}"
        table.add_row(
            row["artifact"], row["backend"], row["device"] or "-", precision_text(row),
            _pct(row["top1"]), _num(row["top1_drop_pp"], "+.2f"), _num(row["agreement"], ".4f"),
            _num(row["max_abs_diff"], ".1e"), *(_num(lat.get(b, {}).get("p50"), ".2f")
                                                for b in sizes),
            _num(thr.get(sizes[-1]) if sizes else None, ",.0f"), _size(row["size_bytes"]), mark,
        )
    return table


# -- plots -------------------------------------------------------------------------------------
def plot_latency(report: dict[str, Any], path: Path) -> None:
    """p50 latency against batch size, one line per row that ran, log-log axes."""
    fig, ax = _figure()
    for row in _ran(report):
        points = sorted((int(b), v["p50"]) for b, v in row["latency_ms"].items())
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=_label(row))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    sizes = sorted({int(b) for r in _ran(report) for b in r["latency_ms"]})
    if sizes:
        ax.set_xticks(sizes, [str(b) for b in sizes])  # the measured batch sizes, not 2^k
        ax.minorticks_off()
    ax.set_xlabel("batch size")
    ax.set_ylabel("p50 latency per batch (ms)")
    ax.set_title("Latency vs batch size")
    ax.grid(True, which="both", alpha=0.3)
    if _ran(report):
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_accuracy_vs_latency(report: dict[str, Any], path: Path) -> None:
    """Top-1 accuracy against p50 latency at the largest batch size, one point per row."""
    fig, ax = _figure()
    sizes = [str(b) for b in report.get("batch_sizes", [])] or _batch_keys(report)
    largest = sizes[-1] if sizes else None
    for row in _ran(report):
        lat = row["latency_ms"].get(largest) if largest else None
        if lat is None or row["top1"] is None:
            continue
        ax.scatter([lat["p50"]], [row["top1"] * 100], s=60, label=_label(row))
        ax.annotate(row["artifact"], (lat["p50"], row["top1"] * 100), fontsize=8,
                    textcoords="offset points", xytext=(4, 4))
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter("{x:g}")
    ax.xaxis.set_minor_formatter("{x:g}")
    ax.set_xlabel(f"p50 latency at batch {largest} (ms)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Accuracy vs latency")
    ax.grid(True, which="both", alpha=0.3)
    if _ran(report):
        ax.legend(fontsize=8)
    _save(fig, path)


# -- helpers -----------------------------------------------------------------------------------
def _figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def json_safe(value: Any) -> Any:
    """A copy with NaN/inf floats replaced by None (JSON has no NaN); used by every report file."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _ran(report: dict[str, Any]) -> list[dict[str, Any]]:
    # Rows that measured something (a skipped row has no latency; a row that ran but was not
    # gated, e.g. saturating int8 kernels, still has its timings).
    return [r for r in report["rows"] if r.get("latency_ms")]


def _batch_keys(report: dict[str, Any]) -> list[str]:
    keys = {b for r in report["rows"] for b in (r.get("latency_ms") or {})}
    return sorted(keys, key=int)


def _range(pair: list[float] | None) -> str:
    """``[lo, hi]`` ms as text (``-`` when absent)."""
    return "-" if not pair else f"{pair[0]:.3f}-{pair[1]:.3f}"


def _label(row: dict[str, Any]) -> str:
    return f"{row['artifact']} [{row['backend']}, {precision_text(row)}]"


def precision_text(row: dict[str, Any]) -> str:
    """The file's precision, and what the backend computed in where that differs
    (``fp32→bf16``): a bf16 run is never shown as FP32."""
    computed = row.get("compute_precision")
    if not computed or computed == row["precision"]:
        return str(row["precision"])
    if computed.split("+")[0] == row["precision"]:  # int8+fp32: int8 kernels, the rest FP32
        return str(computed)
    return f"{row['precision']}→{computed}"


def _verdict(row: dict[str, Any]) -> str:
    if row["passed"] is None:
        return _md(row["why"] or "skipped")
    return "pass" if row["passed"] else f"**FAIL**: {_md(row['why'] or '')}"


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value * 100:.2f}%"


def _num(value: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    return format(value, fmt) if math.isfinite(value) else str(value)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _md(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
