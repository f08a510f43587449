"""Manifest: records, lineage states, refusal of bad input, and safety under concurrency/crashes."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from port.ground.errors import ManifestError
from port.manifest import LOCK_NAME, MANIFEST_NAME, Manifest, env_info, sha256_file
from port.manifest.store import RecordStore

REPO = Path(__file__).resolve().parents[1]
FIELDS = ["id", "stage", "kind", "path", "sha256", "bytes", "parents", "created", "params", "env",
          "metrics"]


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


@pytest.fixture
def run(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    return d


@pytest.fixture
def chain(run: Path) -> Manifest:
    """model.pt -> model.onnx -> model_fp16.engine, all recorded and fresh."""
    m = Manifest(run)
    m.record("train", "checkpoint", write(run / "model.pt", "weights"), id="model",
             params={"epochs": 1})
    m.record("export", "onnx", write(run / "model.onnx", "graph"), id="onnx-fp32",
             parents=["model"], params={"to": "onnx", "precision": "fp32"})
    m.record("export", "engine", write(run / "model_fp16.engine", "plan"), id="trt-fp16",
             parents=["onnx-fp32"], params={"to": "trt", "precision": "fp16"})
    return m


def states(m: Manifest) -> dict[str, str]:
    return {r.id: s.name for r, s in m.statuses()}


# -- records ---------------------------------------------------------------------------------
def test_record_round_trip_and_file_format(run: Path) -> None:
    f = write(run / "model.pt", b"\x00weights" * 1000)
    m = Manifest(run)
    rec = m.record("train", "checkpoint", f, id="model", params={"lr": 0.1, "data": run / "x"},
                   metrics={"top1": np.float32(0.5), "loss": float("nan")})
    assert m.get("model") == rec
    assert m.get("nope") is None
    assert rec.path == "model.pt"
    assert rec.sha256 == hashlib.sha256(f.read_bytes()).hexdigest() == sha256_file(f)
    assert rec.bytes == f.stat().st_size == 8000
    assert rec.parents == []
    assert rec.created.endswith("Z")
    assert rec.params == {"lr": 0.1, "data": str(run / "x")}  # paths stored as text
    assert rec.metrics == {"top1": 0.5, "loss": None}  # strict JSON: NaN becomes null
    doc = json.loads((run / MANIFEST_NAME).read_text())
    assert doc["version"] == 1
    assert list(doc["artifacts"][0]) == FIELDS
    assert doc["artifacts"][0]["env"]["python"] == rec.env["python"]


def test_parents_store_sha_at_record_time(chain: Manifest) -> None:
    onnx = chain.get("onnx-fp32")
    model = chain.get("model")
    assert onnx.parents == [{"id": "model", "sha256": model.sha256, "created": model.created}]
    assert [r.id for r in chain.records(kind="engine")] == ["trt-fp16"]
    assert [r.id for r in chain.records(stage="export")] == ["onnx-fp32", "trt-fp16"]
    assert [r.id for r in chain.records(kind="onnx", stage="train")] == []


def test_path_forms_absolute_cwd_relative_and_run_relative(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(run / "sub" / "a.onnx", "a")
    m = Manifest(run)
    assert m.record("export", "onnx", (run / "sub" / "a.onnx").resolve()).path == "sub/a.onnx"
    monkeypatch.chdir(run.parent)
    rel_run = Manifest(Path(run.name))  # a run dir given relative to cwd, like `--run runs/r18`
    assert rel_run.record("export", "onnx", Path(run.name) / "sub" / "a.onnx").path == "sub/a.onnx"
    assert rel_run.record("export", "onnx", "sub/a.onnx").path == "sub/a.onnx"
    assert len(m.records()) == 1  # same file, same default id: replaced, not duplicated
    assert m.abspath("onnx").resolve() == (run / "sub" / "a.onnx").resolve()


def test_default_ids_are_short_unique_and_stable(run: Path) -> None:
    m = Manifest(run)
    a = m.record("export", "onnx", write(run / "a.onnx", "a"))
    b = m.record("export", "onnx", write(run / "b.onnx", "b"))
    c = m.record("export", "onnx", write(run / "c.onnx", "c"))
    assert (a.id, b.id, c.id) == ("onnx", "onnx-2", "onnx-3")
    write(run / "b.onnx", "b2")
    assert m.record("export", "onnx", run / "b.onnx").id == "onnx-2"  # re-made keeps its id


def test_rerecord_replaces_in_place(chain: Manifest, run: Path) -> None:
    write(run / "model.onnx", "graph v2")
    new = chain.record("export", "onnx", run / "model.onnx", id="onnx-fp32", parents=["model"])
    assert [r.id for r in chain.records()] == ["model", "onnx-fp32", "trt-fp16"]
    assert chain.get("onnx-fp32") == new
    assert new.sha256 == sha256_file(run / "model.onnx")


def test_refuses_bad_inputs(run: Path, tmp_path: Path) -> None:
    m = Manifest(run)
    outside = write(tmp_path / "elsewhere.onnx", "x")
    with pytest.raises(ManifestError, match="outside the run directory"):
        m.record("export", "onnx", outside)
    with pytest.raises(ManifestError, match="outside the run directory"):
        m.record("export", "onnx", run / ".." / "elsewhere.onnx")
    with pytest.raises(ManifestError, match="does not exist"):
        m.record("export", "onnx", run / "nothing.onnx")
    with pytest.raises(ManifestError, match="does not exist"):
        m.record("export", "onnx", run)  # a directory is not an artifact
    write(run / "x.onnx", "x")
    with pytest.raises(ManifestError, match="'ghost' is not recorded"):
        m.record("export", "onnx", run / "x.onnx", parents=["ghost"])
    with pytest.raises(ManifestError, match="not valid"):
        m.record("export", "onnx", run / "x.onnx", id="has space")
    with pytest.raises(ValueError, match="stage"):
        m.record("deploy", "onnx", run / "x.onnx")
    assert not (run / MANIFEST_NAME).exists()  # nothing was half-recorded


# -- states ----------------------------------------------------------------------------------
def test_states_modified_missing_and_stale_through_the_chain(chain: Manifest, run: Path) -> None:
    assert states(chain) == {"model": "fresh", "onnx-fp32": "fresh", "trt-fp16": "fresh"}
    assert chain.require_fresh("trt-fp16").id == "trt-fp16"

    write(run / "model.pt", "edited by hand")
    assert states(chain) == {"model": "modified", "onnx-fp32": "stale", "trt-fp16": "stale"}
    assert chain.state("onnx-fp32").reason == "parent 'model' is modified"
    assert chain.state("trt-fp16").reason == "parent 'onnx-fp32' is stale"

    (run / "model.pt").unlink()
    assert chain.state("model").name == "missing"
    assert chain.state("onnx-fp32").name == "stale"


def test_remade_parent_makes_children_stale_until_they_are_remade(
    chain: Manifest, run: Path
) -> None:
    write(run / "model.pt", "retrained")
    chain.record("train", "checkpoint", run / "model.pt", id="model")
    assert states(chain) == {"model": "fresh", "onnx-fp32": "stale", "trt-fp16": "stale"}
    assert chain.state("onnx-fp32").reason == "parent 'model' was re-made after it"

    write(run / "model.onnx", "graph from retrained")
    chain.record("export", "onnx", run / "model.onnx", id="onnx-fp32", parents=["model"])
    assert states(chain) == {"model": "fresh", "onnx-fp32": "fresh", "trt-fp16": "stale"}


def test_modified_child_of_fresh_parent_is_modified_not_stale(chain: Manifest, run: Path) -> None:
    write(run / "model.onnx", "tampered")
    assert states(chain) == {"model": "fresh", "onnx-fp32": "modified", "trt-fp16": "stale"}


def test_require_fresh_names_the_artifact_and_the_fix(chain: Manifest, run: Path) -> None:
    write(run / "model.pt", "edited")
    with pytest.raises(ManifestError) as e:
        chain.require_fresh("onnx-fp32")
    msg = str(e.value)
    assert "\n" not in msg
    assert "'onnx-fp32'" in msg and "stale" in msg
    # the root cause comes first, then the artifact itself
    assert msg.index(f"porter train --run {run}") < msg.index(
        f"porter export --run {run} --to onnx --precision fp32")
    with pytest.raises(ManifestError, match=r"no artifact 'int8'.*recorded: model, onnx-fp32"):
        chain.require_fresh("int8")
    with pytest.raises(ManifestError, match="no artifact"):
        chain.state("int8")


# -- corruption, concurrency and crashes -----------------------------------------------------
def test_corrupt_manifest_is_reported_and_never_overwritten(run: Path) -> None:
    write(run / "model.pt", "w")
    bad = '{"version": 1, "artifacts": [{"id": "model", '  # cut off mid-record
    write(run / MANIFEST_NAME, bad)
    m = Manifest(run)
    with pytest.raises(ManifestError, match=r"manifest\.json is not valid JSON") as e:
        m.records()
    assert str(run / MANIFEST_NAME) in str(e.value)
    with pytest.raises(ManifestError, match="not valid JSON"):
        m.record("train", "checkpoint", run / "model.pt", id="model")
    assert (run / MANIFEST_NAME).read_text() == bad

    write(run / MANIFEST_NAME, '{"version": 1, "artifacts": [{"id": "x"}]}')
    with pytest.raises(ManifestError, match="malformed record"):
        m.statuses()
    write(run / MANIFEST_NAME, '{"version": 9, "artifacts": []}')
    with pytest.raises(ManifestError, match="upgrade porter"):
        m.records()


def _record_many(run: str, worker: int, count: int, barrier: multiprocessing.synchronize.Barrier
                 ) -> None:
    m = Manifest(run)
    files = [write(Path(run) / f"w{worker}" / f"{i}.onnx", f"{worker}-{i}") for i in range(count)]
    barrier.wait()  # start together so the writes really overlap
    for i, f in enumerate(files):
        m.record("export", "onnx", f, id=f"w{worker}-{i}")


def test_concurrent_processes_never_lose_records(run: Path) -> None:
    workers, count = 6, 5
    ctx = multiprocessing.get_context("fork")  # fork: the test module need not be importable
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_record_many, args=(str(run), w, count, barrier))
             for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * workers
    doc = json.loads((run / MANIFEST_NAME).read_text())
    ids = sorted(a["id"] for a in doc["artifacts"])
    assert ids == sorted(f"w{w}-{i}" for w in range(workers) for i in range(count))
    assert all(s.fresh for _, s in Manifest(run).statuses())


def test_leftover_temp_file_does_not_break_reading_and_is_swept(chain: Manifest, run: Path) -> None:
    before = (run / MANIFEST_NAME).read_text()
    leftover = write(run / ".manifest.json.crashed.tmp", before[: len(before) // 2])
    assert [r.id for r in chain.records()] == ["model", "onnx-fp32", "trt-fp16"]
    chain.record("evaluate", "report", write(run / "report.json", "{}"), id="report",
                 parents=["model", "onnx-fp32"])
    assert not leftover.exists()
    assert (run / LOCK_NAME).exists()
    assert [p.name for p in run.glob("*.tmp")] == []


WRITER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from port.manifest import Manifest
    run, mode = Path(sys.argv[1]), sys.argv[2]
    m = Manifest(run)
    m.record("export", "onnx", run / "a.onnx", id="a0")
    if mode == "hang-in-write":
        # Freeze the writer between writing its temp file and renaming it, then get killed there.
        def hang(fd):
            (run / "hanging").touch()
            time.sleep(60)
        os.fsync = hang
    blob = "x" * 400_000  # a big manifest makes each write slow enough to be cut short
    i = 0
    while True:
        m.record("export", "onnx", run / "a.onnx", id=f"a{i % 4}", params={"blob": blob, "i": i})
        i += 1
""")


def _start_writer(run: Path, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(run), mode], cwd=REPO)


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not predicate():
        assert time.monotonic() < deadline, f"writer never {what}"
        time.sleep(0.01)


def test_writer_killed_inside_the_write_leaves_the_old_manifest(run: Path) -> None:
    write(run / "a.onnx", "graph")
    m = Manifest(run)
    proc = _start_writer(run, "hang-in-write")
    _wait_for((run / "hanging").exists, "reached the write")
    old = (run / MANIFEST_NAME).read_text()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(run.glob(".manifest.json.*.tmp"))  # the killed write's temp file is left behind
    assert (run / MANIFEST_NAME).read_text() == old
    assert [r.id for r in m.records()] == ["a0"]
    # the dead writer's lock is released by the OS; its temp file is swept by the next write
    m.record("export", "onnx", run / "a.onnx", id="a1")
    assert [r.id for r in m.records()] == ["a0", "a1"]
    assert list(run.glob("*.tmp")) == []


def test_writer_killed_at_random_points_never_leaves_a_half_written_manifest(run: Path) -> None:
    write(run / "a.onnx", "graph")
    m = Manifest(run)
    for attempt in range(2):
        proc = _start_writer(run, "loop")
        # every read here races the writer's renames, so each one checks atomicity too
        _wait_for(lambda: len(m.records()) == 4, "wrote four records")
        time.sleep(0.03 * attempt)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        doc = json.loads((run / MANIFEST_NAME).read_text())
        assert sorted(a["id"] for a in doc["artifacts"]) == ["a0", "a1", "a2", "a3"]
        m.record("export", "onnx", run / "a.onnx", id="a0")
        assert list(run.glob("*.tmp")) == []


# -- helpers ---------------------------------------------------------------------------------
def test_sha256_file_streams_large_files(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # crosses the 1 MiB chunk boundary
    f = write(tmp_path / "big.bin", data)
    assert sha256_file(f) == hashlib.sha256(data).hexdigest()


def test_env_info_has_versions_and_device() -> None:
    env = env_info()
    for key in ("python", "torch", "torchvision", "onnx", "onnxruntime", "tensorrt", "device"):
        assert key in env
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["onnxruntime"]  # installed in the dev environment
    assert isinstance(env["device"], str) and env["device"]
    env["python"] = "changed"
    assert env_info()["python"] != "changed"  # callers get a copy


def test_byte_identical_remake_of_parent_still_makes_child_stale(chain: Manifest) -> None:
    """Re-recording a parent (even with the same bytes) means the child predates it."""
    assert chain.state("onnx-fp32").name == "fresh"
    model = chain.get("model")
    chain.record("train", "checkpoint", model.path, id="model")
    assert chain.get("model").sha256 == model.sha256
    state = chain.state("onnx-fp32")
    assert state.name == "stale" and "re-made" in state.reason


# -- the modules under the facade ------------------------------------------------------------
def test_store_writes_back_the_file_byte_for_byte(chain: Manifest, run: Path) -> None:
    """The record store alone round-trips manifest.json unchanged (the format did not move)."""
    before = (run / MANIFEST_NAME).read_bytes()
    assert before.startswith(b'{\n  "version": 1,\n  "artifacts": [\n') and before.endswith(b"}\n")
    store = RecordStore(run)
    with store.locked():
        store.save(store.load())
    assert (run / MANIFEST_NAME).read_bytes() == before
    assert [p.name for p in run.glob("*.tmp")] == []


def test_statuses_hash_each_file_once(
    chain: Manifest, run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three records whose parents chain up: each file is still read once per call."""
    import port.manifest.state

    hashed: list[str] = []
    real = port.manifest.state.sha256_file

    def counting(path: str | os.PathLike[str]) -> str:
        hashed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(port.manifest.state, "sha256_file", counting)
    assert [s.name for _, s in chain.statuses()] == ["fresh"] * 3
    assert sorted(hashed) == ["model.onnx", "model.pt", "model_fp16.engine"]


def test_recording_an_artifact_never_imports_torch(tmp_path: Path) -> None:
    """The environment record (versions, device, CPU) comes from metadata and CPUID, not torch."""
    import subprocess
    import sys

    (tmp_path / "a.bin").write_bytes(b"x")
    code = ("import sys; from port.manifest import Manifest; "
            f"r = Manifest({str(tmp_path)!r}).record('export', 'onnx', 'a.bin'); "
            "assert r.env['cpu']['flags'] is not None and r.env['device']; "
            "print(sorted(m for m in ('torch', 'torchvision', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stdout
