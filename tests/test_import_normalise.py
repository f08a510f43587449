"""`porter import` names unnamed nodes and sorts unsorted graphs, computing the same function.

Foreign exporters leave nodes unnamed (``--keep-fp32 NODE`` then has nothing to name) and a few
write nodes out of order (the ONNX checker refuses those). The unit tests drive
``port.importing.normalise`` on hand-built graphs; the CLI tests import such files, check the
run's copy with the ONNX checker and ONNX Runtime against the source's own outputs, and use a
generated name with ``--keep-fp32``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from port.importing.normalise import normalise_graph
from tests.inprocess import cli
from tests.onnx_graphs import graph_model

RGB = ["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]


def _shuffled(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with its nodes in reverse order (what the checker calls unsorted)."""
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _outputs(model: onnx.ModelProto | Path, images: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: images})[0]


def test_unnamed_nodes_get_stable_names_from_their_outputs() -> None:
    model = graph_model(["N", 3, 8, 8], ["N", 10])
    model.graph.node[0].name = "Conv_pooled"  # a taken name the generated one must step around
    assert sum(not n.name for n in model.graph.node) == len(model.graph.node) - 1
    fixed = normalise_graph(model.graph)
    names = [n.name for n in model.graph.node]
    assert fixed.named == len(names) - 1 and not fixed.sorted
    assert "Conv_map" in names and "Flatten_logits" in names
    assert len(set(names)) == len(names) and all(names)
    again = onnx.ModelProto()
    again.CopyFrom(model)
    assert not normalise_graph(again.graph).changed  # a normalised graph stays as it is
    assert again.SerializeToString() == model.SerializeToString()
    onnx.checker.check_model(model, full_check=True)


def test_an_unsorted_graph_is_sorted_and_a_sorted_one_left_alone() -> None:
    model = graph_model(["N", 3, 8, 8], ["N", 10])
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
    before = model.SerializeToString()
    assert not normalise_graph(model.graph).changed
    assert model.SerializeToString() == before
    shuffled = _shuffled(onnx.load_from_string(before))
    fixed = normalise_graph(shuffled.graph)
    assert fixed.sorted and fixed.named == 0
    assert [n.name for n in shuffled.graph.node] == [f"n{i}" for i in range(len(model.graph.node))]


def test_a_subgraph_reading_the_outer_scope_is_ordered_after_its_producer() -> None:
    """An ``If`` whose branches read a tensor made by a later node of the outer graph: the If
    moves after it (the reads of a body count as inputs of the node holding it)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    branch = helper.make_graph([helper.make_node("Identity", ["doubled"], ["out"])], "b", [],
                               [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])])
    nodes = [
        helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=branch),
        helper.make_node("Add", ["x", "x"], ["doubled"]),
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["flag"]),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y],
                              [numpy_helper.from_array(np.array(0, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    fixed = normalise_graph(model.graph)
    order = [n.op_type for n in model.graph.node]
    assert fixed.sorted and order.index("If") > max(order.index("Add"), order.index("Greater"))
    assert fixed.named == 6  # the four outer nodes and each branch's Identity
    onnx.checker.check_model(model, full_check=True)
    out = _outputs(model, np.array([1.0, 2.0], np.float32))
    np.testing.assert_array_equal(out, [2.0, 4.0])


def test_a_cycle_is_left_for_the_checker() -> None:
    nodes = [helper.make_node("Relu", ["b"], ["a"], name="r1"),
             helper.make_node("Relu", ["a"], ["b"], name="r2")]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info(
        "a", TensorProto.FLOAT, [1])])
    assert not normalise_graph(graph).changed


def test_import_of_an_unnamed_unsorted_graph(tmp_path: Path, cifar_subset_dir: Path) -> None:
    source = tmp_path / "elsewhere.onnx"
    original = graph_model(["N", 3, 32, 32], ["N", 10])
    onnx.save(_shuffled(original), str(source))
    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    want = _outputs(source, images)  # ONNX Runtime runs the unsorted file; the checker would not
    run = tmp_path / "run"
    result = cli("import", source, "--run", run, "--data", cifar_subset_dir, *RGB)
    assert result.code == 0, result.err
    said = " ".join(result.out.split())  # the console wraps at its width
    assert "normalised: named 3 unnamed nodes and sorted its nodes topologically" in said
    record = json.loads((run / "manifest.json").read_text())["artifacts"][0]
    assert record["params"]["normalised"]["named_nodes"] == 3
    assert record["params"]["normalised"]["sorted"] is True
    copy = onnx.load(str(run / "model.onnx"))
    onnx.checker.check_model(copy, full_check=True)
    np.testing.assert_array_equal(_outputs(run / "model.onnx", images), want)
    names = [n.name for n in copy.graph.node]
    assert "Conv_map" in names and all(names)
    # The generated names are what --keep-fp32 takes (it refused unnamed graphs before).
    result = cli("export", "--run", run, "--to", "onnx", "--precision", "fp16",
                 "--keep-fp32", "Conv_map")
    assert result.code == 0, result.err
    fp16 = onnx.load(str(run / "model.fp16.onnx"))
    conv = next(n for n in fp16.graph.node if n.name == "Conv_map")
    weight = next(t for t in fp16.graph.initializer if t.name == conv.input[1])
    assert weight.data_type == TensorProto.FLOAT  # kept in FP32, as asked


def test_import_normalises_a_graph_with_external_data(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    source = folder / "model.onnx"
    onnx.save(_shuffled(graph_model(["N", 3, 32, 32], ["N", 10])), str(source),
              save_as_external_data=True, location="weights.bin", size_threshold=0)
    run = tmp_path / "run"
    result = cli("import", source, "--run", run, *RGB)
    assert result.code == 0, result.err
    assert (run / "weights.bin").read_bytes() == (folder / "weights.bin").read_bytes()
    onnx.checker.check_model(onnx.load(str(run / "model.onnx")), full_check=True)
    images = np.ones((2, 3, 32, 32), np.float32)
    np.testing.assert_array_equal(_outputs(run / "model.onnx", images), _outputs(source, images))
    assert not [p.name for p in run.iterdir() if ".porter-tmp" in p.name]  # no scratch left
