"""Which (artifact, backend) rows one ``porter evaluate`` makes: pure, from the registry alone.

Every artifact runs on every backend of its format (``port.formats.Format.backends``) that is
chosen and can run it:

- the reference artifact on its format's first backend is *the* reference row, always first;
- without ``--backends``, a backend is chosen when its entry is a default one (opt-in entries
  such as ``openvino-bf16`` are not) and it is installed here; a format's first backend always
  gets its row, so an engine on a machine without TensorRT still shows as a skipped row, as
  before;
- with ``--backends``, exactly the named backends, installed or not (an absent one becomes a
  skipped row saying what to install);
- without ``--compare`` only the reference artifact is considered, and only on the backends
  ``--backends`` names (a plain ``porter evaluate`` is the reference's one row, as before).

torch-free and runner-free: ``available`` is passed in (``port.engines.available``), so the
rules are tested with made-up answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from port.formats import BACKENDS, FORMATS, format_for_kind
from port.ground.errors import UsageError


@dataclass(frozen=True)
class Artifact:
    """One artifact of the run as the plan sees it."""

    id: str
    kind: str
    precision: str


@dataclass(frozen=True)
class PlannedRow:
    """One row to run: the artifact and the backend it runs on."""

    artifact: Artifact
    backend: str


@dataclass(frozen=True)
class Plan:
    """The reference row, the candidate rows in order, and lines worth printing."""

    reference: PlannedRow
    candidates: tuple[PlannedRow, ...]
    notes: tuple[str, ...] = ()


def plan_rows(reference: Artifact, exports: Sequence[Artifact], *, compare: bool,
              chosen: Sequence[str] | None, available: Callable[[str], bool]) -> Plan:
    """The rows of one evaluation (see the module docstring for the rules); ``exports`` are
    ignored without ``compare``."""
    ref_format = format_for_kind(reference.kind)
    if ref_format is None or not ref_format.runnable:
        raise UsageError(f"the reference '{reference.id}' is a {reference.kind}, which porter "
                         "does not run: re-create the run with porter train or porter import")
    ref_row = PlannedRow(reference, ref_format.backend)
    unknown = [b for b in chosen or () if b not in BACKENDS]
    if unknown:
        raise UsageError(f"unknown backend(s) {', '.join(unknown)} for --backends: choose from "
                         f"{', '.join(BACKENDS)}")
    rows: list[PlannedRow] = []
    matched: set[str] = set()
    for artifact in (reference, *(exports if compare else ())):
        fmt = format_for_kind(artifact.kind)
        if fmt is None or not fmt.runnable:
            continue
        for backend in fmt.backends:
            row = PlannedRow(artifact, backend)
            if row == ref_row:
                matched.add(backend)
                continue
            if chosen is not None:
                wanted = backend in chosen
            else:
                entry = BACKENDS[backend]
                wanted = compare and (backend == fmt.backend
                                      or (entry.default and available(backend)))
            if wanted:
                rows.append(row)
                matched.add(backend)
    notes = tuple(f"--backends {b}: no artifact of this run runs on it (it runs "
                  f"{_suffixes(b)} files)" for b in chosen or () if b not in matched)
    return Plan(ref_row, tuple(rows), notes)


def _suffixes(backend: str) -> str:
    """The file suffixes a backend runs, for a note."""
    return ", ".join(s for f in FORMATS.values() if backend in f.backends for s in f.suffixes)
