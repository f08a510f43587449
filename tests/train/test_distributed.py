"""DDP on the CPU: 2 Gloo processes (interrupted, then resumed through ``porter train --resume
--nproc-per-node 2``) end with the weights of one process training the same global batch.

Why equality is expected here: the device-resident loader gives rank r the images r, r+2, ...
of every global batch, augmented exactly as in the single run (draws are per image); DDP
averages the two ranks' mean-loss gradients, which is the gradient of the global mean loss; and
per-process BatchNorm over 32 images is what ghost BatchNorm with groups of 32 computes in the
single process (images s, s+2, ... per group), running statistics included (porter averages
them over processes after each epoch). What remains is float32 summation order: ~1e-7 relative
per step. Over the 4 SGD steps here that stays below 1e-6, so the tolerance is 1e-5; any real
mismatch (wrong shard, lr not scaled with the global batch, BatchNorm over the wrong images, a
missing all-reduce) shows up as >= 1e-3 (plain BatchNorm over all 64 images: 2.6e-2). Longer
runs at a high lr amplify rounding chaotically - 1 vs 2 threads in a single process differ
just as much - so the test keeps the run short instead of loosening the tolerance.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from port.ground.errors import DataError, UsageError
from port.train.launch import LaunchSpec, launch_workers, resolve_world, torchrun_args
from port.train.loop import train
from port.train.recipe import resolve
from port.train.run_dir import saved_config

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5

# Per process: 32 images x 2 processes = the single run's 64. 128 images: 2 steps per epoch.
SETTINGS: dict[str, Any] = {
    "data": "synthetic", "arch": "resnet9", "width": 0.125, "image_size": 16, "limit": 128,
    "val_limit": 64, "batch_size": 32, "epochs": 2, "lr": 0.2, "lr_scale_batch": 64,
    "schedule": "onecycle", "nesterov": True, "cutout": 4, "ema_decay": 0.9, "seed": 3,
    "device": "cpu", "threads": 1, "workers": 0, "loader": "device",
}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def _porter(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "port", *map(str, args)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=600)


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(SETTINGS))
    return path


_WORKER = """
import sys
from port.train.loop import train
from port.train.recipe import resolve

def stop(epoch, line):
    raise SystemExit(3)  # as if killed right after epoch 1's checkpoint

train(resolve(sys.argv[2], {"world_size": 2}), sys.argv[1], progress=False, on_epoch_end=stop)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_epoch_one_under_an_outside_launcher(run: Path, recipe: Path) -> None:
    """Two workers started the way torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR, ...
    in the environment), stopped after epoch 1's checkpoint."""
    port = str(_free_port())
    workers = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(run), str(recipe)], cwd=REPO,
                         env={**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                              "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2"},
                         stderr=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 3, err[-3000:]


def test_two_processes_match_one_with_the_same_global_batch_across_a_resume(
    recipe: Path, tmp_path: Path
) -> None:
    """Epoch 1 by two workers under an outside launcher, then `porter train --resume
    --nproc-per-node 2` (porter's launcher, every rank starting from rank 0's checkpoint),
    against one process with a global batch of 64 and ghost BatchNorm of 32."""
    run = tmp_path / "ddp"
    _train_epoch_one_under_an_outside_launcher(run, recipe)
    assert not (run / "model.pt").exists()
    saved = saved_config(run)
    assert saved is not None and saved.world_size == 2
    with pytest.raises(UsageError, match="world_size 2 but 1 process"):
        resolve_world(saved, LaunchSpec())  # a 2-process run resumes with 2 processes only
    done = _porter("train", "--run", run, "--resume", "--nproc-per-node", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained" in done.stdout and "world_size=2" in done.stdout

    single = resolve(str(recipe), {"batch_size": 64, "ghost_batch": 32})
    reference = train(single, tmp_path / "single", progress=False)
    a, b = _state(run), _state(tmp_path / "single")
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item()
                for k in a if a[k].is_floating_point())
    print(f"\nDDP (2 Gloo processes, resumed) vs one process: max |weight diff| {worst:.3g}")
    assert worst < TOLERANCE, f"max weight difference {worst:.3g}"
    assert all(torch.equal(a[k], b[k]) for k in a if not a[k].is_floating_point())

    # Rank 0 alone wrote: one line per epoch; the manifest records the world size.
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert lines[-1]["val_acc"] == pytest.approx(reference.metrics["val_acc"], abs=1 / 64)
    manifest = json.loads((run / "manifest.json").read_text())
    model = next(r for r in manifest["artifacts"] if r["id"] == "model")
    assert model["params"]["world_size"] == 2 and model["params"]["batch_size"] == 32
    assert model["metrics"]["global_batch"] == 64
    assert model["metrics"]["effective_lr"] == reference.metrics["effective_lr"] == 0.2


def test_launch_flags_are_checked() -> None:
    assert LaunchSpec(nproc_per_node=2).spawns and not LaunchSpec(nproc_per_node=1).spawns
    assert "--standalone" in torchrun_args(LaunchSpec(nproc_per_node=4))
    multi = torchrun_args(LaunchSpec(nproc_per_node=8, nnodes=2, node_rank=1,
                                     rdzv_endpoint="10.0.0.1:29500"))
    assert multi[multi.index("--rdzv-endpoint") + 1] == "10.0.0.1:29500"
    assert multi[multi.index("--node-rank") + 1] == "1" and multi[-2:] == ["--module", "port"]
    for spec, match in [
        (LaunchSpec(nnodes=2, nproc_per_node=1), "--rdzv-endpoint HOST:PORT"),
        (LaunchSpec(nnodes=2, node_rank=2, rdzv_endpoint="h:1"), "--node-rank must be in"),
        (LaunchSpec(nnodes=2, rdzv_endpoint="nohost"), "HOST:PORT"),
        (LaunchSpec(nproc_per_node=0), "--nproc-per-node must be >= 1"),
    ]:
        with pytest.raises(UsageError, match=match):
            spec.validate()
    cfg = resolve("quick", {})
    assert resolve_world(cfg, LaunchSpec(nproc_per_node=2, nnodes=2,
                                         rdzv_endpoint="h:1")).world_size == 4
    assert resolve_world(cfg, LaunchSpec()).world_size == 1
    with pytest.raises(UsageError, match="world_size 4 but 2 process"):
        resolve_world(resolve("quick", {"world_size": 4}), LaunchSpec(nproc_per_node=2))
    # The linear scaling rule on the global batch: lr for lr_scale_batch images.
    assert resolve("quick", {"world_size": 4}).effective_lr == pytest.approx(4 * cfg.lr)
    assert resolve("cifar10-fast", {"world_size": 2}).effective_lr == pytest.approx(0.8)


def test_launch_refuses_before_starting_processes(tmp_path: Path) -> None:
    two = LaunchSpec(nproc_per_node=2)
    cfg = resolve("quick", {"device": "cpu", "world_size": 2, "sync_bn": True})
    with pytest.raises(UsageError, match="sync_bn needs CUDA"):
        launch_workers(cfg, tmp_path, two, resume=False, download=False)
    cfg = resolve("quick", {"device": "cpu", "world_size": 2, "data": str(tmp_path / "nope")})
    with pytest.raises(DataError, match="not found"):
        launch_workers(cfg, tmp_path, two, resume=False, download=False)
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written
