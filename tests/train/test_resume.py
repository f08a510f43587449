"""Reproducibility: an interrupted and resumed run ends with the uninterrupted run's weights."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from port.ground.errors import UsageError
from port.models.checkpoint import load_model
from port.train.loop import train
from port.train.recipe import TrainConfig, resolve
from port.train.run_dir import saved_config

REPO = Path(__file__).resolve().parents[2]


class Interrupt(Exception):
    """Stands in for Ctrl-C after an epoch's checkpoint is written."""


def _stop_after(n: int):
    def callback(epoch: int, line: dict) -> None:
        if epoch >= n:
            raise Interrupt

    return callback


def _weights(run: Path) -> dict[str, torch.Tensor]:
    model, _, _ = load_model(run / "model.pt")
    return model.state_dict()


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def _epochs(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines]


@pytest.fixture(params=["device-loader", "dataloader", "cifar10-fast"])
def resumable(request: pytest.FixtureRequest, tiny: TrainConfig,
              fast_tiny: TrainConfig) -> TrainConfig:
    """The tiny run on each data path, and with every fast-recipe trick (EMA state included)."""
    if request.param == "device-loader":
        return dataclasses.replace(tiny, loader="device")
    if request.param == "dataloader":
        return dataclasses.replace(tiny, loader="dataloader", cutout=4)
    return fast_tiny


def test_resume_after_epoch_two_matches_uninterrupted(resumable: TrainConfig,
                                                      tmp_path: Path) -> None:
    tiny = resumable
    full = train(tiny, tmp_path / "full", progress=False)

    part = tmp_path / "part"
    with pytest.raises(Interrupt):
        train(tiny, part, progress=False, on_epoch_end=_stop_after(2))
    assert not (part / "model.pt").exists()
    assert _epochs(part) == [1, 2]
    resumed = train(tiny, part, resume=True, progress=False)

    _assert_same(_weights(tmp_path / "full"), _weights(part))
    assert _epochs(part) == [1, 2, 3]  # no duplicate lines
    assert resumed.metrics["val_acc"] == full.metrics["val_acc"]
    full_lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    part_lines = (part / "metrics.jsonl").read_text().splitlines()
    strip = ("images_per_s", "seconds")  # timings differ; everything else is identical
    for a, b in zip(full_lines, part_lines, strict=True):
        da, db = json.loads(a), json.loads(b)
        assert {k: v for k, v in da.items() if k not in strip} == {
            k: v for k, v in db.items() if k not in strip}


def test_metrics_after_checkpoint_are_dropped_on_resume(tiny: TrainConfig, tmp_path: Path) -> None:
    # A crash between the metrics append and the checkpoint write leaves an extra line.
    run = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(tiny, run, progress=False, on_epoch_end=_stop_after(1))
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "train_loss": 9.9}) + "\n")
    train(tiny, run, resume=True, progress=False)
    assert _epochs(run) == [1, 2, 3]


def test_resume_refuses_changed_settings(tiny: TrainConfig, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(tiny, run, progress=False, on_epoch_end=_stop_after(1))
    changed = dataclasses.replace(tiny, lr=0.05, batch_size=16)
    expected = r"settings differ .*batch_size: 32 -> 16; lr: 0\.2 -> 0\.05"
    with pytest.raises(UsageError, match=expected):
        train(changed, run, resume=True, progress=False)
    # Execution-only settings may change.
    train(dataclasses.replace(tiny, eval_every=2), run, resume=True, progress=False)
    assert (run / "model.pt").exists()


def test_resume_without_checkpoint_is_refused(tiny: TrainConfig, tmp_path: Path) -> None:
    assert saved_config(tmp_path / "empty") is None
    with pytest.raises(UsageError, match="nothing to resume"):
        train(tiny, tmp_path / "empty", resume=True, progress=False)


def test_saved_config_resumes_without_flags(tiny: TrainConfig, tmp_path: Path) -> None:
    with pytest.raises(Interrupt):
        train(tiny, tmp_path, progress=False, on_epoch_end=_stop_after(1))
    assert resolve(tmp_path / "train.yaml") == tiny  # written before the first epoch
    # A run from before train.yaml existed: the checkpoint alone carries its settings.
    (tmp_path / "train.yaml").unlink()
    cfg = saved_config(tmp_path)
    assert cfg == tiny
    train(cfg, tmp_path, resume=True, progress=False)
    assert _epochs(tmp_path) == [1, 2, 3]
    assert resolve(tmp_path / "train.yaml") == tiny  # written again by the resumed run


def test_never_overwrites_recorded_work(tiny: TrainConfig, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(tiny, run, progress=False, on_epoch_end=_stop_after(1))
    with pytest.raises(UsageError, match=r"unfinished training.*--resume"):
        train(tiny, run, progress=False)
    train(tiny, run, resume=True, progress=False)
    before = (run / "model.pt").read_bytes()
    with pytest.raises(UsageError, match=r"already has a trained model.*--resume.*new --run"):
        train(tiny, run, progress=False)
    assert (run / "model.pt").read_bytes() == before


_CHILD = """
import sys
from port.train.loop import train
from port.train.recipe import resolve
cfg = resolve(None, {cfg!r})
train(cfg, sys.argv[1], progress=False, resume=len(sys.argv) > 2)
"""


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tiny: TrainConfig, tmp_path: Path) -> None:
    """kill -9 while epoch 2 runs; the resumed run still ends bit-identical."""
    settings = {**tiny.to_dict(), "limit": 320, "epochs": 4}
    cfg = TrainConfig(**settings)
    reference = train(cfg, tmp_path / "reference", progress=False)

    run = tmp_path / "killed"
    script = _CHILD.format(cfg=settings)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", script, str(run)], env=env, cwd=REPO)
    ckpt = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # Epoch 1 is checkpointed; let epoch 2 get under way, then kill without warning.
    time.sleep(reference.metrics["train_seconds"] / 4 / 3)
    assert child.poll() is None, "the child finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (run / "model.pt").exists()

    done = subprocess.run([sys.executable, "-c", script, str(run), "--resume"], env=env,
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same(_weights(tmp_path / "reference"), _weights(run))
    assert _epochs(run) == [1, 2, 3, 4]


@pytest.mark.slow
def test_resume_with_worker_processes(tiny: TrainConfig, tmp_path: Path) -> None:
    """Worker processes augment with their own RNGs: seeded per epoch, they resume exactly too."""
    import signal

    cfg = dataclasses.replace(tiny, workers=2, cutout=4, epochs=2, loader="dataloader")
    before = signal.getsignal(signal.SIGCHLD)
    train(cfg, tmp_path / "full", progress=False)
    # torch's worker loader installs a SIGCHLD handler for the process; training gives the
    # caller's back (an in-process evaluate with OpenVINO loaded crashed on it).
    assert signal.getsignal(signal.SIGCHLD) is before
    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "part", progress=False, on_epoch_end=_stop_after(1))
    train(cfg, tmp_path / "part", resume=True, progress=False)
    _assert_same(_weights(tmp_path / "full"), _weights(tmp_path / "part"))
