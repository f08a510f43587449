"""`porter evaluate --layerwise`: real CIFAR-10 images, a real (random-init) ResNet-9, real exports.

One run is imported and exported once (dynamo, the exporter whose node metadata maps tensors to
modules); the faults are planted in copies: a perturbed conv initializer, an FP16 graph whose
conv outputs overflow, edited .npy dumps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from port.models.registry import create_model
from tests.inprocess import cli, refused

WIDTH = "0.125"
IMAGES = "8"  # a few real images: the faults below are far over any tolerance


def _folder(source: Path, out: Path, per_class: int = 2) -> Path:
    """A tiny ImageFolder (train/ and val/) of real CIFAR-10 JPEGs."""
    for split, src in (("train", "train"), ("val", "test")):
        for cls in sorted(p.name for p in (source / src).iterdir()):
            target = out / split / cls
            target.mkdir(parents=True)
            for jpeg in sorted((source / src / cls).iterdir())[:per_class]:
                shutil.copyfile(jpeg, target / jpeg.name)
    return out


def _import(weights: dict, base: Path, name: str, data: Path) -> Path:
    torch.save(weights, base / f"{name}.pt")
    out = cli("import", base / f"{name}.pt", "--run", base / name, "--arch", "resnet9",
              "--width", WIDTH, "--data", data)
    assert out.code == 0, out.err
    return base / name


@pytest.fixture(scope="module")
def lw(cifar_subset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run (random-init ResNet-9 + its dynamo FP32 ONNX) and a twin with one conv scaled."""
    base = tmp_path_factory.mktemp("layerwise")
    data = _folder(cifar_subset_dir, base / "cifar")
    torch.manual_seed(0)
    state = create_model("resnet9", 10, width=float(WIDTH)).state_dict()
    run = _import(state, base, "run", data)
    out = cli("export", "--run", run, "--to", "onnx")
    assert out.code == 0, out.err
    return {"base": base, "data": data, "run": run, "state": state}


def _json(run: Path, name: str) -> dict:
    return json.loads((run / "layerwise" / f"{name}.json").read_text())


def _rows(result: dict) -> dict[str, dict]:
    return {e["module"]: e for e in result["layers"]}


def test_fp32_export_has_no_divergence_and_is_recorded(lw: dict[str, Path]) -> None:
    run = lw["run"]
    out = cli("evaluate", "--run", run, "--layerwise", "onnx-fp32", "--images", IMAGES)
    assert out.code == 0, out.err + out.out
    result = _json(run, "onnx-fp32")
    assert result["first_divergence"] is None
    rows = _rows(result)
    # Every module is a row, in execution order; the BN-folded conv has no tensor of its own.
    assert [e["module"] for e in result["layers"]][:3] == ["prep.0", "prep.1", "prep.2"]
    assert rows["prep.0"]["onnx_tensor"] is None and "folded into prep.1" in rows["prep.0"]["note"]
    assert rows["prep.1"]["folded"] == ["prep.0"]
    assert "prep" in rows["prep.2"]["aliases"]  # the Sequential ends in its ReLU
    compared = [e for e in result["layers"] if e["diverged"] is not None]
    assert len(compared) >= 20 and rows["(model)"]["onnx_tensor"] == "logits"
    for e in compared:
        assert e["rel_error"] < 1e-4 and e["cosine"] > 0.99999
        assert e["ref_std"] > 0 and abs(e["std"] - e["ref_std"]) <= 1e-4 * e["ref_std"]
    # The one float tensor that is no module's output is listed, not dropped.
    assert [u["tensor"] for u in result["unmatched"]] == ["amax"]
    record = next(r for r in json.loads((run / "manifest.json").read_text())["artifacts"]
                  if r["id"] == "layerwise-onnx-fp32")
    assert record["kind"] == "layerwise" and record["stage"] == "evaluate"
    assert {p["id"] for p in record["parents"]} == {"model", "onnx-fp32"}
    assert "layerwise/onnx-fp32.png" in record["metrics"]["files"]
    assert (run / "layerwise" / "onnx-fp32.png").stat().st_size > 10_000
    from port.manifest import Manifest

    hint = Manifest(run).remake_hint("layerwise-onnx-fp32")
    assert hint == f"`porter evaluate --run {run} --layerwise onnx-fp32`"


def test_perturbed_conv_is_caught_at_that_module_and_no_earlier(lw: dict[str, Path]) -> None:
    run = lw["run"]
    model = onnx.load(str(run / "model.fp32.onnx"))
    init = next(i for i in model.graph.initializer if i.name == "layer2.0.0.weight")
    weights = numpy_helper.to_array(init).copy()
    weights[0] *= 1.5  # one output channel of one conv
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    bad = lw["base"] / "perturbed.onnx"
    onnx.save(model, str(bad))

    out = cli("evaluate", "--run", run, "--layerwise", bad, "--images", IMAGES)
    assert out.code == 1, out.err + out.out
    assert "first divergence: layer2.0.1" in out.out and "layer2.0.0 folded" in out.out
    result = _json(run, "perturbed")
    assert result["first_divergence"] == "layer2.0.1"
    names = [e["module"] for e in result["layers"]]
    at = names.index("layer2.0.1")
    assert all(e["diverged"] in (False, None) for e in result["layers"][:at])
    assert result["layers"][at]["rel_error"] > 0.05
    assert result["top_growth"][0] == "layer2.0.1"
    # An unrecorded file: its content hash is recorded with the result.
    record = next(r for r in json.loads((run / "manifest.json").read_text())["artifacts"]
                  if r["id"] == "layerwise-perturbed")
    assert [p["id"] for p in record["parents"]] == ["model"]
    assert len(record["params"]["artifact_sha256"]) == 64


def test_fp16_overflow_is_caught_at_the_layer_that_overflows(lw: dict[str, Path]) -> None:
    from port.export.fp16 import convert_fp16

    # The reference itself has two convs scaled by 1000 (weights stay far below FP16's max):
    # the first one's output stays in range, the second one's exceeds 65504. FP32 holds both.
    hot_convs = ("layer1.2.res1.0.weight", "layer1.2.res2.0.weight")
    state = {k: v.clone() for k, v in lw["state"].items()}
    for name in hot_convs:
        state[name] *= 1000
    hot = _import(state, lw["base"], "hot", lw["data"])
    # The same scaling in the exported graph (BatchNorm folding scales the conv's weight only),
    # then porter's FP16 conversion without the activation pre-flight that would refuse it.
    model = onnx.load(str(lw["run"] / "model.fp32.onnx"))
    for init in model.graph.initializer:
        if init.name in hot_convs:
            init.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init) * np.float32(1000), init.name))
    onnx.save(model, str(hot / "hot.fp32.onnx"))
    convert_fp16(hot / "hot.fp32.onnx", hot / "hot.fp16.onnx")

    out = cli("evaluate", "--run", hot, "--layerwise", hot / "hot.fp32.onnx", "--images", IMAGES,
              "--tolerance", "1e-4")
    assert out.code == 0, out.err + out.out  # FP32 carries the large values exactly
    out = cli("evaluate", "--run", hot, "--layerwise", hot / "hot.fp16.onnx", "--images", IMAGES)
    assert out.code == 1, out.err + out.out
    result = _json(hot, "hot.fp16")
    assert result["precision"] == "fp16" and result["tolerance"] == 1e-2
    assert result["first_divergence"] == "layer1.2.res2.1"
    row = _rows(result)["layer1.2.res2.1"]
    assert row["nonfinite"] > 0 and row["rel_error"] is None  # inf in the JSON is null
    assert row["folded"] == ["layer1.2.res2.0"]
    names = [e["module"] for e in result["layers"]]
    for e in result["layers"][:names.index("layer1.2.res2.1")]:
        assert e["diverged"] in (False, None) and not e.get("nonfinite")


def test_against_finds_a_planted_error_in_dumped_activations(lw: dict[str, Path]) -> None:
    run, dump = lw["run"], lw["base"] / "dump"
    out = cli("evaluate", "--run", run, "--layerwise", "model", "--dump", dump,
              "--images", IMAGES)
    assert out.code == 0, out.err
    assert not (run / "layerwise" / "model.json").exists()  # a dump compares nothing
    assert np.load(dump / "input.npy").shape == (int(IMAGES), 3, 32, 32)
    assert np.load(dump / "layer2.0.1.npy").shape[0] == int(IMAGES)
    assert (dump / "prep.0.npy").is_file()  # every hooked module, the folded conv too

    hand = lw["base"] / "hand"
    shutil.copytree(dump, hand)
    bad = np.load(hand / "layer2.0.2.npy")
    bad[:, 0] += 1.0  # a lost bias on one channel, in the hand port
    np.save(hand / "layer2.0.2.npy", bad)
    (hand / "fc.npy").unlink()  # missing
    np.save(hand / "layer3.0.1.npy", np.zeros((int(IMAGES), 7), np.float32))  # misshaped
    np.save(hand / "head.extra.npy", np.zeros((int(IMAGES), 3), np.float32))  # extra
    out = cli("evaluate", "--run", run, "--layerwise", "model", "--against", hand)
    assert out.code == 1, out.err + out.out
    result = _json(run, "model-against-hand")
    assert result["first_divergence"] == "layer2.0.2"
    rows = _rows(result)
    names = [e["module"] for e in result["layers"]]
    # The unedited files match porter's own activations exactly (same input.npy, same model).
    for e in result["layers"][:names.index("layer2.0.2")]:
        assert e["diverged"] is None or e["max_abs_diff"] == 0.0, e
    assert rows["fc"]["diverged"] is None and "missing" in rows["fc"]["note"]
    assert rows["layer3.0.1"]["diverged"] is None and "shape [7]" in rows["layer3.0.1"]["note"]
    extra = next(u for u in result["unmatched"] if u["tensor"] == "head.extra.npy")
    assert extra["reason"].startswith("extra: no layer of that name")


def test_formats_without_a_layerwise_entry_are_refused(lw: dict[str, Path],
                                                        tmp_path: Path) -> None:
    # The registry says which formats --layerwise compares (Format.layerwise): an OpenVINO IR
    # has no entry yet, and is refused by name, listing the kinds that are.
    run = tmp_path / "run"
    shutil.copytree(lw["run"], run)
    assert cli("export", "--run", run, "--to", "openvino").code == 0
    refused(cli("evaluate", "--run", run, "--layerwise", "openvino-fp32"), "openvino-fp32",
            "of kind openvino", "onnx, engine, checkpoint")


def test_bad_inputs_exit_2_with_one_line(lw: dict[str, Path], tmp_path: Path) -> None:
    run = lw["run"]
    refused(cli("evaluate", "--run", run, "--layerwise", "onnx-nope"), "onnx-nope", "onnx-fp32")
    refused(cli("evaluate", "--run", run, "--layerwise", "model"), "reference itself")
    refused(cli("evaluate", "--run", run, "--against", tmp_path), "--layerwise")
    refused(cli("evaluate", "--run", run, "--layerwise", "onnx-fp32", "--images", "0"),
            "--images")
    refused(cli("evaluate", "--run", run, "--layerwise", "onnx-fp32", "--tolerance", "-1"),
            "--tolerance")
    refused(cli("evaluate", "--run", run, "--layerwise", "model", "--against", tmp_path / "no"),
            "not a directory")
    refused(cli("evaluate", "--run", run, "--layerwise", "model", "--against", tmp_path),
            "no <module>.npy")
    (tmp_path / "prep.1.npy").write_bytes(b"\x93NUMPY garbage")
    refused(cli("evaluate", "--run", run, "--layerwise", "model", "--against", tmp_path),
            "prep.1.npy", "numpy.save")
    np.save(tmp_path / "prep.1.npy", np.array(["a", "b"]))
    refused(cli("evaluate", "--run", run, "--layerwise", "model", "--against", tmp_path),
            "not floats")
    np.save(tmp_path / "prep.1.npy", np.zeros((2, 4), np.float32))
    np.save(tmp_path / "input.npy", np.zeros((2, 3, 16, 16), np.float32))
    refused(cli("evaluate", "--run", run, "--layerwise", "model", "--against", tmp_path),
            "input.npy", "[N, 3, 32, 32]")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    refused(cli("evaluate", "--run", run, "--layerwise", garbage), "garbage.onnx",
            "not a readable ONNX")


def test_int8_against_an_imported_onnx_reference(lw: dict[str, Path]) -> None:
    from port.data.datasets import load_split, materialize
    from port.data.spec import parse_data_spec
    from port.export.quantize import quantize_int8

    # An imported ONNX is its own reference: its FP32 graph, run with its tensors exposed.
    imported = lw["base"] / "imported"
    out = cli("import", lw["run"] / "model.fp32.onnx", "--run", imported, "--data", lw["data"])
    assert out.code == 0, out.err
    calib, _ = materialize(load_split(parse_data_spec(str(lw["data"])), "train", limit=16))
    int8 = lw["base"] / "model.int8.onnx"
    quantize_int8(imported / "model.onnx", int8, calib, progress=False)

    out = cli("evaluate", "--run", imported, "--layerwise", int8, "--images", IMAGES,
              "--tolerance", "10")  # mapping is checked here, not the (random) model's error
    assert out.code == 0, out.err + out.out
    result = _json(imported, "model.int8")
    assert result["precision"] == "int8" and result["reference"]["kind"] == "onnx"
    rows = _rows(result)
    # Module paths come from the imported graph's metadata; the INT8 row compares what the next
    # layer reads (the DequantizeLinear after the layer's QuantizeLinear).
    conv = rows["layer1.0.1"]
    assert conv["onnx_tensor"].endswith("DequantizeLinear_Output")
    assert conv["source_tensor"] == "getitem_3"
    assert 0 < conv["rel_error"] < 1 and conv["cosine"] > 0.5
    assert rows["(model)"]["onnx_tensor"] == "logits"
    reasons = {u["reason"] for u in result["unmatched"]}
    assert "dequantized constant (weights, biases)" in reasons


def test_a_dump_that_matches_no_layer_is_no_verdict(lw: dict[str, Path]) -> None:
    """--against a folder with the input but no layer file: 0 compared is exit 2, not a pass
    ("no layer over the tolerance" would claim what was never checked), and nothing recorded."""
    run, dump = lw["run"], lw["base"] / "dump-empty"
    assert cli("evaluate", "--run", run, "--layerwise", "model", "--dump", dump,
               "--images", IMAGES).code == 0
    for npy in dump.glob("*.npy"):
        if npy.name != "input.npy":
            npy.rename(dump / f"renamed_{npy.name}")  # a port that names its layers otherwise
    refused(cli("evaluate", "--run", run, "--layerwise", "model", "--against", dump),
            "compared 0 of", "no verdict", "missing: no")
    assert not (run / "layerwise" / "model-against-dump-empty.json").exists()


def test_scalar_constants_are_listed_not_sliced(lw: dict[str, Path]) -> None:
    """A graph whose float scalars are node outputs (a Constant 0.5 as in GELU, as the legacy
    exporter writes them) compares without a traceback; the scalar is listed as not per image."""
    from onnx import TensorProto, helper

    model = onnx.load(str(lw["run"] / "model.fp32.onnx"))
    last = model.graph.output[0].name
    producer = next(n for n in model.graph.node if last in n.output)
    producer.output[list(producer.output).index(last)] = "pre_scale"
    const = helper.make_node("Constant", [], ["one"], name="one_const",
                             value=helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]))
    # Inside module fc, as the dynamo exporter tags a GELU's 0.5: read outside it, so the module
    # map offers it as one of fc's outputs.
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    const.metadata_props.extend(gemm.metadata_props)
    model.graph.node.extend([
        const, helper.make_node("Mul", ["pre_scale", "one"], [last], name="scale_by_one")])
    source = lw["base"] / "scaled.onnx"
    onnx.save(model, str(source))
    imported = lw["base"] / "scaled-run"
    assert cli("import", source, "--run", imported, "--data", lw["data"]).code == 0
    out = cli("evaluate", "--run", imported, "--layerwise", source, "--images", IMAGES)
    assert out.code == 0, out.err + out.out
    result = _json(imported, "scaled")
    assert result["compared"] > 0 and result["first_divergence"] is None
    reasons = {u["tensor"]: u["reason"] for u in result["unmatched"]}
    assert reasons.get("one", "").startswith("not per image (shape [])"), result["unmatched"]
