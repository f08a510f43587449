"""ONNX FP32 export: checker, self-contained file, metadata, dynamic batch, parity against torch.

Everything here is real: a small ResNet from the model registry, synthetic images through the
data pipeline, torch.onnx, onnx.checker and ONNX Runtime on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from port.data.datasets import load_split, materialize
from port.data.spec import parse_data_spec
from port.export.onnx import check_parity, export_onnx
from port.ground.errors import ModelError, UsageError
from port.models.card import ModelCard
from port.models.card_codec import card_from_metadata, card_metadata, read_card, read_metadata
from port.models.registry import create_model

SHA = "ab" * 32


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, list[str]]:
    """Eight real preprocessed images (synthetic set) and the class names."""
    split = load_split(parse_data_spec("synthetic"), "val", limit=8, seed=0)
    images, _ = materialize(split)
    return images, split.classes


@pytest.fixture(scope="module")
def card(data: tuple[np.ndarray, list[str]]) -> ModelCard:
    from port.data.datasets import default_preprocess

    classes = data[1]
    return ModelCard(arch="resnet18_cifar", num_classes=len(classes), classes=classes,
                     preprocess=default_preprocess(parse_data_spec("synthetic")),
                     model_kwargs={"width": 0.125})


@pytest.fixture(scope="module")
def model(card: ModelCard, data: tuple[np.ndarray, list[str]]) -> torch.nn.Module:
    """A narrow ResNet-18 whose BatchNorm statistics come from real images (not the 0/1 init)."""
    torch.manual_seed(0)
    net = create_model(card.arch, card.num_classes, **card.model_kwargs)
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(data[0]))
    return net.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, model: torch.nn.Module, card: ModelCard,
             data: tuple[np.ndarray, list[str]]) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("dynamo") / "model.onnx"
    metrics = export_onnx(model, card, out, sample=data[0], source_sha256=SHA)
    return out, metrics


def test_dynamo_export_is_one_checked_file_with_metrics(exported: tuple[Path, dict]) -> None:
    path, metrics = exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no sidecar, no temp
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL
                   for init in proto.graph.initializer)
    assert metrics["exporter"] == "dynamo" and metrics["opset"] >= 17
    assert metrics["bytes"] == path.stat().st_size
    assert metrics["agreement"] == 1.0 and metrics["max_abs_diff"] <= 1e-4
    assert metrics["parity_images"] == 8 and metrics["batch_sizes_checked"] == [8, 1]
    assert metrics["export_seconds"] > 0


def test_metadata_is_written_and_card_reads_back(exported: tuple[Path, dict],
                                                 card: ModelCard) -> None:
    path, _ = exported
    assert read_card(path) == card
    meta = read_metadata(path)
    assert meta["porter.classes"].split("\n") == card.classes
    assert meta["porter.input_name"] == "input" and meta["porter.output_name"] == "logits"
    assert meta["porter.input_shape"] == "-1,3,32,32" and meta["porter.schema"] == "1"
    assert meta["porter.layout"] == "NCHW" and meta["porter.color_order"] == "RGB"
    assert [float(v) for v in meta["porter.mean"].split(",")] == list(card.preprocess.mean)
    assert [float(v) for v in meta["porter.std"].split(",")] == list(card.preprocess.std)
    assert meta["porter.resize"] == "32" and meta["porter.crop"] == "32"
    assert meta["porter.precision"] == "fp32" and meta["porter.source_sha256"] == SHA
    assert meta["porter.arch"] == "resnet18_cifar" and meta["porter.version"]
    # What an app sees through ONNX Runtime without porter.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["porter.layout"] == "NCHW"


def test_batch_axis_is_dynamic(exported: tuple[Path, dict], model: torch.nn.Module,
                               data: tuple[np.ndarray, list[str]]) -> None:
    path, _ = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "input" and session.get_outputs()[0].name == "logits"
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic, not a fixed size
    images = data[0]
    for n in (1, 3, 8):
        (out,) = session.run(None, {"input": images[:n]})
        with torch.inference_mode():
            ref = model(torch.from_numpy(images[:n])).numpy()
        assert out.shape == (n, 10)
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-3)


def test_torchscript_exporter_also_works(tmp_path: Path, model: torch.nn.Module, card: ModelCard,
                                         data: tuple[np.ndarray, list[str]]) -> None:
    out = tmp_path / "ts.onnx"
    model.train()  # export runs in eval mode and hands the model back as it found it
    try:
        metrics = export_onnx(model, card, out, sample=data[0], exporter="torchscript", opset=17,
                              source_sha256=SHA)
        assert model.training
    finally:
        model.eval()
    assert metrics["exporter"] == "torchscript" and metrics["opset"] == 17
    assert read_card(out) == card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ts.onnx"]


def test_changed_weights_fail_the_parity_check(tmp_path: Path, exported: tuple[Path, dict],
                                               model: torch.nn.Module,
                                               data: tuple[np.ndarray, list[str]]) -> None:
    path, _ = exported
    images = data[0]
    with torch.inference_mode():
        reference = model(torch.from_numpy(images)).numpy()
    assert check_parity(path, reference, images)["agreement"] == 1.0
    # Damage the classifier's weight matrix in the ONNX proto itself.
    proto = onnx.load(str(path))
    fc = max((i for i in proto.graph.initializer if len(i.dims) == 2),
             key=lambda i: int(np.prod(i.dims)))
    fc.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(fc) * 1.5, fc.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    with pytest.raises(ModelError, match=r"ONNX export differs from PyTorch: max \|diff\| .* "
                                         r"on 8 images.*try --exporter torchscript"):
        check_parity(broken, reference, images)


class _Drifting(torch.nn.Module):
    """Reads Python state at call time: tracing freezes it, so export and eager disagree."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3 * 32 * 32, 10)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(torch.flatten(x, 1)) + float(self.calls)


def test_export_that_differs_from_torch_raises_and_leaves_no_file(
        tmp_path: Path, card: ModelCard, data: tuple[np.ndarray, list[str]]) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous export")
    with pytest.raises(ModelError, match=r"ONNX export differs from PyTorch.*--exporter dynamo"):
        export_onnx(_Drifting(), card, out, sample=data[0], exporter="torchscript")
    assert out.read_bytes() == b"previous export"  # the earlier file is kept, not half-replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temp files left


class _FrozenBatch(torch.nn.Module):
    """Turns the batch size into a Python int: the tracer bakes it into the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3 * 32 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(int(x.shape[0]), -1))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the very mistake under test
def test_frozen_batch_axis_is_caught(tmp_path: Path, card: ModelCard,
                                     data: tuple[np.ndarray, list[str]]) -> None:
    out = tmp_path / "model.onnx"
    with pytest.raises(ModelError, match=r"does not run at batch size 8.*not dynamic"):
        export_onnx(_FrozenBatch(), card, out, sample=data[0], exporter="torchscript")
    assert not out.exists()


def test_bad_arguments_are_usage_errors(tmp_path: Path, model: torch.nn.Module, card: ModelCard,
                                        data: tuple[np.ndarray, list[str]]) -> None:
    with pytest.raises(UsageError, match="choose one of dynamo, torchscript"):
        export_onnx(model, card, tmp_path / "m.onnx", sample=data[0], exporter="jit")
    with pytest.raises(UsageError, match=r"shape \(3, 16, 16\).*expects \(3, 32, 32\)"):
        export_onnx(model, card, tmp_path / "m.onnx", sample=data[0][:, :, :16, :16])
    # dynamo writes opset 18+ only; a lower request would silently come out as 18.
    with pytest.raises(UsageError, match=r"--opset 13 is outside .* \(18\.\.\d+\).*torchscript"):
        export_onnx(model, card, tmp_path / "m.onnx", sample=data[0], opset=13)
    assert list(tmp_path.iterdir()) == []


def test_one_image_still_checks_two_batch_sizes(tmp_path: Path, model: torch.nn.Module,
                                                card: ModelCard,
                                                data: tuple[np.ndarray, list[str]]) -> None:
    metrics = export_onnx(model, card, tmp_path / "m.onnx", sample=data[0][:1],
                          exporter="torchscript")
    assert metrics["parity_images"] == 1 and metrics["batch_sizes_checked"] == [2, 1]


def test_metadata_round_trip_without_a_file(card: ModelCard) -> None:
    meta = card_metadata(card, precision="int8", source_sha256=SHA,
                         extra={"calibration": {"images": 500}, "porter.note": "x"})
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert all(k.startswith("porter.") for k in meta)
    assert meta["porter.precision"] == "int8"
    assert json.loads(meta["porter.calibration"]) == {"images": 500}
    assert meta["porter.note"] == "x"
    assert card_from_metadata(meta) == card
    assert card_from_metadata({"producer": "other"}) is None
    with pytest.raises(ModelError, match="damaged"):
        card_from_metadata({"porter.card": "{not json"})


def test_read_card_of_an_onnx_made_elsewhere_is_none(tmp_path: Path) -> None:
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    assert read_card(path) is None
    (tmp_path / "junk.onnx").write_bytes(b"\x08\xff\xff garbage \x00")
    with pytest.raises(ModelError, match="not a readable ONNX file"):
        read_card(tmp_path / "junk.onnx")
    with pytest.raises(ModelError, match="not found"):
        read_card(tmp_path / "missing.onnx")
