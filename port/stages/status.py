"""`porter status`: every artifact of a run with its state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from port.stages.common import open_run

STATE_STYLE = {"fresh": "green", "stale": "yellow", "modified": "red", "missing": "red"}


def status_rows(run: Path) -> list[dict[str, Any]]:
    """One dict per artifact: id, stage, kind, path, state, reason, created, sha256, parents."""
    manifest = open_run(run)
    rows = []
    for record, state in manifest.statuses():
        rows.append({
            "id": record.id,
            "stage": record.stage,
            "kind": record.kind,
            "path": record.path,
            "state": state.name,
            "reason": state.reason,
            "created": record.created,
            "sha256": record.sha256,
            "parents": [p["id"] for p in record.parents],
        })
    return rows


def status_table(run: Path, rows: list[dict[str, Any]]) -> Table:
    """A rich table of :func:`status_rows`."""
    table = Table(title=f"porter run {run}")
    for column in ("id", "stage", "kind", "path", "state", "made from", "note"):
        table.add_column(column)
    for row in rows:
        style = STATE_STYLE.get(row["state"], "")
        table.add_row(
            row["id"], row["stage"], row["kind"], row["path"],
            f"[{style}]{row['state']}[/{style}]", ", ".join(row["parents"]) or "-",
            row["reason"] or "",
        )
    return table
