"""The layerwise comparison as a rich table and as a plot of error against depth."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from port.ground.atomic import atomic_path

if TYPE_CHECKING:
    from rich.console import Console


def _num(value: float | None, fmt: str = ".2e") -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "inf"
    return format(value, fmt)


def render_layerwise(payload: dict[str, Any]) -> Any:
    """A rich Table: one row per reference layer, the first divergence and top growth marked."""
    from rich.table import Table

    against = payload.get("against")
    title = (f"{payload['reference']['id']} vs {against}" if against else
             f"{payload['artifact']} ({payload['precision']}) vs {payload['reference']['id']}")
    table = Table(title=f"layerwise: {title}, {payload['dataset']['images']} images, "
                        f"tolerance {payload['tolerance']:g}")
    for column in ("#", "module", "tensor", "rel err", "max |d|", "mean |d|", "cosine",
                   "ref mean/std", "mean/std", "growth", ""):
        table.add_column(column, justify="left" if column in ("module", "tensor", "") else
                         "right", overflow="fold")
    first = payload.get("first_divergence")
    top = set(payload.get("top_growth") or [])
    for i, e in enumerate(payload["layers"]):
        name = e["module"] + (f" (= {', '.join(e['aliases'])})" if e.get("aliases") else "")
        if e.get("diverged") is None:
            table.add_row(str(i), name, e.get("onnx_tensor") or "-", "", "", "", "", "", "", "",
                          e.get("note") or "", style="dim")
            continue
        mark = []
        if e["module"] == first:
            mark.append("FIRST DIVERGENCE")
        elif e["diverged"]:
            mark.append("over")
        if e["module"] in top:
            mark.append("adds most")
        if e.get("nonfinite"):
            mark.append(f"{e['nonfinite']} inf/nan")
        style = "bold red" if e["module"] == first else ("red" if e["diverged"] else None)
        table.add_row(
            str(i), name, e.get("onnx_tensor") or "-", _num(e["rel_error"]),
            _num(e["max_abs_diff"]), _num(e["mean_abs_diff"]), _num(e["cosine"], ".6f"),
            f"{_num(e['ref_mean'], '.3g')}/{_num(e['ref_std'], '.3g')}",
            f"{_num(e['mean'], '.3g')}/{_num(e['std'], '.3g')}",
            _num(e.get("growth"), "+.1e"), ", ".join(mark), style=style)
    return table


def markdown_layerwise(payload: dict[str, Any]) -> str:
    """The compared rows as a Markdown table (what the README shows)."""
    lines = ["| # | module | rel err | max \\|d\\| | cosine | ref mean/std | mean/std | |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    first = payload.get("first_divergence")
    top = set(payload.get("top_growth") or [])
    for i, e in enumerate(payload["layers"]):
        name = e["module"] + (f" (= {', '.join(e['aliases'])})" if e.get("aliases") else "")
        if e.get("diverged") is None:
            lines.append(f"| {i} | {name} | | | | | | {e.get('note') or ''} |")
            continue
        mark = ("**first divergence**" if e["module"] == first else
                "over" if e["diverged"] else "")
        if e["module"] in top:
            mark = f"{mark}, adds most".lstrip(", ")
        lines.append(
            f"| {i} | {name} | {_num(e['rel_error'])} | {_num(e['max_abs_diff'])} | "
            f"{_num(e['cosine'], '.5f')} | {_num(e['ref_mean'], '.3g')}/"
            f"{_num(e['ref_std'], '.3g')} | {_num(e['mean'], '.3g')}/{_num(e['std'], '.3g')} | "
            f"{mark} |")
    return "\n".join(lines) + "\n"


def plot_layerwise(payload: dict[str, Any], path: Path) -> None:
    """Relative error (log) and 1 - cosine against depth; tolerance and first divergence marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [(i, e) for i, e in enumerate(payload["layers"]) if e.get("diverged") is not None]
    # A fixed layout: the constrained one measures every rotated tick label (seconds per plot).
    fig = Figure(figsize=(9, 5.2), dpi=110)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.93, bottom=0.24)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    finite = [(i, e["rel_error"]) for i, e in rows
              if e["rel_error"] is not None and math.isfinite(e["rel_error"])]
    floor = 1e-12  # an exact match would vanish from a log axis
    ax.plot([i for i, _ in finite], [max(v, floor) for _, v in finite], marker="o",
            markersize=3, label="relative L2 error")
    cos = [(i, 1.0 - e["cosine"]) for i, e in rows
           if e["cosine"] is not None and math.isfinite(e["cosine"])]
    ax.plot([i for i, _ in cos], [max(v, floor) for _, v in cos], marker=".", markersize=2,
            linewidth=0.8, alpha=0.7, label="1 - cosine")
    bad = [i for i, e in rows if e["rel_error"] is None or not math.isfinite(e["rel_error"])]
    top = max([v for _, v in finite] + [payload["tolerance"], floor]) * 10
    if bad:
        ax.scatter(bad, [top] * len(bad), marker="x", color="red", label="inf / NaN")
    ax.axhline(payload["tolerance"], linestyle="--", color="gray",
               label=f"tolerance {payload['tolerance']:g}")
    first = payload.get("first_divergence")
    if first is not None:
        index = next(i for i, e in rows if e["module"] == first)
        ax.axvline(index, color="red", alpha=0.4)
        ax.annotate(f"first divergence: {first}", (index, payload["tolerance"]), fontsize=8,
                    textcoords="offset points", xytext=(4, 8), color="red")
    ax.set_yscale("log")
    step = max(1, len(rows) // 30)
    ax.set_xticks([i for i, _ in rows][::step], [e["module"] for _, e in rows][::step],
                  rotation=75, fontsize=6)
    ax.set_xlabel("layer (execution order)")
    ax.set_ylabel("error against the reference")
    against = payload.get("against")
    ax.set_title(f"{payload['artifact']} vs {against or payload['reference']['id']}: "
                 "error by layer")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def print_layerwise(console: Console, payload: dict[str, Any], written: Path,
                    dumped: list[str], dump: Path | None) -> None:
    """The table, then one line each: unmatched tensors by reason, the first divergence (or
    none), the layers adding the most error, what was dumped and ``written`` (JSON + plot)."""
    console.print(render_layerwise(payload))
    if payload["unmatched"]:
        reasons: dict[str, int] = {}
        for u in payload["unmatched"]:
            reasons[u["reason"]] = reasons.get(u["reason"], 0) + 1
        console.print(f"{len(payload['unmatched'])} tensor(s)/file(s) with no reference "
                      "layer: " + "; ".join(f"{n} x {r}" for r, n in reasons.items()),
                      highlight=False, markup=False)
    first = payload["first_divergence"]
    if first is None:
        console.print(f"[green]no layer over the tolerance[/green] "
                      f"({payload['tolerance']:g}, relative L2 error)")
    else:
        entry = next(e for e in payload["layers"] if e["module"] == first)
        folded = f" (with {', '.join(entry['folded'])} folded into it)" if entry.get(
            "folded") else ""
        # No error value: none finite (an overflow), printed as inf.
        error = entry["rel_error"]
        console.print(f"[red]first divergence: {first}[/red]{folded}: relative error "
                      f"{_num(math.inf if error is None else error, '.3g')} > "
                      f"{payload['tolerance']:g}", highlight=False)
    if payload["top_growth"]:
        console.print("most error added by: " + ", ".join(payload["top_growth"]),
                      highlight=False)
    if dump is not None:
        console.print(f"dumped input.npy and {len(dumped)} layer(s) to {dump}/", highlight=False)
    console.print(f"written {written}.json and .png", highlight=False)
