"""port.load / Predictor / `porter predict` on a real run (tests/apps/conftest.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import port
from port.data.datasets import load_split, materialize
from port.data.spec import parse_data_spec
from port.engines.onnxrt import OnnxRuntimeRunner
from port.engines.predictor import Prediction
from port.models.card import ModelCard
from port.models.card_codec import card_from_metadata, card_metadata
from tests.apps.conftest import AppRun
from tests.e2e.helpers import REPO, assert_usage_error, porter


def test_logits_equal_the_evaluate_path_on_real_images(app_run: AppRun,
                                                       cifar_subset_dir: Path) -> None:
    predictor = port.load(app_run.onnx)
    # What `porter evaluate` does: the run's val split through porter's torchvision pipeline,
    # materialised once, then the ONNX Runtime runner in batches of 32.
    split = load_split(parse_data_spec(str(cifar_subset_dir)), "val",
                       preprocess=predictor.card.preprocess)
    images, _ = materialize(split)
    paths = [Path(p) for p, _ in split.dataset.samples]
    with OnnxRuntimeRunner(app_run.onnx) as runner:
        name, out = runner.input_metadata()[0].name, runner.logits_output()
        expected = np.concatenate([runner.infer({name: images[i:i + 32]})[out]
                                   for i in range(0, len(images), 32)])
    assert np.array_equal(predictor.preprocess(paths), images)  # bit for bit
    assert np.array_equal(predictor.logits(paths), expected)
    predictor.close()


def test_predict_takes_paths_pil_images_and_uint8_arrays(app_run: AppRun) -> None:
    with port.load(app_run.onnx) as predictor:
        path = app_run.images[0]
        pil = Image.open(path).convert("RGB")
        one = predictor.predict(path, top_k=3)
        assert isinstance(one, Prediction) and len(one.classes) == 3
        assert one.classes[0] in app_run.classes and one.label == one.classes[0]
        assert one.probabilities == sorted(one.probabilities, reverse=True)
        assert predictor.predict(pil, top_k=3) == one
        assert predictor.predict(np.asarray(pil), top_k=3) == one
        batch = predictor.predict(np.stack([np.asarray(pil)] * 2), top_k=3)
        assert batch == [one, one]
        many = predictor.predict(app_run.images, top_k=10)
        assert len(many) == len(app_run.images)
        assert all(abs(sum(p.probabilities) - 1) < 1e-6 for p in many)  # all 10 classes
        # A larger image goes through the recorded resize + centre crop, like evaluate.
        big = pil.resize((48, 40))
        assert predictor.preprocess(big).shape == (1, 3, 32, 32)


def test_onnx_prediction_imports_no_torch(app_run: AppRun) -> None:
    code = (
        "import sys, port\n"
        f"p = port.load({str(app_run.onnx)!r})\n"
        f"print(p.predict({str(app_run.images[0])!r}).label)\n"
        "heavy = [m for m in ('torch', 'torchvision', 'onnx', 'tensorrt') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in app_run.classes


def test_cli_predict_text_and_json(app_run: AppRun) -> None:
    images = app_run.images[:3]
    result = porter("predict", *images, "--model", app_run.onnx, "--top-k", "2", "--json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    with port.load(app_run.onnx) as predictor:
        expected = predictor.predict(images, top_k=2)
    assert [r["image"] for r in rows] == [str(p) for p in images]
    assert [r["top"][0]["class"] for r in rows] == [e.label for e in expected]
    text = porter("predict", images[0], "--model", app_run.onnx)
    assert text.code == 0 and expected[0].label in text.out


def test_cli_predict_bad_inputs_are_one_line(app_run: AppRun, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    assert_usage_error(porter("predict", broken, "--model", app_run.onnx), "broken.jpg")
    assert_usage_error(porter("predict", app_run.images[0], "--model", tmp_path / "no.onnx"),
                       "not found")
    assert_usage_error(porter("predict", app_run.images[0], "--model", app_run.onnx,
                              "--top-k", "0"), "--top-k")
    assert_usage_error(porter("predict", tmp_path / "missing.png", "--model", app_run.onnx),
                       "missing.png")


def test_exported_onnx_carries_no_build_machine_path(app_run: AppRun) -> None:
    data = app_run.onnx.read_bytes()
    for path in {str(REPO), str(REPO.resolve()), sys.prefix, os.path.realpath(sys.prefix),
                 sys.base_prefix, os.path.expanduser("~"), str(app_run.run)}:
        assert path.encode() not in data, path
    # The stack traces are still there, module-relative: useful, not machine-specific.
    assert b"port/models/resnet.py" in data


def test_run_files_get_the_users_normal_mode(app_run: AppRun) -> None:
    # Every file the run wrote (checkpoints, ONNX, manifest, train.yaml, curves, metrics):
    # readable by a service running as another user whenever the umask allows it.
    umask = os.umask(0)
    os.umask(umask)
    files = [p for p in app_run.run.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert {app_run.onnx, app_run.run / "model.pt", app_run.run / "manifest.json"} <= set(files)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_metadata_is_utf8_and_flat_keys_have_one_format() -> None:
    from port.data.preprocess import Preprocess

    card = ModelCard("resnet9", 3, ["chat noir", "猫", "a,b"], Preprocess.for_size(224, (0.5,) * 3,
                                                                               (0.25,) * 3))
    meta = card_metadata(card, precision="fp32", source_sha256="0" * 64)
    assert "猫" in meta["porter.card"] and "\\u" not in meta["porter.card"]
    assert meta["porter.classes"].split("\n") == card.classes
    assert meta["porter.resize"] == "256" and meta["porter.crop"] == "224"
    assert meta["porter.interpolation"] == "bilinear" and meta["porter.antialias"] == "true"
    assert meta["porter.resize_mode"] == "shorter_side"
    assert meta["porter.input_shape"] == "-1,3,224,224"
    assert json.loads(meta["porter.card"])["schema"] == 1
    assert card_from_metadata(meta) == card
    with pytest.raises(Exception, match="line break"):
        card_metadata(ModelCard("x", 1, ["a\nb"], card.preprocess), precision="fp32",
                      source_sha256=None)


def test_python_example_classifies_a_folder(app_run: AppRun) -> None:
    folder = app_run.images[0].parent
    result = subprocess.run([sys.executable, "examples/python/classify_folder.py",
                             str(app_run.onnx), str(folder), "--top-k", "2"], cwd=REPO,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1].endswith("(CPUExecutionProvider)") and "images/s" in lines[-1]
    with port.load(app_run.onnx) as predictor:
        first = sorted(folder.iterdir())[0]
        assert lines[0].startswith(f"{first}: {predictor.predict(first).label} ")
