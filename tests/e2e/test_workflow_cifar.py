"""The workflow on a subset of the real CIFAR-10 JPEGs (../shared/data); resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import REPO, TINY_TRAIN, porter

pytestmark = pytest.mark.slow


def test_cifar_subset_train_export_compare(cifar_subset_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = porter("train", "--run", run, "--data", cifar_subset_dir, "--epochs", "6",
                    "--seed", "0", "--cutout", "0", *TINY_TRAIN)
    assert result.code == 0, result.err[-3000:]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["val_acc"] > 0.22, last  # chance is 0.10 on 10 classes
    assert porter("export", "--run", run, "--to", "onnx").code == 0
    result = porter("evaluate", "--run", run, "--compare", "--batch-sizes", "1,32")
    assert result.code == 0, (result.out[-3000:], result.err[-3000:])
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["dataset"]["images"] == 500
    onnx_row = next(r for r in report["rows"] if r["backend"] == "onnxruntime")
    assert onnx_row["agreement"] >= 0.999, onnx_row
    assert report["reference"]["top1"] > 0.22
    print(f"\nCIFAR subset: torch top1 {report['reference']['top1']:.4f}, "
          f"onnx top1 {onnx_row['top1']:.4f}, agreement {onnx_row['agreement']:.4f}")


def _train_args(run: Path, data: Path) -> list[str]:
    return ["train", "--run", str(run), "--data", str(data), "--epochs", "3", "--seed", "7",
            "--limit", "400", "--val-limit", "100", *TINY_TRAIN]


def test_resume_after_kill_gives_identical_weights(cifar_subset_dir: Path, tmp_path: Path) -> None:
    import torch

    straight = tmp_path / "straight"
    assert porter(*_train_args(straight, cifar_subset_dir)).code == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "port", *_train_args(killed, cifar_subset_dir)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    # Kill -9 once the first epoch's checkpoint is on disk, while the second epoch runs.
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.is_file():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.pt").exists()
    # `--resume` alone continues with the run's saved settings.
    result = porter("train", "--run", killed, "--resume")
    assert result.code == 0, result.err[-3000:]

    a = torch.load(straight / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(killed / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    epochs = [json.loads(x)["epoch"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_import_state_dict_then_export_and_compare(cifar_subset_dir: Path, tmp_path: Path) -> None:
    import torch

    from port.models.registry import create_model

    torch.manual_seed(0)
    weights = tmp_path / "elsewhere.pth"
    torch.save(create_model("resnet18_cifar", 10, width=0.25).state_dict(), weights)
    run = tmp_path / "run"
    result = porter("import", weights, "--run", run, "--arch", "resnet18_cifar", "--width", "0.25",
                    "--data", cifar_subset_dir)
    assert result.code == 0, result.err
    assert porter("export", "--run", run, "--to", "onnx").code == 0
    result = porter("evaluate", "--run", run, "--compare", "--limit", "200", "--batch-sizes", "4")
    assert result.code == 0, (result.out[-2000:], result.err[-2000:])
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["dataset"]["images"] == 200
    assert {r["artifact"] for r in report["rows"]} == {"model", "onnx-fp32"}


def test_import_onnx_made_elsewhere(cifar_subset_dir: Path, tmp_path: Path) -> None:
    import torch

    from port.models.registry import create_model

    model = create_model("resnet18_cifar", 10, width=0.25).eval()
    path = tmp_path / "external.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), input_names=["images"],
                      output_names=["scores"], dynamo=False,
                      dynamic_axes={"images": {0: "n"}, "scores": {0: "n"}})
    run = tmp_path / "run"
    result = porter("import", path, "--run", run, "--data", cifar_subset_dir, "--image-size", "32")
    assert result.code == 0, result.err
    result = porter("evaluate", "--run", run, "--limit", "100", "--batch-sizes", "2")
    assert result.code == 0, (result.out[-2000:], result.err[-2000:])
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["reference"]["backend"] == "onnxruntime"
