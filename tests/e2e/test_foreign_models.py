"""Models made elsewhere, through the whole pipeline on the real CLI and real images.

Each form other exporters write (tests/e2e/foreign.py: a 1-channel 28-px model from PyTorch's
legacy TorchScript exporter, NHWC, a fixed batch of 1, a ``[N, C, 1, 1]`` softmax head, a
float64 input, IR 3 with initializers listed as inputs, external data) goes
``import -> evaluate -> export --precision fp16 -> export --precision int8 ->
evaluate --compare``. The models have random weights (near-chance top-1), so the FP32/FP16
rows must agree with the reference and pass, and the INT8 row may miss its ratio gate: then
evaluate exits 1 and the only failing row is INT8, failed by that gate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.e2e.foreign import FORMS
from tests.inprocess import cli, refused

GRAY_PER_CLASS = {"train": 20, "test": 10}
LIMIT = "40"
# What the import must read from each graph (the card fields the later stages honour).
EXPECTED = {
    "gray28_torchscript": {"channels": 1, "image_size": 28},
    "nhwc": {"layout": "NHWC"},
    "batch1": {"batch": 1},
    "softmax_nc11": {"output_layout": "NC11", "output_softmax": True},
    "float64": {"input_dtype": "float64"},
    "ir3": {},
    "external": {},
}


@pytest.fixture(scope="session")
def gray28_dir(cifar_subset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A grayscale 28-px ImageFolder made from real CIFAR-10 JPEGs (PNG, lossless)."""
    root = tmp_path_factory.mktemp("gray28")
    for split, count in GRAY_PER_CLASS.items():
        for class_dir in sorted((cifar_subset_dir / split).iterdir()):
            out = root / split / class_dir.name
            out.mkdir(parents=True)
            for jpeg in sorted(class_dir.iterdir())[:count]:
                with Image.open(jpeg) as img:
                    gray = img.convert("L").resize((28, 28), Image.Resampling.BILINEAR)
                gray.save(out / f"{jpeg.stem}.png")
    return root


@pytest.fixture(autouse=True)
def brief_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """Time each latency row for a few runs, not a second: these tests check what each row is
    fed and which batch sizes it is timed at, not the speed (bench/ measures that)."""
    from port.evaluate import compare

    quick = {"warmup": 1, "min_runs": 3, "min_seconds": 0.0}
    for function in vars(compare).values():  # evaluate() and its streaming form
        defaults = getattr(function, "__kwdefaults__", None) or {}
        if callable(function) and "min_seconds" in defaults:
            monkeypatch.setattr(function, "__kwdefaults__", {**defaults, **quick})


def _artifacts(run: Path) -> dict[str, dict]:
    return {a["id"]: a for a in json.loads((run / "manifest.json").read_text())["artifacts"]}


def _card_fields(card: dict) -> dict:
    return {"channels": card["channels"], "image_size": card["preprocess"]["image_size"],
            "layout": card["preprocess"]["layout"], "batch": card["batch"],
            "input_dtype": card["input_dtype"], "output_layout": card["output_layout"],
            "output_softmax": card["output_softmax"]}


@pytest.mark.parametrize("form", list(FORMS))
def test_foreign_model_goes_through_every_stage(form: str, tmp_path: Path,
                                                cifar_subset_dir: Path,
                                                gray28_dir: Path) -> None:
    import port
    from port.models.card_codec import read_card

    source = FORMS[form](tmp_path / "made-elsewhere")
    gray = EXPECTED[form].get("channels") == 1
    data = gray28_dir if gray else cifar_subset_dir
    run = tmp_path / "run"
    # Only what a graph cannot say: a grayscale model's one-value mean/std.
    norm = ["--mean", "0.45", "--std", "0.25"] if gray else []
    got = cli("import", source, "--run", run, "--data", data, *norm)
    assert got.code == 0, got.err[-2000:]
    card = _artifacts(run)["model"]["params"]["card"]
    read = _card_fields(card)
    assert {k: read[k] for k in EXPECTED[form]} == EXPECTED[form], read

    got = cli("evaluate", "--run", run, "--limit", LIMIT, "--batch-sizes", "1")
    assert got.code == 0, got.err[-2000:]

    for precision in ("fp16", "int8"):
        extra = ["--calib-images", "24"] if precision == "int8" else []
        got = cli("export", "--run", run, "--to", "onnx", "--precision", precision, *extra)
        assert got.code == 0, (precision, got.err[-2000:])
        assert "Traceback" not in got.err
        # The export carries the card, so apps (port.load) can feed it without the run.
        exported = run / _artifacts(run)[f"onnx-{precision}"]["path"]
        carried = read_card(exported)
        assert carried is not None and _card_fields(carried.to_dict()) == read

    got = cli("evaluate", "--run", run, "--compare", "--limit", LIMIT, "--batch-sizes", "1,8")
    report = json.loads((run / "report" / "report.json").read_text())
    rows = {r["precision"]: r for r in report["rows"] if r["backend"] == "onnxruntime"}
    assert set(rows) == {"fp32", "fp16", "int8"}
    assert all(r["top1"] is not None for r in rows.values())
    assert rows["fp16"]["passed"] and rows["fp16"]["agreement"] >= 0.97, rows["fp16"]
    # OpenVINO runs every ONNX file too (a row per file), or says in the row why it cannot: its
    # CPU plugin has no f64 kernels, which is OpenVINO's limit, not a failure of the model.
    openvino = {r["artifact"]: r for r in report["rows"] if r["backend"] == "openvino"}
    assert set(openvino) == {"model", "onnx-fp16", "onnx-int8"}, sorted(openvino)
    for row in openvino.values():
        if row["passed"] is None:  # skipped: only OpenVINO's missing f64 kernels may say so
            assert form == "float64" and "does not support f64" in row["why"], row
        else:
            assert row["top1"] is not None and row["compute_precision"].startswith(
                ("fp16", "int8", "fp32")), row
    if form == "float64":  # the quantized graph keeps f64 parts OpenVINO's CPU cannot compile
        assert openvino["onnx-int8"]["passed"] is None, openvino["onnx-int8"]
    if got.code == 1:  # a failed gate: only INT8's ratio gate may fail these chance-level models
        failed = [r for r in report["rows"] if r["passed"] is False]
        assert {r["precision"] for r in failed} == {"int8"}, failed
        assert all("int8 gate" in r["why"] for r in failed), failed
    else:
        assert got.code == 0 and report["passed"], got.err[-2000:]
    if card["batch"] == 1:  # a fixed batch is timed only at the batch it allows, and says so
        for row in report["rows"]:
            assert list(row["latency_ms"]) == ["1"], row["latency_ms"]
            assert "fixed batch 1" in row["note"]
    else:
        assert all(list(r["latency_ms"]) == ["1", "8"] for r in report["rows"]
                   if r["passed"] is not None)  # a skipped row ran nothing to time

    # The app path: the FP16 export answers like evaluate's row does, on a real image file.
    images = sorted((data / "test").rglob("*.*"))[:3]
    with port.load(run / _artifacts(run)["onnx-fp16"]["path"]) as predictor:
        predictions = predictor.predict([str(p) for p in images], top_k=3)
        assert predictor.preprocess(str(images[0])).shape[1] == card["channels"]
    for pred in predictions:
        assert pred.classes[0] in card["classes"]
        assert 0.0 <= pred.probabilities[0] <= 1.0 + 1e-6
        if card["output_softmax"]:  # already probabilities: not squashed by a second softmax
            assert pred.probabilities[0] > 1.0 / len(card["classes"])


def test_a_colour_batch_for_a_grayscale_model_names_the_channels(tmp_path: Path,
                                                                 gray28_dir: Path) -> None:
    """A runner fed the wrong channel count says channels, not resize/crop (one line, exit 2
    through the CLI's error path)."""
    import port
    from port.ground.errors import DataError

    run = tmp_path / "run"
    source = FORMS["gray28_torchscript"](tmp_path / "made-elsewhere")
    assert cli("import", source, "--run", run, "--data", gray28_dir, "--mean", "0.45",
               "--std", "0.25").code == 0
    assert cli("export", "--run", run, "--to", "onnx", "--precision", "fp16").code == 0
    with port.load(run / "model.fp16.onnx") as predictor, \
            pytest.raises(DataError, match="1 \\(grayscale\\)") as err:
        predictor.logits(np.zeros((2, 3, 28, 28), np.float32))
    assert "resize/crop" not in str(err.value)
    # Calibration data that does not belong to the model (synthetic: other class names) is
    # refused in one line before anything is fed.
    refused(cli("export", "--run", run, "--to", "onnx", "--precision", "int8",
                "--calib-data", "synthetic"), "class")
