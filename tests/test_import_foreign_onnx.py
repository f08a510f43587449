"""`porter import` of ONNX files made elsewhere (issue 8, items 1 and 3 at import time).

Each foreign form is written here (onnx.helper, the legacy TorchScript exporter, external data,
porter's own INT8 export) and imported through the real CLI entry point; the card recorded in the
manifest must say what the graph says, flags may only add what it cannot say, and every refusal
is one line on stderr with exit code 2 that names the value the model wants.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from tests.inprocess import cli, refused
from tests.onnx_graphs import graph_model

RGB = ["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
GRAY = ["--mean", "0.1307", "--std", "0.3081"]


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _record(run: Path) -> dict:
    """The import record of the run's manifest."""
    return json.loads((run / "manifest.json").read_text())["artifacts"][0]


def _import(source: Path, run: Path, *flags: str) -> tuple[dict, dict, str]:
    """Import ``source`` into ``run``: (card, record params, stdout); the import must pass."""
    result = cli("import", source, "--run", run, *flags)
    assert result.code == 0, result.err
    params = _record(run)["params"]
    return params["card"], params, result.out


def _session_output(path: Path, card: dict) -> np.ndarray:
    """Run the run's model with ONNX Runtime from its own folder on a zero batch."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 2 for d in inp.shape]
    dtype = {"float16": np.float16, "float32": np.float32, "float64": np.float64}
    return sess.run(None, {inp.name: np.zeros(shape, dtype[card["input_dtype"]])})[0]


def test_gray_28px_nhwc_fixed_batch_float64(tmp_path: Path) -> None:
    source = _save(graph_model([1, 28, 28, 1], [1, 10], layout="NHWC", elem=TensorProto.DOUBLE),
                   tmp_path / "tf.onnx")
    card, params, out = _import(source, tmp_path / "run", *GRAY, "--classes",
                                ",".join(str(d) for d in range(10)))
    assert (card["channels"], card["batch"], card["input_dtype"]) == (1, 1, "float64")
    assert (card["preprocess"]["layout"], card["preprocess"]["image_size"]) == ("NHWC", 28)
    assert card["preprocess"]["mean"] == [0.1307] and card["classes"][3] == "3"
    assert (card["output_layout"], card["output_softmax"]) == ("NC", False)
    assert params["precision"] == "fp32" and params["opset"] == 17
    # What was read is printed in one line, before the usual one.
    assert "NHWC, 1 channel, fixed batch 1, 28x28, float64" in out and "fp32, opset 17" in out


def test_size_and_classes_read_from_the_graph(tmp_path: Path) -> None:
    source = _save(graph_model(["N", 3, 32, 32], ["N", 10]), tmp_path / "m.onnx")
    card, _, _ = _import(source, tmp_path / "run", *RGB, "--color-order", "bgr")  # no size
    assert (card["num_classes"], card["preprocess"]["image_size"], card["batch"]) == (10, 32,
                                                                                       None)
    assert (card["channels"], card["preprocess"]["color_order"]) == (3, "BGR")


def test_ir3_initializers_as_inputs(tmp_path: Path) -> None:
    model = graph_model(["N", 3, 32, 32], ["N", 10], init_as_input=True)
    model.ir_version = 3
    model.opset_import[0].version = 8
    card, params, _ = _import(_save(model, tmp_path / "old.onnx"), tmp_path / "run", *RGB)
    assert card["input_name"] == "image" and params["opset"] == 8


def test_nc11_softmax_head(tmp_path: Path) -> None:
    source = _save(graph_model(["N", 3, 32, 32], ["N", 1000, 1, 1], head="softmax",
                               classes=1000), tmp_path / "caffe2.onnx")
    card, _, _ = _import(source, tmp_path / "run", *RGB)
    assert (card["num_classes"], card["output_layout"], card["output_softmax"]) == (1000, "NC11",
                                                                                    True)


def test_legacy_torchscript_export_one_channel(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 10)).eval()
    path = tmp_path / "mnist.onnx"
    torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"},
                                                                           "y": {0: "n"}})
    card, _, out = _import(path, tmp_path / "run", *GRAY)
    assert (card["input_name"], card["output_name"], card["channels"]) == ("x", "y", 1)
    assert (card["preprocess"]["image_size"], card["num_classes"], card["batch"]) == (28, 10,
                                                                                      None)
    assert "NCHW, 1 channel, any batch, 28x28, float32" in out


def test_external_data_is_copied_loaded_and_covered(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    source = folder / "model.onnx"
    onnx.save(graph_model(["N", 3, 32, 32], ["N", 10]), str(source), save_as_external_data=True,
              location="model.onnx.data", size_threshold=0)
    run = tmp_path / "run"
    card, params, _ = _import(source, run, *RGB)
    assert params["external_data"] == ["model.onnx.data"]
    assert (run / "model.onnx.data").read_bytes() == (folder / "model.onnx.data").read_bytes()
    # The run's copy loads on its own: the checker with its weights, and ONNX Runtime.
    onnx.checker.check_model(onnx.load(str(run / "model.onnx")), full_check=True)
    assert _session_output(run / "model.onnx", card).shape == (2, 10)
    # The data file is covered by the manifest: changed, the model shows as modified.
    assert "model.onnx.data" in _record(run)["metrics"]["files"]
    status = cli("status", "--run", run)
    assert status.code == 0 and "fresh" in status.out
    with (run / "model.onnx.data").open("r+b") as f:
        f.write(b"\x01\x02\x03\x04")
    status = cli("status", "--run", run)
    assert "modified" in status.out and "model.onnx.data" in status.out


def test_external_data_counts_in_the_evaluated_size(tmp_path: Path, cifar_subset_dir: Path
                                                     ) -> None:
    """The report's size of an imported model with external weights is the graph plus them."""
    folder = tmp_path / "export"
    (folder / "weights").mkdir(parents=True)
    source = folder / "model.onnx"
    onnx.save(graph_model(["N", 3, 32, 32], ["N", 10]), str(source), save_as_external_data=True,
              location="weights/model.onnx.data", size_threshold=0)
    run = tmp_path / "run"
    _import(source, run, *RGB)
    result = cli("evaluate", "--run", run, "--data", cifar_subset_dir, "--limit", "20",
                 "--batch-sizes", "4")
    assert result.code == 0, result.err
    row = json.loads((run / "report" / "report.json").read_text())["rows"][0]
    graph, data = (run / "model.onnx").stat().st_size, (run / "weights/model.onnx.data")
    assert data.stat().st_size > 0
    assert row["size_bytes"] == graph + data.stat().st_size


def test_porters_own_int8_reimported_as_int8(tmp_path: Path) -> None:
    """An FP32 graph carrying porter's card, quantized by porter's own INT8 exporter (the
    network is a tiny onnx.helper one to keep this fast; the bytes are porter's)."""
    from port.data.preprocess import Preprocess
    from port.export.quantize import quantize_int8
    from port.models.card import ModelCard
    from port.models.card_codec import card_metadata, set_metadata

    card = ModelCard(arch="resnet18_cifar", num_classes=10, classes=[f"c{i}" for i in range(10)],
                     preprocess=Preprocess.for_size(32, (0.5,) * 3, (0.25,) * 3),
                     input_name="image", output_name="logits")
    model = graph_model(["batch", 3, 32, 32], ["batch", 10])
    set_metadata(model, card_metadata(card, precision="fp32", source_sha256=None))
    fp32 = _save(model, tmp_path / "model.fp32.onnx")
    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    quantize_int8(fp32, tmp_path / "model.int8.onnx", images, progress=False)
    imported, params, out = _import(tmp_path / "model.int8.onnx", tmp_path / "run")
    assert params["precision"] == "int8" and "int8, opset" in out
    assert imported["arch"] == "resnet18_cifar" and imported["classes"][0] == "c0"
    # The card is the file's: a flag that says otherwise is refused, one that agrees is fine.
    refused(cli("import", tmp_path / "model.int8.onnx", "--run", tmp_path / "other",
                "--mean", "0.1,0.1,0.1"), "--mean 0.1,0.1,0.1 contradicts",
            "its porter card says 0.5,0.5,0.5")
    assert cli("import", tmp_path / "model.int8.onnx", "--run", tmp_path / "same",
               "--num-classes", "10").code == 0
    # Nothing lower can be made from an INT8 reference: each precision says so, and what to do.
    run = tmp_path / "run"
    refused(cli("export", "--run", run, "--to", "onnx", "--precision", "fp32"),
            "already an ONNX model (int8)", "--to trt", "import the FP32 model")
    for precision in ("fp16", "int8"):  # before any data is asked for
        refused(cli("export", "--run", run, "--to", "onnx", "--precision", precision),
                "already an ONNX model (int8)", "import the FP32 model")
    assert json.loads((run / "manifest.json").read_text())["artifacts"][0]["id"] == "model"
    assert len(json.loads((run / "manifest.json").read_text())["artifacts"]) == 1


# -- refusals: one line, exit 2, the value the model wants and the fix -------------------------
REFUSALS = {
    "wrong rank": (lambda: graph_model(["N", 3, 32, 32], ["N", 10]), "rank", RGB,
                   ["rank 3", "porter feeds image batches of rank 4"]),
    "4 channels": (lambda: graph_model(["N", 4, 32, 32], ["N", 10]), None, RGB,
                   ["takes 4 channels (NCHW)", "re-export the model for 1 or 3 channels"]),
    "2 channels NHWC": (lambda: graph_model(["N", 32, 32, 2], ["N", 10], layout="NHWC"), None,
                        RGB, ["takes 2 channels (NHWC)"]),
    "no image input": (lambda: graph_model([1, 3, 32, 32], [1, 10], init_as_input=True),
                       "no-input", RGB, ["has no image input"]),
    "several inputs": (lambda: graph_model(["N", 3, 32, 32], ["N", 10], extra_inputs=1), None,
                       RGB, ["has 2 inputs ('image', 'aux0')", "one image input"]),
    "no class axis": (lambda: graph_model(["N", 3, 32, 32], ["N", 10, 4, 4]), None, RGB,
                      ["[N, 10, 4, 4], a feature map", "[N, C] or [N, C, 1, 1]"]),
    "size flag": (lambda: graph_model(["N", 3, 32, 32], ["N", 10]), None,
                  [*RGB, "--image-size", "64"],
                  ["--image-size 64 contradicts", "takes 32 px", "pass --image-size 32"]),
    "class flag": (lambda: graph_model(["N", 3, 32, 32], ["N", 1000], classes=1000), None,
                   [*RGB, "--num-classes", "10"],
                   ["--num-classes 10 contradicts", "has 1000 classes", "drop --num-classes"]),
    "layout flag": (lambda: graph_model(["N", 3, 32, 32], ["N", 10]), None,
                    [*RGB, "--layout", "NHWC"], ["--layout NHWC contradicts", "is NCHW"]),
    "ambiguous layout": (lambda: graph_model(["N", 3, "h", 3], ["N", 10]), None, RGB,
                         ["could be NCHW or NHWC: pass --layout NCHW or --layout NHWC"]),
    "rgb mean for gray": (lambda: graph_model(["N", 1, 28, 28], ["N", 10]), None, RGB,
                          ["--mean has 3 values but the model takes 1 channel: pass one value"]),
    "non-square": (lambda: graph_model(["N", 3, 32, 48], ["N", 10]), None, RGB,
                   ["takes 32x48 images; porter feeds square images"]),
    "huge fixed batch": (lambda: graph_model([100_000, 3, 32, 32], [100_000, 10]), None, RGB,
                         ["fixed batch of 100000", "at most 65536"]),
    "uint8 input": (lambda: graph_model(["N", 3, 32, 32], ["N", 10], elem=TensorProto.UINT8),
                    None, RGB, ["is uint8", "float16, float32 or float64"]),
}


def test_a_graph_onnx_runtime_cannot_load_is_refused(tmp_path: Path) -> None:
    model = graph_model(["N", 3, 32, 32], ["N", 10])
    model.graph.node[-1].op_type, model.graph.node[-1].domain = "Flatten2", "com.example"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    refused(cli("import", _save(model, tmp_path / "m.onnx"), "--run", tmp_path / "run", *RGB),
            "ONNX Runtime cannot load", "Flatten2", "porter doctor")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals(case: str, tmp_path: Path) -> None:
    make, edit, flags, fragments = REFUSALS[case]
    model = make()
    if edit == "rank":
        model.graph.input[0].type.tensor_type.shape.dim.pop()
    elif edit == "no-input":  # the image became a weight: every input is an initializer
        image = model.graph.input[0]
        model.graph.initializer.append(onnx.numpy_helper.from_array(
            np.zeros((1, 3, 32, 32), np.float32), image.name))
    source = _save(model, tmp_path / "m.onnx")
    refused(cli("import", source, "--run", tmp_path / "run", *flags), *fragments)
    assert not (tmp_path / "run").exists()  # a refused import leaves nothing behind


def _external(folder: Path, location: str) -> Path:
    """A model whose weight tensor says its data is at ``location`` (relative to folder)."""
    model = graph_model(["N", 3, 32, 32], ["N", 10])
    onnx.save(model, str(folder / "m.onnx"), save_as_external_data=True,
              location="m.onnx.data", size_threshold=0)
    proto = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, str(folder / "m.onnx"))
    return folder / "m.onnx"


@pytest.mark.parametrize(("location", "fragments"), [
    ("../secret.data", ["'../secret.data' leaves the model's folder"]),
    ("/etc/hostname", ["'/etc/hostname' is an absolute path"]),
    ("link.data", ["'link.data' is a link to", "outside the model's folder"]),
    ("gone.data", ["keeps its weights in 'gone.data', which is missing",
                   "put the data file next to the model"]),
    ("manifest.json", ["'manifest.json' has a name porter uses in a run"]),
])
def test_external_data_refusals(location: str, fragments: list, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    source = _external(folder, location)
    outside = tmp_path / "secret.data"
    outside.write_bytes((folder / "m.onnx.data").read_bytes())
    if location == "link.data":
        os.symlink(outside, folder / "link.data")
    if location == "manifest.json":
        (folder / "m.onnx.data").rename(folder / "manifest.json")
    line = refused(cli("import", source, "--run", tmp_path / "run", *RGB), *fragments)
    assert "opset" not in line
    assert not (tmp_path / "run").exists()


def test_mean_with_two_values_is_refused_by_the_cli(tmp_path: Path) -> None:
    source = _save(graph_model(["N", 3, 32, 32], ["N", 10]), tmp_path / "m.onnx")
    refused(cli("import", source, "--run", tmp_path / "run", "--mean", "0.5,0.5",
                "--std", "0.2"), "--mean needs one number per channel")
