"""The record store under :mod:`port.manifest`: ``RUN/manifest.json`` read and written whole.

The file (schema in DESIGN.md, "Manifest")::

    {"version": 1, "artifacts": [{"id": "model", "stage": "train", "kind": "checkpoint",
      "path": "model.pt", "sha256": "...", "bytes": 123, "parents": [{"id": ..., "sha256": ...}],
      "created": "2025-01-01T00:00:00.000Z", "params": {...}, "env": {...}, "metrics": {...}}]}

Writers hold the run's lock (``RUN/.manifest.lock``) around their read-modify-write and replace
the file through :mod:`port.ground.atomic` (temp file in the run dir, fsync, ``os.replace``,
fsync of the dir): two porter processes at once never lose each other's records, and a crash
never leaves a half-written manifest. Readers take no lock: they always see either the old or
the new file.
This module knows nothing of lineage or states (:mod:`port.manifest.state`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from port.ground.atomic import atomic_write_text
from port.ground.errors import ManifestError

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".manifest.lock"
VERSION = 1
LOCK_TIMEOUT_S = 120.0  # a record takes milliseconds; minutes means another porter is stuck
# port.ground.atomic writes ``.<name>.<random>.tmp`` next to the target: a killed writer leaves one
# behind, which the next writer sweeps (under the lock nobody else can be writing one).
_TEMP_GLOB = f".{MANIFEST_NAME}.*.tmp"


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

    @property
    def typed_params(self) -> Any:
        """``params`` as the dataclass of this record's stage (:mod:`port.manifest.params`)."""
        from port.manifest.params import params_for

        return params_for(self.stage, self.params)

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


class RecordStore:
    """``manifest.json`` of one run directory. Cheap to construct: nothing is read or created."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / MANIFEST_NAME
        self.lock_path = run_dir / LOCK_NAME

    def load(self) -> list[Record]:
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

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
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
            for leftover in self.run_dir.glob(_TEMP_GLOB):
                leftover.unlink(missing_ok=True)
            yield
        finally:
            lock.release()

    def save(self, records: list[Record]) -> None:
        """Replace ``manifest.json`` atomically with ``records``; call it inside :meth:`locked`."""
        doc = {"version": VERSION, "artifacts": [r.to_dict() for r in records]}
        atomic_write_text(self.path, json.dumps(doc, indent=2, allow_nan=False) + "\n")

    def _corrupt(self, what: str) -> ManifestError:
        return ManifestError(
            f"{self.path} {what}: it is left untouched; restore it from a backup (or move it "
            "away and re-run the stages to rebuild it)"
        )
