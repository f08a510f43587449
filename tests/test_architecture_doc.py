"""docs/architecture.md names what the code has: every registry entry, report row field and
manifest record field, and no name the code has dropped."""

from __future__ import annotations

import dataclasses
import re

from port.evaluate.compare import ROW_FIELDS
from port.formats import BACKENDS, FORMATS
from port.manifest.store import Record
from tests.test_floors import _names, _table


def _first_cells(table: str) -> set[str]:
    return {name for cells in _table(table) for name in _names(cells[0])}


def test_the_registry_table_lists_every_format_and_backend() -> None:
    rows = [cells[0] for cells in _table("registry")]
    documented = {tuple(re.findall(r"^(format|backend) `([^`]+)`", r)[0]) for r in rows}
    code = {("format", n) for n in FORMATS} | {("backend", n) for n in BACKENDS}
    assert documented == code, (f"missing from docs/architecture.md: {sorted(code - documented)}; "
                                f"no longer in the code: {sorted(documented - code)}")
    kinds = {re.findall(r"`([^`]+)`", c[0])[0]: _names(c[1]) for c in _table("registry")
             if c[0].startswith("format")}
    assert {n: [f.kind] for n, f in FORMATS.items()} == kinds


def test_the_report_row_table_lists_every_row_field() -> None:
    assert _first_cells("row-fields") == set(ROW_FIELDS)


def test_the_record_table_lists_every_manifest_field() -> None:
    assert _first_cells("record-fields") == {f.name for f in dataclasses.fields(Record)}
