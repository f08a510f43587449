"""The run manifest: which artifacts exist, what they were made from, and whether they still hold.

``RUN/manifest.json`` holds one record per artifact (schema in DESIGN.md, "Manifest")::

    {"version": 1, "artifacts": [{"id": "model", "stage": "train", "kind": "checkpoint",
      "path": "model.pt", "sha256": "...", "bytes": 123, "parents": [{"id": ..., "sha256": ...}],
      "created": "2025-01-01T00:00:00.000Z", "params": {...}, "env": {...}, "metrics": {...}}]}

Stages never import each other; they meet here. A stage checks its inputs with
:meth:`Manifest.require_fresh` and registers its output with :meth:`Manifest.record`.

Every write is a read-modify-write under a file lock (``RUN/.manifest.lock``) that ends in an
atomic replace (temp file in the run dir, fsync, ``os.replace``, fsync of the dir): two porter
processes at once never lose each other's records, and a crash never leaves a half-written
manifest. Readers take no lock: they always see either the old or the new file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Any

from port.digest import sha256_file
from port.errors import ManifestError
from port.hostinfo import env_info

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".manifest.lock"
TMP_PREFIX = ".manifest.json."  # temp files of the atomic write; leftovers of a crash are swept
TMP_SUFFIX = ".tmp"
VERSION = 1
STAGES = ("train", "import", "export", "evaluate")
STATES = ("fresh", "modified", "missing", "stale")
LOCK_TIMEOUT_S = 120.0  # a record takes milliseconds; minutes means another porter is stuck

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# -- records --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    """One artifact as recorded.

    ``parents`` holds ``{"id", "sha256", "created"}`` dicts as they were at record time: a parent
    whose hash or creation time differs now was re-made after this artifact (even when the new
    file happens to be byte-identical, the artifact was not made from *that* recording).
    """

    id: str
    stage: str
    kind: str
    path: str  # POSIX path relative to the run directory
    sha256: str
    bytes: int
    parents: list[dict[str, str]] = field(default_factory=list)
    created: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, fields in the documented order."""
        return {
            "id": self.id,
            "stage": self.stage,
            "kind": self.kind,
            "path": self.path,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "parents": [dict(p) for p in self.parents],
            "created": self.created,
            "params": self.params,
            "env": self.env,
            "metrics": self.metrics,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        """Inverse of :meth:`to_dict`; raises KeyError/TypeError/ValueError when malformed."""
        return cls(
            id=str(d["id"]),
            stage=str(d["stage"]),
            kind=str(d["kind"]),
            path=str(d["path"]),
            sha256=str(d["sha256"]),
            bytes=int(d["bytes"]),
            parents=[
                {k: str(p[k]) for k in ("id", "sha256", "created") if k in p}
                for p in d.get("parents", [])
            ],
            created=str(d.get("created", "")),
            params=dict(d.get("params") or {}),
            env=dict(d.get("env") or {}),
            metrics=dict(d.get("metrics") or {}),
        )


@dataclass(frozen=True)
class State:
    """One artifact's state: ``name`` in fresh|modified|missing|stale, ``reason`` for humans."""

    name: str
    reason: str = ""

    @property
    def fresh(self) -> bool:
        """True when the artifact can be used as is."""
        return self.name == "fresh"


# -- the manifest -----------------------------------------------------------------------------
class Manifest:
    """The manifest of one run directory. Cheap to construct: nothing is read or created."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / MANIFEST_NAME
        self.lock_path = self.run_dir / LOCK_NAME

    def __repr__(self) -> str:
        return f"Manifest({str(self.run_dir)!r})"

    # -- reading ---------------------------------------------------------------------------
    def records(self, kind: str | None = None, stage: str | None = None) -> list[Record]:
        """All records in manifest order, optionally only those of one kind and/or stage."""
        return [
            r for r in self._load()
            if (kind is None or r.kind == kind) and (stage is None or r.stage == stage)
        ]

    def get(self, id: str) -> Record | None:
        """The record with this id, or None when the run has none."""
        return next((r for r in self._load() if r.id == id), None)

    def abspath(self, record: Record | str) -> Path:
        """Where a record's file lies (run dir joined with its relative path)."""
        rec = record if isinstance(record, Record) else self._require(record)
        return self.run_dir / rec.path

    # -- states ----------------------------------------------------------------------------
    def state(self, id: str) -> State:
        """The state of one artifact (``ManifestError`` if the id is not recorded)."""
        records = self._load()
        if not any(r.id == id for r in records):
            raise self._unknown(id, records)
        return _StateSolver(self.run_dir, records).state(id)

    def statuses(self) -> list[tuple[Record, State]]:
        """Every record with its state, in manifest order; each file is hashed once per call."""
        records = self._load()
        solver = _StateSolver(self.run_dir, records)
        return [(r, solver.state(r.id)) for r in records]

    def require_fresh(self, id: str) -> Record:
        """The record if its artifact is fresh, else a ``ManifestError`` naming it and the fix."""
        records = self._load()
        rec = next((r for r in records if r.id == id), None)
        if rec is None:
            raise self._unknown(id, records)
        solver = _StateSolver(self.run_dir, records)
        st = solver.state(id)
        if st.fresh:
            return rec
        # Fix the root first: the first modified/missing ancestor must be re-made before this one.
        root = solver.root_cause(id)
        fixes = [self.remake_hint(root)] if root is not None and root.id != id else []
        fixes.append(self.remake_hint(rec))
        raise ManifestError(
            f"artifact '{id}' ({rec.path}) is {st.name}: {st.reason}: re-make it with "
            + ", then ".join(dict.fromkeys(fixes))
        )

    def remake_hint(self, record: Record | str) -> str:
        """The command that (re)makes an artifact, e.g. ``porter export --run R --to onnx``."""
        rec = record if isinstance(record, Record) else self._require(record)
        run = str(self.run_dir)
        p = rec.params
        if rec.stage == "train":
            return f"`porter train --run {run}`"
        if rec.stage == "import":
            return f"`porter import {p.get('source', 'MODEL')} --run {run}`"
        if rec.stage == "export":
            to = p.get("to") or p.get("format") or ("trt" if rec.kind == "engine" else rec.kind)
            precision = f" --precision {p['precision']}" if p.get("precision") else ""
            return f"`porter export --run {run} --to {to}{precision}`"
        return f"`porter {rec.stage} --run {run}`"

    # -- writing ---------------------------------------------------------------------------
    def record(
        self,
        stage: str,
        kind: str,
        path: str | os.PathLike[str],
        *,
        id: str | None = None,
        parents: Iterable[str | Record] = (),
        params: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> Record:
        """Hash ``path`` and add (or replace, for an existing id) its record; returns the record.

        ``path`` may be absolute, relative to the current directory, or relative to the run
        directory; it must name an existing file inside the run directory. ``parents`` are ids
        (or records) already in the manifest; their recorded sha256 is stored with the link so
        a parent re-made later makes this artifact stale. Without ``id`` a record of the same
        path keeps its id, else the id is ``kind`` (``kind-2``, ``kind-3``... when taken).
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if not kind or not _ID_RE.match(kind):
            raise ValueError(f"kind must be a short identifier, got {kind!r}")
        if id is not None and not _ID_RE.match(id):
            raise ManifestError(
                f"artifact id {id!r} is not valid: use letters, digits, '.', '_' or '-' "
                "(at most 64 characters)"
            )
        file = self._resolve_artifact(path)
        rel = file.relative_to(self.run_dir.resolve()).as_posix()
        digest, size = _hash_stable(file)
        parent_ids = [p.id if isinstance(p, Record) else str(p) for p in parents]
        clean_params = _jsonable(params or {})
        clean_metrics = _jsonable(metrics or {})
        env = env_info()

        with self._locked():
            records = self._load()
            by_id = {r.id: r for r in records}
            new_id = id if id is not None else self._default_id(kind, rel, records)
            links = []
            for pid in dict.fromkeys(parent_ids):  # keep order, drop repeats
                if pid not in by_id:
                    raise ManifestError(
                        f"parent artifact '{pid}' is not recorded in {self.path}: make it first"
                    )
                if pid == new_id:
                    raise ValueError(f"artifact '{new_id}' cannot be its own parent")
                links.append({"id": pid, "sha256": by_id[pid].sha256,
                              "created": by_id[pid].created})
            rec = Record(
                id=new_id, stage=stage, kind=kind, path=rel, sha256=digest, bytes=size,
                parents=links, created=_utc_now(), params=clean_params, env=env,
                metrics=clean_metrics,
            )
            if new_id in by_id:  # a re-made artifact keeps its place in the list
                records = [rec if r.id == new_id else r for r in records]
            else:
                records.append(rec)
            self._write(records)
        return rec

    # -- internals -------------------------------------------------------------------------
    def _resolve_artifact(self, path: str | os.PathLike[str]) -> Path:
        """The absolute path of an artifact file inside the run dir, or a ManifestError."""
        run = self.run_dir.resolve()
        given = Path(path)
        # A relative path is tried cwd-relative first (callers usually pass run_dir / "x"),
        # then run-relative ("x").
        candidates = [given] if given.is_absolute() else [Path.cwd() / given, self.run_dir / given]
        inside = [c.resolve() for c in candidates if _is_within(c.resolve(), run)]
        if not inside:
            raise ManifestError(
                f"{path} is outside the run directory {self.run_dir}: write artifacts inside the "
                "run directory before recording them"
            )
        for c in inside:
            if c.is_file():
                if c.name in (MANIFEST_NAME, LOCK_NAME):
                    raise ManifestError(f"{path} is porter's own bookkeeping, not an artifact")
                return c
        raise ManifestError(
            f"artifact file {path} does not exist (or is not a file): write it before recording it"
        )

    def _default_id(self, kind: str, rel: str, records: list[Record]) -> str:
        same_path = next((r for r in records if r.path == rel), None)
        if same_path is not None:  # re-recording the same file = re-made artifact, same id
            return same_path.id
        taken = {r.id for r in records}
        if kind not in taken:
            return kind
        n = 2
        while f"{kind}-{n}" in taken:
            n += 1
        return f"{kind}-{n}"

    def _require(self, id: str) -> Record:
        records = self._load()
        rec = next((r for r in records if r.id == id), None)
        if rec is None:
            raise self._unknown(id, records)
        return rec

    def _unknown(self, id: str, records: list[Record]) -> ManifestError:
        known = ", ".join(r.id for r in records) or "none"
        return ManifestError(
            f"no artifact '{id}' in {self.path} (recorded: {known}): make it with the stage that "
            "produces it (porter train/import/export/evaluate)"
        )

    def _load(self) -> list[Record]:
        """All records; empty for a run without a manifest. Corruption is reported, never fixed."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except UnicodeDecodeError as e:
            raise self._corrupt(f"is not UTF-8 text ({e.reason})") from e
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise self._corrupt(f"is not valid JSON (line {e.lineno}: {e.msg})") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("artifacts"), list):
            raise self._corrupt("has no 'artifacts' list")
        version = doc.get("version")
        if isinstance(version, int) and version > VERSION:
            raise ManifestError(
                f"{self.path} has version {version}, this porter reads up to {VERSION}: "
                "upgrade porter"
            )
        try:
            return [Record.from_dict(d) for d in doc["artifacts"]]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise self._corrupt(f"has a malformed record ({type(e).__name__}: {e})") from e

    def _corrupt(self, what: str) -> ManifestError:
        return ManifestError(
            f"{self.path} {what}: it is left untouched; restore it from a backup (or move it "
            "away and re-run the stages to rebuild it)"
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the run's manifest lock (OS-level, so a crashed holder releases it)."""
        from filelock import FileLock, Timeout

        if not self.run_dir.is_dir():
            raise ManifestError(f"run directory {self.run_dir} does not exist: create it first")
        lock = FileLock(str(self.lock_path), timeout=LOCK_TIMEOUT_S)
        try:
            lock.acquire()
        except Timeout as e:
            raise ManifestError(
                f"{self.lock_path} stayed locked for {LOCK_TIMEOUT_S:.0f} s: another porter "
                "process is writing this run; wait for it to finish and retry"
            ) from e
        try:
            self._sweep_temp_files()
            yield
        finally:
            lock.release()

    def _sweep_temp_files(self) -> None:
        # Under the lock no one else is writing, so any temp file is a crashed writer's leftover.
        for leftover in self.run_dir.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)

    def _write(self, records: list[Record]) -> None:
        """Atomically replace manifest.json: temp file in the same dir, fsync, rename, fsync dir."""
        doc = {"version": VERSION, "artifacts": [r.to_dict() for r in records]}
        text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
        fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=self.run_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # never leave our own half-written temp behind
            raise
        _fsync_dir(self.run_dir)


# -- states -----------------------------------------------------------------------------------
class _StateSolver:
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
                    State("fresh")
                    if digest == rec.sha256
                    else State("modified", f"{rec.path} changed since it was recorded "
                                           f"(sha256 {digest[:12]} != {rec.sha256[:12]})")
                )
            self._own[rec.id] = st
        return self._own[rec.id]

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
            if _remade(parent, link):
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
                if parent is None or _remade(parent, link):
                    return rec  # the link itself is broken: re-making rec is the fix
                if not self.state(parent.id).fresh:
                    nxt = parent
                    break
            if nxt is None:
                return rec
            rec = nxt
        return rec


# -- helpers ----------------------------------------------------------------------------------
def _remade(parent: Record, link: dict[str, str]) -> bool:
    """Whether ``parent`` was recorded again after the child that holds ``link`` was made."""
    if parent.sha256 != link["sha256"]:
        return True
    # Older manifests stored no parent timestamp; their hash check above is all there is.
    return "created" in link and parent.created != link["created"]


def _hash_stable(file: Path) -> tuple[str, int]:
    """sha256 and size, refusing a file that changes while it is hashed (still being written)."""
    before = file.stat()
    digest = sha256_file(file)
    after = file.stat()
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise ManifestError(
            f"{file} changed while it was being hashed: wait for the process writing it to finish"
        )
    return digest, after.st_size


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some filesystems refuse O_RDONLY fsync on dirs (fine).
    if sys.platform == "win32":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _jsonable(value: Any) -> Any:
    """Plain JSON data: paths -> str, numpy scalars/arrays -> Python, non-finite floats -> None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # strict JSON has no NaN/Infinity
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return _jsonable(value.tolist())
    raise TypeError(f"cannot store {type(value).__name__} in the manifest: {value!r}")
