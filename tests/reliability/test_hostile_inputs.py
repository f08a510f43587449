"""Hostile cards, flags and state dicts: refused in one line, nothing recorded, no run left over."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.reliability.conftest import IMPORT_FLAGS, cli, refused, snapshot


# -- ONNX files whose porter.card lies -----------------------------------------------------------
def _tiny_onnx(path: Path, *, outputs: int = 3, card: dict | str | None = None) -> Path:
    """A real 3x8x8 -> ``outputs`` classifier graph (pool + flatten + gemm), optionally carded."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((3, outputs), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", outputs])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if card is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = "porter.card", card if isinstance(card, str) else json.dumps(card)
    onnx.save(model, str(path))
    return path


def _card(**changes: object) -> dict:
    pre = {"image_size": 8, "resize": 8, "crop": 8, "mean": [0.5, 0.5, 0.5],
           "std": [0.25, 0.25, 0.25], "layout": "NCHW", "color_order": "RGB", "scale": 1 / 255}
    card = {"arch": "external-onnx", "num_classes": 3, "classes": ["a", "b", "c"],
            "preprocess": pre, "model_kwargs": {}, "input_name": "input", "output_name": "logits"}
    for key, value in changes.items():
        (pre if key in pre else card)[key] = value
    return card


HOSTILE_CARDS = {
    "mean of the wrong length": (_card(mean=[0.5, 0.5]), "2 mean values for 3 channels"),
    "zero std": (_card(std=[0.25, 0.0, 0.25]), "every std must be > 0"),
    "negative image size": (_card(image_size=-7, resize=-7, crop=-7), "image_size -7"),
    "terabyte image size": (_card(image_size=10**7, resize=10**7, crop=10**7), "image_size"),
    "fewer names than outputs": (_card(classes=["a", "b"]), "names 2 classes for 3 outputs"),
    "class count not the graph's": (_card(num_classes=5, classes=list("abcde")),
                                    "says 5 classes but the model has 3 outputs"),
    "huge class name": (_card(classes=["a", "b", "x" * 1_000_000]), "class name 2"),
    "NaN mean": ('{"arch": "x", "num_classes": 3, "classes": ["a", "b", "c"], "preprocess": '
                 '{"image_size": 8, "resize": 8, "crop": 8, "mean": [NaN, 0.5, 0.5], '
                 '"std": [0.2, 0.2, 0.2]}}', "non-finite or non-numeric mean"),
    "input the graph lacks": (_card(input_name="pixels"), "is not an input of the graph"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CARDS))
def test_hostile_onnx_card_is_refused_at_import(case: str, tmp_path: Path) -> None:
    card, fragment = HOSTILE_CARDS[case]
    model = _tiny_onnx(tmp_path / "m.onnx", card=card)
    run = tmp_path / "run"
    line = refused(cli("import", model, "--run", run), fragment)
    assert len(line) < 600  # a huge field is never echoed
    assert not run.exists()  # a refused import leaves no run directory behind


def test_an_honest_tiny_onnx_imports(tmp_path: Path) -> None:
    """The control case: the same graph with a valid card is accepted."""
    run = tmp_path / "run"
    made = cli("import", _tiny_onnx(tmp_path / "m.onnx", card=_card()), "--run", run)
    assert made.code == 0, made.err


# -- flags given to import -----------------------------------------------------------------------
BAD_IMPORT_FLAGS = {
    "zero std": (["--std", "0,0,0"], "--std must be in (0.0"),
    "negative image size": (["--image-size", "-7"], "--image-size must be an integer in [8"),
    "huge image size": (["--image-size", "100000"], "--image-size must be an integer in [8"),
    "NaN mean": (["--mean", "nan,0.5,0.5"], "--mean must be a finite number"),
    "infinite width": (["--width", "inf"], "--width must be a finite number"),
    "no classes": (["--num-classes", "0"], "--num-classes must be an integer in [1"),
    "huge class name": (["--classes", ",".join(["a"] * 9 + ["b" * 5000])], "class name 9"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMPORT_FLAGS))
def test_bad_import_flags_are_refused(case: str, state_dict: Path, tmp_path: Path) -> None:
    flags, fragment = BAD_IMPORT_FLAGS[case]
    run = tmp_path / "run"
    refused(cli("import", state_dict, "--run", run, "--arch", "resnet18_cifar",
                "--image-size", "32", "--mean", "0.5,0.5,0.5", "--std", "0.2,0.2,0.2",
                "--num-classes", "10", *flags), fragment)
    assert not run.exists()


# -- state dicts -------------------------------------------------------------------------------
def _save(obj: object, path: Path) -> Path:
    import torch

    torch.save(obj, path)
    return path


def test_state_dict_with_integer_keys(tmp_path: Path) -> None:
    import torch

    sd = _save({0: torch.zeros(2), "fc.weight": torch.zeros(10, 4)}, tmp_path / "int.pt")
    refused(cli("import", sd, "--run", tmp_path / "run", *IMPORT_FLAGS),
            "key 0 is a int, not a parameter name")
    assert not (tmp_path / "run").exists()


def test_state_dict_with_a_0_dim_classifier_weight(state_dict: Path, tmp_path: Path) -> None:
    import torch

    sd = torch.load(state_dict, weights_only=True)
    head = next(k for k, v in sd.items() if v.dim() == 2)  # the classifier's weight
    sd[head] = torch.tensor(3.0)
    path = _save(sd, tmp_path / "zero_dim.pt")
    refused(cli("import", path, "--run", tmp_path / "run", *IMPORT_FLAGS),
            f"{head} is [] in the file")


class _RunsCode:
    """A pickle that would call os.system on load."""

    def __reduce__(self) -> tuple:
        return (os.system, ("echo should-never-run",))


def test_code_needing_checkpoint_is_refused_as_such(tmp_path: Path) -> None:
    path = _save({"linear.weight": _RunsCode()}, tmp_path / "evil.pt")
    line = refused(cli("import", path, "--run", tmp_path / "run", *IMPORT_FLAGS),
                   "needs arbitrary unpickling", "system", "runs code", "not corrupt")
    assert "weights_only=False" not in line
    assert not (tmp_path / "run").exists()


# -- overwrites of files the manifest does not vouch for ---------------------------------------
def test_import_never_overwrites_an_unlisted_model(run: Path, state_dict: Path) -> None:
    (run / "manifest.json").unlink()  # the manifest is gone; the trained model is not
    before = snapshot(run)
    refused(cli("import", state_dict, "--run", run, *IMPORT_FLAGS),
            "model.pt exists but is not recorded", "will not overwrite")
    assert snapshot(run) == before


def test_export_never_overwrites_an_edited_onnx(run: Path) -> None:
    onnx_file = run / "model.fp32.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"hand edit")
    before = snapshot(run)
    for precision in ("fp32", "fp16"):  # directly, and as the source of an FP16 export
        refused(cli("export", "--run", run, "--to", "onnx", "--precision", precision),
                "'onnx-fp32' (model.fp32.onnx) is modified", "will not overwrite")
    assert snapshot(run) == before


def test_export_never_overwrites_an_unrecorded_file(run: Path) -> None:
    (run / "model.fp16.onnx").write_bytes(b"somebody's file")
    before = snapshot(run)
    refused(cli("export", "--run", run, "--to", "onnx", "--precision", "fp16"),
            "model.fp16.onnx exists but is not recorded")
    assert snapshot(run) == before


# -- numbers that reach allocations --------------------------------------------------------------
@pytest.mark.parametrize(("flags", "fragment"), [
    (["--batch-sizes", "100000000"], "--batch-sizes must be an integer in [1, 65536]"),
    (["--limit", "0"], "--limit must be an integer in [1"),
    (["--int8-min-ratio", "nan"], "--int8-min-ratio must be a finite number"),
    (["--min-agreement", "2"], "--min-agreement must be in [0.0, 1.0]"),
])
def test_evaluate_flags_are_bounded(run: Path, flags: list[str], fragment: str) -> None:
    before = snapshot(run)
    refused(cli("evaluate", "--run", run, *flags), fragment)
    assert snapshot(run) == before


def test_evaluate_batch_beyond_this_machines_memory(state_dict: Path, tmp_path: Path) -> None:
    """A 4096 px model with --batch-sizes 65536 would need TBs: refused before allocating."""
    run = tmp_path / "run"
    assert cli("import", state_dict, "--run", run, *IMPORT_FLAGS, "--image-size", "4096").code == 0
    before = snapshot(run)
    refused(cli("evaluate", "--run", run, "--limit", "2", "--batch-sizes", "65536"),
            "--batch-sizes 65536 needs", "GiB free", "pass smaller --batch-sizes")
    assert snapshot(run) == before


def test_calibration_count_is_bounded(run: Path) -> None:
    before = snapshot(run)
    refused(cli("export", "--run", run, "--to", "onnx", "--precision", "int8",
                "--calib-images", "0"), "--calib-images must be an integer in [1")
    assert snapshot(run) == before


# -- training flags ------------------------------------------------------------------------------
@pytest.mark.parametrize(("flags", "fragment"), [
    (["--lr", "inf"], "lr must be a finite number"),
    (["--width", "inf"], "width must be a finite number"),
    (["--width", "nan"], "width must be a finite number"),
    (["--epochs", "1", "--warmup-epochs", "3"], "pass --warmup-epochs 0"),
])
def test_train_refuses_non_finite_and_conflicting_flags(flags: list[str], fragment: str,
                                                        tmp_path: Path) -> None:
    run = tmp_path / "run"
    refused(cli("train", "--run", run, "--data", "synthetic", "--arch", "resnet18_cifar",
                *flags), fragment)
    assert not run.exists()


def test_train_batch_beyond_this_machines_memory(tmp_path: Path) -> None:
    # 4096 images of 2048 px: petabytes for one step. Refused after the data is opened (the
    # image size is the data's) and before the model or a batch is allocated.
    run = tmp_path / "run"
    refused(cli("train", "--run", run, "--data", "synthetic", "--arch", "resnet18_cifar",
                "--width", "0.125", "--limit", "20", "--val-limit", "10", "--epochs", "1",
                "--warmup-epochs", "0", "--workers", "0",
                "--batch-size", "4096", "--image-size", "2048", "--loader", "dataloader"),
            "a training step of 4096 images at 2048 px needs", "lower --batch-size")
    assert not (run / "model.pt").exists() and not (run / "checkpoints").exists()


def test_run_naming_a_file(tmp_path: Path, state_dict: Path) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    refused(cli("import", state_dict, "--run", file, *IMPORT_FLAGS), "is a file, not a directory")
    refused(cli("export", "--run", file, "--to", "onnx"), "is a file, not a run directory")
    refused(cli("import", state_dict, "--run", file / "sub", *IMPORT_FLAGS),
            f"is under the file {file}")
    assert file.read_text() == "mine"
