"""Two porter commands on one run: the second writer is refused, readers go on, lineage holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from port.ground.errors import ManifestError
from port.manifest import Manifest
from port.manifest.lock import HELD_ENV, run_lock
from tests.reliability.conftest import REPO, cli, refused, snapshot

# A real process holding the run lock the way `porter export` does, until it is killed.
_HOLDER = """
import sys, time
from port.manifest.lock import run_lock
with run_lock(sys.argv[1], "export"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(run: Path):
    """A separate process that holds ``run``'s writer lock (SIGKILLed at the end)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_second_writer_is_refused_naming_the_holder(run: Path, holder: subprocess.Popen,
                                                     state_dict: Path) -> None:
    before = snapshot(run)
    for args in (["export", "--run", run, "--to", "onnx"],
                 ["evaluate", "--run", run, "--limit", "8", "--batch-sizes", "1"],
                 ["import", state_dict, "--run", run, "--arch", "resnet18_cifar"],
                 ["train", "--run", run, "--data", "synthetic", "--arch", "resnet18_cifar"]):
        line = refused(cli(*args), f"run {run} is in use by `porter export`",
                       f"pid {holder.pid}", "since", "wait for it to finish")
        assert "UTC" in line
    assert snapshot(run) == before
    # Readers take no lock: status answers while the writer works.
    status = cli("status", "--run", run, "--json")
    assert status.code == 0 and '"state": "fresh"' in status.out


def test_a_killed_holder_releases_the_run(run: Path, holder: subprocess.Popen) -> None:
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    # The OS drops the lock with the process: nothing to clean up by hand.
    with run_lock(run, "evaluate"):
        pass


def test_concurrent_real_commands_one_wins(run: Path, state_dict: Path) -> None:
    """Two real `porter import` processes racing for one new run: exactly one records."""
    target = run.parent / "race"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "port", "import", str(state_dict), "--run", str(target),
         "--arch", "resnet18_cifar", "--width", "0.125", "--data", "synthetic"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    lines = [line for line in loser.splitlines() if line.strip()]
    assert len(lines) == 1 and ("is in use by `porter import`" in lines[0]
                                or "already has a reference model" in lines[0]), loser
    assert [r.id for r in Manifest(target).records()] == ["model"]


def test_parent_remade_while_a_command_ran_is_never_claimed(run: Path) -> None:
    """The record names the parent version the command read, or nothing is recorded."""
    manifest = Manifest(run)
    read = manifest.get("onnx-fp32")  # what an INT8 export would quantize
    assert read is not None
    child = run / "model.int8.onnx"
    child.write_bytes(b"int8 made from the earlier fp32")
    # Meanwhile another writer (one that ignored the run lock) re-makes the FP32 graph.
    (run / "model.fp32.onnx").write_bytes(b"another fp32 graph")
    manifest.record("export", "onnx", run / "model.fp32.onnx", id="onnx-fp32", parents=["model"])
    before = snapshot(run)
    with pytest.raises(ManifestError, match="was re-made while this command ran"):
        manifest.record("export", "onnx", child, id="onnx-int8", parents=[read])
    assert snapshot(run) == before and manifest.get("onnx-int8") is None


def test_ddp_workers_take_no_lock_of_their_own(run: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    """The launching `porter train` holds the lock; its workers must not deadlock on it."""
    with run_lock(run, "train"):
        assert os.environ[HELD_ENV] == str(run.resolve())  # what torchrun's workers inherit
        with run_lock(run, "train"):  # a worker in the same environment: passes through
            pass
    assert HELD_ENV not in os.environ
    # Under a launcher porter did not start, ranks other than 0 take no lock either.
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with run_lock(run, "train"), run_lock(run, "train"):
        pass


def test_lock_wait_is_not_a_busy_retry(run: Path, holder: subprocess.Popen) -> None:
    """The refusal comes at once (a second writer must not queue behind minutes of work)."""
    start = time.perf_counter()
    with pytest.raises(ManifestError, match="is in use by"), run_lock(run, "export"):
        pass
    assert time.perf_counter() - start < 5


def test_run_made_by_another_command_between_check_and_mkdir(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """Two `porter import --run NEW` at once: the one whose mkdir loses takes the existing
    directory and the lock decides, instead of failing with EEXIST (seen in CI)."""
    run = tmp_path / "race"
    run.mkdir()  # made by the other command after this one looked
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self: False if self == run else real_exists(self))
    with run_lock(run, "import", create=True) as held:
        assert held == run and (run / ".porter.lock").is_file()
    monkeypatch.undo()
    assert run.is_dir()  # not ours to remove: this command did not create it
