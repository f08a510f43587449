"""Leftovers of killed commands, files a record must cover, and data choices said out loud."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.reliability.conftest import cli, refused
from tests.reliability.test_hostile_inputs import _tiny_onnx


def test_a_writer_sweeps_what_a_killed_export_left(run: Path, state_dict: Path) -> None:
    # What a SIGKILLed export leaves: atomic temp files (old and new naming) and a scratch dir.
    leftovers = [run / ".model.int8.onnx.k1ll3d.tmp", run / ".model.fp16.onnx.abc.porter-tmp.tmp",
                 run / "report" / ".latency.png.xyz.porter-tmp.png"]
    for path in leftovers:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half a file")
    scratch = run / ".porter-int8-dead"
    scratch.mkdir()
    (scratch / "preprocessed.onnx").write_bytes(b"x")
    # Any writer of the run sweeps under the run lock, even one that is then refused.
    refused(cli("import", state_dict, "--run", run, "--arch", "resnet18_cifar"),
            "already has a reference model")
    assert not any(p.exists() for p in [*leftovers, scratch])
    assert cli("status", "--run", run).code == 0


def test_refused_commands_leave_no_run_directory(tmp_path: Path, state_dict: Path) -> None:
    run = tmp_path / "new-run"
    refused(cli("import", state_dict, "--run", run, "--arch", "resnet18_cifar",
                "--num-classes", "7", "--data", "synthetic"), "10 classes")
    assert not run.exists()


def test_calibration_scratch_stays_in_the_run_folder(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from port.export.quantize import quantize_int8

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    run = tmp_path / "run"
    run.mkdir()
    src = _tiny_onnx(run / "model.fp32.onnx")
    images = np.random.default_rng(0).normal(size=(8, 3, 8, 8)).astype(np.float32)
    quantize_int8(src, run / "model.int8.onnx", images, method="minmax", progress=False)
    assert list(system_tmp.iterdir()) == []  # nothing in the system's temp directory
    assert sorted(p.name for p in run.iterdir()) == ["model.fp32.onnx", "model.int8.onnx"]


def test_report_md_and_plots_are_covered_by_the_record(run: Path) -> None:
    done = cli("evaluate", "--run", run, "--limit", "8", "--batch-sizes", "1")
    assert done.code == 0, done.err
    record = next(r for r in json.loads((run / "manifest.json").read_text())["artifacts"]
                  if r["id"] == "report")
    assert sorted(record["metrics"]["files"]) == [
        "report/accuracy_vs_latency.png", "report/latency.png", "report/outputs.npz",
        "report/report.md"]
    (run / "report" / "report.md").write_text("| all rows | passed |\n")
    rows = {r["id"]: r for r in json.loads(cli("status", "--run", run, "--json").out)}
    assert rows["report"]["state"] == "modified"
    assert "report/report.md" in rows["report"]["reason"]


def _folder(root: Path) -> Path:
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            Image.new("RGB", (8, 8), (200, 10, 10)).save(d / "x.png")
    return root


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    from port.data.imageio import read_image

    img = Image.new("RGB", (40, 20))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a portrait photo stored as landscape
    path = tmp_path / "portrait.jpg"
    img.save(path, exif=exif)
    shown = read_image(path)
    assert shown.size == (20, 40)  # upright, as every viewer shows it
    assert shown.getpixel((10, 5))[0] > 200  # the stored left half is now on top


def test_skipped_files_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from port.data.datasets import load_split
    from port.data.spec import parse_data_spec

    root = _folder(tmp_path / "data")
    Image.new("RGB", (8, 8)).save(root / "val" / "a" / "anim.gif")
    (root / "val" / "b" / "notes.txt").write_text("not an image")
    split = load_split(parse_data_spec(str(root)), "val", image_size=8)
    assert len(split) == 2
    err = capsys.readouterr().err
    assert "skipped 2 file(s)" in err and ".gif" in err and ".txt" in err
    assert len(err.strip().splitlines()) == 1
