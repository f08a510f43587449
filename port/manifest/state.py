"""The state solver under :mod:`port.manifest`: is each recorded artifact still what it was?

States (shown by ``porter status``): ``fresh``; ``modified`` (the file's hash differs from the
record); ``missing``; ``stale`` (a parent is not fresh, is no longer recorded, or was re-made
after the artifact). A solver works on one snapshot of the records and hashes each file at most
once, so ``porter status`` on a run with multi-GB engines reads every file exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from port.ground.digest import sha256_file
from port.manifest.store import Record

STATES = ("fresh", "modified", "missing", "stale")


@dataclass(frozen=True)
class State:
    """One artifact's state: ``name`` in fresh|modified|missing|stale, ``reason`` for humans."""

    name: str
    reason: str = ""

    @property
    def fresh(self) -> bool:
        """True when the artifact can be used as is."""
        return self.name == "fresh"


def remade(parent: Record, link: dict[str, str]) -> bool:
    """Whether ``parent`` was recorded again after the child that holds ``link`` was made."""
    if parent.sha256 != link["sha256"]:
        return True
    # Older manifests stored no parent timestamp; their hash check above is all there is.
    return "created" in link and parent.created != link["created"]


class StateSolver:
    """Computes states for one snapshot of the records, hashing each file at most once."""

    def __init__(self, run_dir: Path, records: list[Record]) -> None:
        self.run_dir = run_dir
        self.by_id = {r.id: r for r in records}
        self._own: dict[str, State] = {}
        self._full: dict[str, State] = {}

    def own_state(self, rec: Record) -> State:
        """fresh, modified or missing, from the file alone."""
        if rec.id not in self._own:
            file = self.run_dir / rec.path
            if not file.is_file():
                st = State("missing", f"{rec.path} does not exist")
            else:
                digest = sha256_file(file)
                st = (
                    self._companions_state(rec)
                    if digest == rec.sha256
                    else State("modified", f"{rec.path} changed since it was recorded "
                                           f"(sha256 {digest[:12]} != {rec.sha256[:12]})")
                )
            self._own[rec.id] = st
        return self._own[rec.id]

    def _companions_state(self, rec: Record) -> State:
        """The files recorded with an artifact (``metrics["files"]``: report.md, plots)."""
        files = (rec.metrics or {}).get("files")
        for rel, want in (files.items() if isinstance(files, dict) else ()):
            file = self.run_dir / str(rel)
            if not file.is_file():
                return State("modified", f"{rel}, recorded with {rec.path}, does not exist")
            if sha256_file(file) != want:
                return State("modified", f"{rel}, recorded with {rec.path}, changed since")
        return State("fresh")

    def state(self, id: str, _visiting: frozenset[str] = frozenset()) -> State:
        """The full state: the file's own state, else stale if any parent link no longer holds."""
        if id in self._full:
            return self._full[id]
        rec = self.by_id[id]
        st = self.own_state(rec)
        if st.fresh:
            st = self._parent_state(rec, _visiting | {id})
        self._full[id] = st
        return st

    def _parent_state(self, rec: Record, visiting: frozenset[str]) -> State:
        for link in rec.parents:
            pid = link["id"]
            parent = self.by_id.get(pid)
            if parent is None:
                return State("stale", f"parent '{pid}' is no longer recorded")
            if pid in visiting:  # only reachable by hand-edited manifests
                return State("stale", f"parent '{pid}' is part of a cycle")
            if remade(parent, link):
                return State("stale", f"parent '{pid}' was re-made after it")
            pst = self.state(pid, visiting)
            if not pst.fresh:
                return State("stale", f"parent '{pid}' is {pst.name}")
        return State("fresh")

    def root_cause(self, id: str) -> Record | None:
        """The deepest ancestor (or ``id`` itself) whose own problem makes ``id`` not fresh."""
        rec = self.by_id[id]
        seen: set[str] = set()
        while rec.id not in seen:
            seen.add(rec.id)
            if not self.own_state(rec).fresh:
                return rec
            nxt = None
            for link in rec.parents:
                parent = self.by_id.get(link["id"])
                if parent is None or remade(parent, link):
                    return rec  # the link itself is broken: re-making rec is the fix
                if not self.state(parent.id).fresh:
                    nxt = parent
                    break
            if nxt is None:
                return rec
            rec = nxt
        return rec
