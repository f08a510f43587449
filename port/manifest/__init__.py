"""The run manifest: which artifacts exist, what they were made from, and whether they still hold.

Stages never import each other; they meet here. A stage checks its inputs with
:meth:`Manifest.require_fresh` and registers its output with :meth:`Manifest.record`.

:class:`Manifest` is the public face of three modules with one job each: this one turns a file
into a record (validation, hashing, ids, parent links, JSON-safe params);
:mod:`port.manifest.store` reads and writes ``RUN/manifest.json`` (file format, lock, atomic
replace); :mod:`port.manifest.state` says whether each artifact is fresh, modified, missing or
stale.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path, PurePath
from typing import Any

from port.ground.digest import sha256_file
from port.ground.errors import ManifestError
from port.hostinfo import env_info
from port.manifest.lock import RUN_LOCK_NAME, run_lock
from port.manifest.params import Params
from port.manifest.state import STATES, State, StateSolver
from port.manifest.store import LOCK_NAME, MANIFEST_NAME, Record, RecordStore

__all__ = [
    "LOCK_NAME", "MANIFEST_NAME", "RUN_LOCK_NAME", "STAGES", "STATES", "Manifest", "Record",
    "State", "env_info", "run_lock", "sha256_file",
]

STAGES = ("train", "import", "export", "evaluate")

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# -- the manifest -----------------------------------------------------------------------------
class Manifest:
    """The manifest of one run directory. Cheap to construct: nothing is read or created."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self._store = RecordStore(self.run_dir)
        self.path = self._store.path
        self.lock_path = self._store.lock_path

    def __repr__(self) -> str:
        return f"Manifest({str(self.run_dir)!r})"

    # -- reading ---------------------------------------------------------------------------
    def records(self, kind: str | None = None, stage: str | None = None) -> list[Record]:
        """All records in manifest order, optionally only those of one kind and/or stage."""
        return [
            r for r in self._store.load()
            if (kind is None or r.kind == kind) and (stage is None or r.stage == stage)
        ]

    def get(self, id: str) -> Record | None:
        """The record with this id, or None when the run has none."""
        return next((r for r in self._store.load() if r.id == id), None)

    def abspath(self, record: Record | str) -> Path:
        """Where a record's file lies (run dir joined with its relative path)."""
        rec = record if isinstance(record, Record) else self._require(record)
        return self.run_dir / rec.path

    # -- states ----------------------------------------------------------------------------
    def state(self, id: str) -> State:
        """The state of one artifact (``ManifestError`` if the id is not recorded)."""
        records = self._store.load()
        if not any(r.id == id for r in records):
            raise self._unknown(id, records)
        return StateSolver(self.run_dir, records).state(id)

    def statuses(self) -> list[tuple[Record, State]]:
        """Every record with its state, in manifest order; each file is hashed once per call."""
        records = self._store.load()
        solver = StateSolver(self.run_dir, records)
        return [(r, solver.state(r.id)) for r in records]

    def require_fresh(self, id: str) -> Record:
        """The record if its artifact is fresh, else a ``ManifestError`` naming it and the fix."""
        records = self._store.load()
        rec = next((r for r in records if r.id == id), None)
        if rec is None:
            raise self._unknown(id, records)
        solver = StateSolver(self.run_dir, records)
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
        if rec.kind == "layerwise":  # port.stages.layerwise: the artifact id, or the file
            what = p.get("artifact_path") or p.get("layerwise") or "ARTIFACT"
            against = f" --against {p['against']}" if p.get("against") else ""
            return f"`porter evaluate --run {run} --layerwise {what}{against}`"
        if rec.stage == "export" and rec.kind == "weights":  # port.stages.weights
            return f"`porter weights export --run {run}`"
        if rec.stage == "export":
            to = p.get("to") or p.get("format") or rec.kind  # every export records its --to
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
        params: dict[str, Any] | Params | None = None,
        metrics: dict[str, Any] | None = None,
        companions: Iterable[str | os.PathLike[str]] = (),
    ) -> Record:
        """Hash ``path`` and add (or replace, for an existing id) its record; returns the record.

        ``path`` may be absolute, relative to the current directory, or relative to the run
        directory; it must name an existing file inside the run directory. ``parents`` are ids
        (or records) already in the manifest; their recorded sha256 is stored with the link so
        a parent re-made later makes this artifact stale. Without ``id`` a record of the same
        path keeps its id, else the id is ``kind`` (``kind-2``, ``kind-3``... when taken).

        ``companions`` are the other files the stage wrote with this one (a report's Markdown
        and plots): each is hashed into ``metrics["files"]`` (run-relative path -> sha256) and
        the record is ``modified`` when one of them changes or disappears.
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
        # A parent given as a Record is the version this command read: it is checked against
        # the manifest under the lock, so a parent re-made meanwhile is never claimed.
        read = {p.id: p for p in parents if isinstance(p, Record)}
        parent_ids = [p.id if isinstance(p, Record) else str(p) for p in parents]
        covered = self._cover(companions, metrics)
        if isinstance(params, Params):
            params = params.to_dict()
        clean_params = _jsonable(params or {})
        clean_metrics = _jsonable({**(metrics or {}), **covered})
        env = env_info()

        with self._store.locked():
            records = self._store.load()
            by_id = {r.id: r for r in records}
            new_id = id if id is not None else self._default_id(kind, rel, records)
            rec = Record(
                id=new_id, stage=stage, kind=kind, path=rel, sha256=digest, bytes=size,
                parents=self._links(new_id, parent_ids, by_id, read), created=_utc_now(),
                params=clean_params, env=env,
                metrics=clean_metrics,
            )
            if new_id in by_id:  # a re-made artifact keeps its place in the list
                records = [rec if r.id == new_id else r for r in records]
            else:
                records.append(rec)
            self._store.save(records)
        return rec

    # -- internals -------------------------------------------------------------------------
    def _links(
        self, new_id: str, parent_ids: list[str], by_id: dict[str, Record],
        read: dict[str, Record],
    ) -> list[dict[str, str]]:
        """Parent links as stored: each parent's id, sha256 and creation time.

        For a parent passed as a :class:`Record` (the version the command read), the manifest
        must still hold that very version: otherwise the parent was re-made while this command
        ran and the new artifact was made from a file that is no longer recorded.
        """
        links = []
        for pid in dict.fromkeys(parent_ids):  # keep order, drop repeats
            if pid not in by_id:
                raise ManifestError(
                    f"parent artifact '{pid}' is not recorded in {self.path}: make it first"
                )
            if pid == new_id:
                raise ValueError(f"artifact '{new_id}' cannot be its own parent")
            now = by_id[pid]
            was = read.get(pid)
            if was is not None and (was.sha256, was.created) != (now.sha256, now.created):
                raise ManifestError(
                    f"'{pid}' ({now.path}) was re-made while this command ran from the earlier "
                    f"one: '{new_id}' is not recorded; run the command again"
                )
            links.append({"id": pid, "sha256": now.sha256, "created": now.created})
        return links

    def _cover(self, companions: Iterable[str | os.PathLike[str]],
               metrics: dict[str, Any] | None) -> dict[str, Any]:
        """``{"files": {relpath: sha256}}`` for the companion files (empty when none).

        A companion outside the run (a Triton model repository the user chose) is keyed by its
        absolute path: ``run_dir / key`` then still names it, so the state solver checks it
        like the run's own files.
        """
        files = {}
        run = self.run_dir.resolve()
        for path in companions:
            given = Path(path)
            if given.is_absolute() and not _is_within(given.resolve(), run):
                if not given.is_file():
                    raise ManifestError(f"companion file {path} does not exist: write it "
                                        "before recording it")
                files[given.resolve().as_posix()] = _hash_stable(given.resolve())[0]
                continue
            file = self._resolve_artifact(path)
            files[file.relative_to(run).as_posix()] = _hash_stable(file)[0]
        if files and metrics and "files" in metrics:
            raise ValueError("metrics['files'] is reserved for companion files")  # a bug
        return {"files": files} if files else {}

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
                if c.name in (MANIFEST_NAME, LOCK_NAME, RUN_LOCK_NAME):
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
        records = self._store.load()
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


# -- helpers ----------------------------------------------------------------------------------
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
