"""`--keep-fp32 auto` / `--exclude auto` on real CIFAR-10 images, through the real CLI.

The model is small and honest: random convolutions whose BatchNorm statistics come from real
images, and a linear head fitted in closed form on real training images, so it classifies real
CIFAR-10 well above chance without any training loop. Two problems are planted, neither of which
changes what the FP32 graph computes:

- FP16: block1's output is scaled by 2^14 (past FP16's 65504) and block2's weights divided by it.
- INT8: one of block2's channels is dead (always 0 after ReLU) and the head's weights on that
  channel are made 100x larger than the rest: per-channel INT8 weights then round every other
  weight of the head to (almost) zero, while the FP32 logits do not change at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from port.data.datasets import load_split, materialize
from port.data.spec import parse_data_spec
from port.export.onnx import export_onnx
from port.models.card import ModelCard
from tests.inprocess import cli, refused

PLANT_FP16 = 2.0**14
DEAD = 5  # block2 channel that never fires
HEAD_OUTLIER = 100.0  # head weights on the dead channel, x the largest real one


class FeatNet(nn.Module):
    """Two conv-bn-relu blocks, global pool, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                    nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32),
                                    nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.block2(self.block1(x)), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _planted_model(x_train: np.ndarray, y_train: np.ndarray, *, plant: bool = True) -> FeatNet:
    """FeatNet with real BatchNorm statistics and a fitted head; the two faults when ``plant``
    (bench/autofix_sensitivity.py also uses the clean one)."""
    torch.manual_seed(0)
    model = FeatNet()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative statistics over the real images below
    model.train()
    with torch.no_grad():
        for start in range(0, len(x_train), 100):
            model(torch.from_numpy(x_train[start:start + 100]))
        model.eval()
        bn2 = model.block2[1]
        bn2.weight[DEAD], bn2.bias[DEAD] = 0.0, -0.01  # dead channel: ReLU(-0.01) = 0
        # The head: ridge regression on the real training features (closed form).
        feats = model.features(torch.from_numpy(x_train)).double().numpy()
        feats1 = np.hstack([feats, np.ones((len(feats), 1))])
        target = np.eye(10)[y_train] - 0.1
        coef = np.linalg.solve(feats1.T @ feats1 + 1e-2 * np.eye(feats1.shape[1]),
                               feats1.T @ target)
        model.fc.weight.copy_(torch.from_numpy(coef[:-1].T))
        model.fc.bias.copy_(torch.from_numpy(coef[-1]))
        if not plant:
            return model
        # INT8 plant: huge head weights on the dead channel (no effect in FP32).
        big = HEAD_OUTLIER * model.fc.weight.abs().max()
        model.fc.weight[:, DEAD] = big * torch.tensor([(-1) ** i for i in range(10)])
        # FP16 plant: block1's output x 2^14 (BN affine; ReLU commutes), undone by block2's conv.
        model.block1[1].weight.mul_(PLANT_FP16)
        model.block1[1].bias.mul_(PLANT_FP16)
        model.block2[0].weight.div_(PLANT_FP16)
    return model


@pytest.fixture(scope="module")
def planted_run(cifar_subset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose reference is the planted FP32 ONNX, imported with the real CLI."""
    spec = parse_data_spec(str(cifar_subset_dir))
    train = load_split(spec, "train", seed=0)
    x_train, y_train = materialize(train)
    model = _planted_model(x_train, y_train)
    card = ModelCard(arch="featnet", num_classes=10, classes=train.classes,
                     preprocess=train.preprocess)
    base = tmp_path_factory.mktemp("autofix")
    path = base / "featnet.onnx"
    export_onnx(model, card, path, sample=x_train[:8], exporter="torchscript")
    outcome = cli("import", path, "--run", base / "run", "--data", cifar_subset_dir)
    assert outcome.code == 0, outcome.err[-2000:]
    return base / "run"


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / "run"))


def _record(run: Path, art_id: str) -> dict:
    manifest = json.loads((run / "manifest.json").read_text())
    return next(a for a in manifest["artifacts"] if a["id"] == art_id)


def test_fp16_auto_keeps_the_planted_overflow_in_fp32(planted_run: Path, tmp_path: Path) -> None:
    run = _copy(planted_run, tmp_path)
    # Without help the export is refused: FP16 would overflow in block1.
    refused(cli("export", "--run", run, "--to", "onnx", "--precision", "fp16"), "overflow",
            "--keep-fp32")
    outcome = cli("export", "--run", run, "--to", "onnx", "--precision", "fp16",
                  "--keep-fp32", "auto")
    assert outcome.code == 0, outcome.out[-3000:] + outcome.err[-2000:]
    record = _record(run, "onnx-fp16")
    auto = record["metrics"]["autofix"]
    assert auto["passed"] and auto["steps"][0]["why"] == "start"
    chosen = record["params"]["keep_fp32"]
    assert chosen == auto["chosen"] and any(n.startswith("/block1/") for n in chosen)
    assert all(f["kept_fp32"] for f in record["metrics"]["findings"] if f["kind"] == "overflow")
    assert "step 0" in outcome.out and "held-out" in outcome.out
    # The written graph computes finite logits that agree with FP32 on the held-out images.
    assert record["metrics"]["ort_cpu"]["finite"]
    assert auto["steps"][-1]["agreement"] >= 0.99


def test_ranking_names_the_layer_where_a_blind_fp16_conversion_overflows(
        planted_run: Path, cifar_subset_dir: Path, tmp_path: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from port.export.sensitivity import candidate_nodes, rank_layers

    fp32_path = planted_run / "model.onnx"
    fp32 = onnx.load(str(fp32_path))
    blind = tmp_path / "blind.fp16.onnx"  # converted without the pre-flight's FP32 layers
    onnx.save(convert_float_to_float16(fp32, keep_io_types=True), str(blind))
    images, _ = materialize(load_split(parse_data_spec(str(cifar_subset_dir)), "train",
                                       limit=32, seed=0))
    ranking = rank_layers(fp32_path, blind, images, candidate_nodes(fp32, "fp16"), "fp16")
    assert ranking[0].node == "/block1/block1.0/Conv" and ranking[0].added == float("inf")
    assert ranking[0].to_dict()["added"] == "inf"
    # Layers after it inherit the overflow: none of them is blamed for it.
    assert all(np.isfinite(r.added) for r in ranking[1:])
    assert json.dumps([r.to_dict() for r in ranking], allow_nan=False)


def test_int8_auto_never_lowers_accuracy_and_records_each_step(planted_run: Path,
                                                               tmp_path: Path) -> None:
    run = _copy(planted_run, tmp_path)
    outcome = cli("export", "--run", run, "--to", "onnx", "--precision", "int8",
                  "--calib-images", "64", "--exclude", "auto", "--max-fp32-layers", "3")
    assert outcome.code in (0, 1), outcome.out[-3000:] + outcome.err[-2000:]
    record = _record(run, "onnx-int8")
    auto = record["metrics"]["autofix"]
    steps = auto["steps"]
    assert len(steps) >= 2 and steps[0]["why"] == "start"
    kept = [s for s in steps if s["accepted"]]
    top1 = [s["top1"] for s in kept]
    assert top1 == sorted(top1) and max(s["top1"] for s in steps) <= top1[-1] + 1e-12
    assert all(s["step"] <= 3 for s in steps)
    # The planted head is what INT8 breaks: it ranks first and keeping it FP32 passes the gate.
    assert auto["ranking"][0]["node"] == "/fc/Gemm"
    assert auto["passed"] and outcome.code == 0
    assert auto["chosen"] == record["params"]["exclude"] and "/fc/Gemm" in auto["chosen"]
    for s in steps:
        assert f"step {s['step']}" in outcome.out

    # The layers kept in FP32 are FP32 in the written file: float weights, and no
    # DequantizeLinear in front of them (their pass-through unit in front, e.g. the pooling
    # before the head, is FP32 too, so the layer reads FP32 activations).
    graph = onnx.load(str(run / record["path"])).graph
    producer = {o: n for n in graph.node for o in n.output}
    floats = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    by_name = {n.name: n for n in graph.node}
    layers = [s["tried"] for s in kept[1:]]
    assert layers and set(layers) <= set(auto["chosen"])
    for name in layers:
        node = by_name[name]
        for tensor in node.input:
            up = producer.get(tensor)
            assert up is None or up.op_type != "DequantizeLinear", (name, tensor)
        assert node.input[1] in floats


def test_gate_not_reached_writes_the_best_model_and_exits_1(planted_run: Path,
                                                            tmp_path: Path) -> None:
    run = _copy(planted_run, tmp_path)
    outcome = cli("export", "--run", run, "--to", "onnx", "--precision", "int8",
                  "--calib-images", "64", "--exclude", "auto", "--max-fp32-layers", "0")
    assert outcome.code == 1, outcome.out[-3000:] + outcome.err[-2000:]
    record = _record(run, "onnx-int8")  # written and recorded all the same
    auto = record["metrics"]["autofix"]
    assert not auto["passed"] and auto["chosen"] == [] and len(auto["steps"]) == 1
    assert "budget spent" in auto["stop_reason"] and (run / record["path"]).is_file()
    lines = [line for line in outcome.out.splitlines() if "did not reach" in line]
    assert len(lines) == 1 and "exit 1" in lines[0]


@pytest.mark.parametrize(("args", "fragments"), [
    (["--precision", "fp16", "--exclude", "auto"], ["--exclude", "int8"]),
    (["--precision", "int8", "--exclude", "auto", "--max-fp32-layers", "-1"],
     ["--max-fp32-layers", "negative"]),
    (["--precision", "int8", "--max-fp32-layers", "2"], ["--exclude auto"]),
    (["--precision", "int8", "--exclude", "/no/such/Conv"], ["/no/such/Conv", "unknown"]),
    (["--precision", "fp16", "--keep-fp32", "auto,/no/such/Conv"], ["/no/such/Conv"]),
])
def test_refusals_exit_2(planted_run: Path, tmp_path: Path, args: list[str],
                         fragments: list[str]) -> None:
    run = _copy(planted_run, tmp_path)
    refused(cli("export", "--run", run, "--to", "onnx", *args), *fragments)
    assert not (run / "model.int8.onnx").exists() and not (run / "model.fp16.onnx").exists()
