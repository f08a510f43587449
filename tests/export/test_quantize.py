"""INT8 QDQ export on a small CNN trained on real CIFAR-10 images (CPU, ONNX Runtime)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from port.data.datasets import load_split, materialize
from port.data.preprocess import CIFAR10_MEAN, CIFAR10_STD, Preprocess
from port.data.spec import parse_data_spec
from port.engines.int8_cpu import int8_weight_bits, ort_u8s8_saturates
from port.engines.onnxrt import OnnxRuntimeRunner
from port.export.calibration import select_calibration
from port.export.onnx import export_onnx
from port.export.quantize import count_qdq, quantize_int8
from port.ground.cpu import cpu_info, describe
from port.ground.errors import DataError, ModelError, UsageError
from port.models.card import ModelCard

REPO = Path(__file__).resolve().parents[2]
# Training recipe of the test model; part of the cache key so a change retrains.
TRAIN = {"steps": 400, "batch": 32, "lr": 0.05, "width": 12, "seed": 0}
CALIB_IMAGES = 256  # from the training split, as `porter export --precision int8` does


class SmallNet(nn.Module):
    """Stem, strided stage, residual block, global pool, linear (~4 M MACs at width 12)."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()

        def cbr(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                                 nn.BatchNorm2d(c_out), nn.ReLU())

        w = width
        self.stem = cbr(3, w)
        self.down1 = cbr(w, 2 * w, stride=2)
        self.res = nn.Sequential(cbr(2 * w, 2 * w), cbr(2 * w, 2 * w))
        self.down2 = cbr(2 * w, 4 * w, stride=2)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down1(self.stem(x))
        x = self.down2(x + self.res(x))  # the Add exercises QDQ on a residual join
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _train(images: np.ndarray, labels: np.ndarray) -> SmallNet:
    """A few hundred SGD steps with flips: enough for a clearly better-than-chance model."""
    torch.manual_seed(TRAIN["seed"])
    gen = torch.Generator().manual_seed(TRAIN["seed"])
    model = SmallNet(width=TRAIN["width"])
    opt = torch.optim.SGD(model.parameters(), lr=TRAIN["lr"], momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, TRAIN["lr"], total_steps=TRAIN["steps"])
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    model.train()
    for _ in range(TRAIN["steps"]):
        idx = torch.randint(0, len(x_all), (TRAIN["batch"],), generator=gen)
        x, y = x_all[idx], y_all[idx]
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@pytest.fixture(scope="module")
def cifar(cifar_subset_dir: Path) -> dict:
    """Preprocessed train and test images of the CIFAR-10 subset, with the split metadata."""
    spec = parse_data_spec(str(cifar_subset_dir))
    train = load_split(spec, "train")
    test = load_split(spec, "val")
    x_train, y_train = materialize(train)
    x_test, y_test = materialize(test)
    return {"train": train, "x_train": x_train, "y_train": y_train, "x_test": x_test,
            "y_test": y_test}


@pytest.fixture(scope="module")
def fp32_onnx(cifar: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained SmallNet exported by porter's ONNX exporter (TorchScript, dynamic batch).

    Weights are cached in .cache/ keyed by the recipe and torch version: training takes tens of
    seconds on a busy 2-core CPU and is deterministic, so later sessions reuse it.
    """
    torch.set_num_threads(2)
    key = hashlib.sha256(json.dumps([TRAIN, torch.__version__, len(cifar["x_train"])])
                         .encode()).hexdigest()[:12]
    cache = REPO / ".cache" / f"test-quantize-smallnet-{key}.pt"
    if cache.is_file():
        model = SmallNet(width=TRAIN["width"])
        model.load_state_dict(torch.load(cache, weights_only=True))
        model.eval()
    else:
        model = _train(cifar["x_train"], cifar["y_train"])
        cache.parent.mkdir(exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(cache)
    split = cifar["train"]
    card = ModelCard(arch="smallnet", num_classes=10, classes=split.classes,
                     preprocess=split.preprocess)
    path = tmp_path_factory.mktemp("int8") / "model.onnx"
    export_onnx(model, card, path, sample=cifar["x_test"][:8], exporter="torchscript")
    return path


def _logits(path: Path, images: np.ndarray, kernels: str = "auto") -> np.ndarray:
    """Logits through porter's ONNX Runtime runner: on a CPU without VNNI, ``auto`` runs the
    exact int8 kernels (what the model computes), ``fast`` the saturating ones."""
    with OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"], int8_kernels=kernels) as r:
        return np.concatenate([r.infer({"input": images[i:i + 100]})[r.output_names()[0]]
                               for i in range(0, len(images), 100)])


def _top1(path: Path, images: np.ndarray, labels: np.ndarray, kernels: str = "auto") -> float:
    return float(np.mean(_logits(path, images, kernels).argmax(1) == labels))


def _paired_noise(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> float:
    """Three standard deviations of the top-1 difference of two models on the same images.

    Only images one model gets right and the other wrong move the difference (McNemar): with d
    of them among n, the net change has a standard deviation of about sqrt(d) / n. A weak test
    model flips many images, so a fixed 1-2% margin can sit inside that noise on one CPU and
    outside it on the next.
    """
    discordant = int(np.sum((a.argmax(1) == labels) != (b.argmax(1) == labels)))
    return 3 * float(np.sqrt(discordant)) / len(labels)


def _calibration_images(cifar: dict, count: int = CALIB_IMAGES, seed: int = 0) -> np.ndarray:
    cs = select_calibration(len(cifar["x_train"]), count, seed)
    return cifar["x_train"][cs.indices]


@pytest.fixture(scope="module")
def int8_onnx(fp32_onnx: Path, cifar: dict) -> tuple[Path, dict]:
    out = fp32_onnx.with_name("model.int8.onnx")
    metrics = quantize_int8(fp32_onnx, out, _calibration_images(cifar), progress=True)
    return out, metrics


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An untrained SmallNet export and random 'images': enough for graph and error checks."""
    torch.manual_seed(0)
    images = np.random.default_rng(0).standard_normal((16, 3, 32, 32), dtype=np.float32)
    card = ModelCard(arch="smallnet", num_classes=10, classes=[f"c{i}" for i in range(10)],
                     preprocess=Preprocess.for_size(32, CIFAR10_MEAN, CIFAR10_STD))
    path = tmp_path_factory.mktemp("untrained") / "model.onnx"
    export_onnx(SmallNet(width=8).eval(), card, path, sample=images[:4], exporter="torchscript")
    int8 = path.with_name("model.int8.onnx")
    quantize_int8(path, int8, images, progress=False)
    return {"fp32": path, "int8": int8, "images": images}


# Tests that need the trained model: the first one in a fresh checkout trains it (about a minute
# on two busy cores), later sessions load it from .cache/.
@pytest.mark.slow
def test_int8_keeps_99_percent_of_fp32_top1(fp32_onnx: Path, int8_onnx: tuple[Path, dict],
                                             cifar: dict,
                                             record_property: pytest.RecordProperty) -> None:
    path, metrics = int8_onnx
    ref = _top1(fp32_onnx, cifar["x_test"], cifar["y_test"])
    got = _top1(path, cifar["x_test"], cifar["y_test"])
    record_property("fp32_top1", ref)
    record_property("int8_top1", got)
    print(f"\nFP32 top-1 {ref:.4f}, INT8 QDQ top-1 {got:.4f} on {len(cifar['y_test'])} test "
          f"images ({got / ref:.2%} kept); {metrics['seconds']} s to calibrate+quantize")
    assert ref > 0.3, "the test model did not train: the INT8 comparison would mean nothing"
    assert got >= 0.99 * ref


@pytest.mark.slow
def test_int8_graph_is_symmetric_qdq_with_metadata(fp32_onnx: Path,
                                                   int8_onnx: tuple[Path, dict]) -> None:
    path, metrics = int8_onnx
    model = onnx.load(str(path))
    n_q, n_dq = count_qdq(model)
    assert n_q > 0 and n_dq > n_q  # weights get DequantizeLinear only
    assert (metrics["quantize_linear_nodes"], metrics["dequantize_linear_nodes"]) == (n_q, n_dq)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    # TensorRT takes only signed INT8 with zero point 0, and no INT32 (bias) DequantizeLinear.
    assert zero_points and not any(zp.any() for zp in zero_points)
    assert {zp.dtype for zp in zero_points} == {np.dtype(np.int8)}
    dq_inputs = [inits[n.input[0]].dtype for n in model.graph.node
                 if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert dq_inputs and set(dq_inputs) == {np.dtype(np.int8)}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    weight_dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    per_channel = [inits[weight_dq[c.input[1]].input[1]].size for c in convs]
    assert all(size > 1 for size in per_channel)  # one scale per output channel
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    source = {p.key: p.value for p in onnx.load(str(fp32_onnx)).metadata_props}
    props = {p.key: p.value for p in model.metadata_props}
    assert props["porter.precision"] == "int8"
    assert all(props[k] == v for k, v in source.items() if k != "porter.precision")
    info = json.loads(props["porter.quantization"])
    assert info["method"] == "minmax" and info["per_channel"] is True
    assert info["activations"] == "int8 symmetric"
    assert info["weight_range"] == "full" and info["reduce_range"] is False
    assert metrics["weight_bits"] == 8 and metrics["check_int8_kernels"]
    assert metrics["check_top1_agreement"] >= 0.75
    assert metrics["bytes"] == path.stat().st_size < metrics["fp32_bytes"]


@pytest.mark.slow
def test_full_and_7bit_weights_on_this_cpu(fp32_onnx: Path, int8_onnx: tuple[Path, dict],
                                           cifar: dict, tmp_path: Path) -> None:
    """The documented INT8 behaviour, checked for the kind of CPU this runs on.

    Needs: an x86 CPU (with or without VNNI) or ARM; the expectation follows the CPU's flags.
    - Without VNNI (saturating U8S8 kernels): the full-range graph on ORT's fast kernels differs
      from the same graph on the exact kernels; 7-bit weights make the fast kernels exact.
    - With VNNI, or on ARM: fast and exact kernels agree for both graphs.
    Either way the graph porter gates (full range, exact kernels) keeps 99% of FP32 top-1.
    """
    full, _ = int8_onnx
    seven = tmp_path / "model.int8-7bit.onnx"
    metrics = quantize_int8(fp32_onnx, seven, _calibration_images(cifar), weight_range="7bit",
                            progress=False)
    assert metrics["weight_bits"] == int8_weight_bits(seven) == 7
    assert int8_weight_bits(full) == 8
    saturates = bool(cpu_info()["int8_u8s8_saturates"])
    assert ort_u8s8_saturates() == saturates, f"flags and ONNX Runtime disagree: {describe()}"
    x, y = cifar["x_test"], cifar["y_test"]
    full_fast, full_exact = _logits(full, x, "fast"), _logits(full, x, "exact")
    seven_fast, seven_exact = _logits(seven, x, "fast"), _logits(seven, x, "exact")
    ref = _top1(fp32_onnx, x, y)
    top1 = {name: float(np.mean(v.argmax(1) == y)) for name, v in (
        ("full fast", full_fast), ("full exact", full_exact), ("7bit fast", seven_fast))}
    print(f"\n{describe()}\nFP32 {ref:.4f}; INT8 " + ", ".join(
        f"{k} {v:.4f}" for k, v in top1.items()))
    np.testing.assert_allclose(seven_fast, seven_exact, atol=1e-5)
    if saturates:
        assert np.max(np.abs(full_fast - full_exact)) > 1e-3, "expected saturation on this CPU"
    else:
        np.testing.assert_allclose(full_fast, full_exact, atol=1e-5)
    fp32 = _logits(fp32_onnx, x)
    # The gated graph keeps 99% of FP32's top-1, one bit less of weights 98%, or each is within
    # the sampling noise of its flips (the model is small and weak: ~42% top-1).
    assert top1["full exact"] >= min(0.99 * ref, ref - _paired_noise(fp32, full_exact, y))
    assert top1["7bit fast"] >= min(0.98 * ref, ref - _paired_noise(fp32, seven_fast, y))


@pytest.mark.slow
def test_calibration_is_reproducible(fp32_onnx: Path, cifar: dict, tmp_path: Path) -> None:
    images = _calibration_images(cifar, count=64, seed=11)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    quantize_int8(fp32_onnx, a, images, progress=False)
    quantize_int8(fp32_onnx, b, _calibration_images(cifar, count=64, seed=11), progress=False)
    assert a.read_bytes() == b.read_bytes()
    # A different draw gives different activation scales: the seed really picks the images.
    c = tmp_path / "c.onnx"
    quantize_int8(fp32_onnx, c, _calibration_images(cifar, count=64, seed=12), progress=False)
    assert _scales(a) != _scales(c)


def _scales(path: Path) -> dict[str, list[float]]:
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    return {n.input[1]: onnx.numpy_helper.to_array(inits[n.input[1]]).ravel().tolist()
            for n in model.graph.node if n.op_type == "QuantizeLinear"}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(fp32_onnx: Path, cifar: dict, tmp_path: Path,
                                   method: str) -> None:
    out = tmp_path / f"{method}.onnx"
    metrics = quantize_int8(fp32_onnx, out, _calibration_images(cifar, count=64), method=method,
                            progress=False)
    assert metrics["method"] == method
    assert metrics["quantize_linear_nodes"] > 0
    got = _top1(out, cifar["x_test"], cifar["y_test"])
    ref = _top1(fp32_onnx, cifar["x_test"], cifar["y_test"])
    print(f"\n{method}: INT8 top-1 {got:.4f} vs FP32 {ref:.4f}")
    assert got >= 0.95 * ref  # sanity only; the 99% gate is on the default method


@pytest.mark.slow
def test_uint8_activations_for_cpu_only_use(fp32_onnx: Path, cifar: dict, tmp_path: Path) -> None:
    out = tmp_path / "u8.onnx"
    metrics = quantize_int8(fp32_onnx, out, _calibration_images(cifar, count=64),
                            activation_type="uint8", progress=False)
    assert metrics["activations"] == "uint8 asymmetric"
    model = onnx.load(str(out))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    dtypes = {inits[n.input[2]].dtype for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert dtypes == {np.dtype(np.uint8)}


def test_corrupt_onnx_is_a_model_error(tmp_path: Path, untrained: dict) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage, not a protobuf" * 10)
    with pytest.raises(ModelError) as info:
        quantize_int8(bad, tmp_path / "out.onnx", untrained["images"], progress=False)
    assert "\n" not in str(info.value) and "re-export" in str(info.value)
    assert not (tmp_path / "out.onnx").exists()


def test_missing_onnx_is_a_model_error(tmp_path: Path, untrained: dict) -> None:
    with pytest.raises(ModelError, match="not found"):
        quantize_int8(tmp_path / "nope.onnx", tmp_path / "out.onnx", untrained["images"])


def test_no_calibration_images_is_a_usage_error(untrained: dict, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no images") as info:
        quantize_int8(untrained["fp32"], tmp_path / "out.onnx",
                      np.zeros((0, 3, 32, 32), np.float32))
    assert "\n" not in str(info.value)


def test_bad_arguments_are_usage_errors(untrained: dict, tmp_path: Path) -> None:
    fp32, images = untrained["fp32"], untrained["images"]
    with pytest.raises(UsageError, match="minmax, entropy, percentile"):
        quantize_int8(fp32, tmp_path / "o.onnx", images, method="kl")
    with pytest.raises(UsageError, match="int8, uint8"):
        quantize_int8(fp32, tmp_path / "o.onnx", images, activation_type="fp8")
    with pytest.raises(UsageError, match="uint8"):
        quantize_int8(fp32, tmp_path / "o.onnx", (images * 50).astype(np.uint8))
    with pytest.raises(DataError, match="shape"):
        quantize_int8(fp32, tmp_path / "o.onnx", images[:, :, :16, :16])
    assert not (tmp_path / "o.onnx").exists()


def test_int8_input_is_refused(untrained: dict, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="FP32"):
        quantize_int8(untrained["int8"], tmp_path / "again.onnx", untrained["images"])


def test_ort_cpu_fuses_every_conv_of_the_symmetric_graph(untrained: dict,
                                                         tmp_path: Path) -> None:
    # Each Q has private scale/zero-point initializers, so ORT's CSE cannot merge the dedicated
    # Q/DQ pairs and its S8->U8 rewrite + QLinearConv fusion reach every convolution.
    path = untrained["int8"]
    model = onnx.load(str(path))
    q_params = [n.input[1] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(q_params) == len(set(q_params))
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "session.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    n_conv = sum(n.op_type == "Conv" for n in model.graph.node)
    assert ops.count("QLinearConv") == n_conv and "Conv" not in ops


def test_logits_stay_float_and_relu_inputs_share_the_relu_output_scale(untrained: dict) -> None:
    model = onnx.load(str(untrained["int8"]))
    producer = {out: n for n in model.graph.node for out in n.output}
    # No Q/DQ on the graph output: the last layer writes float logits (no 8-bit grid, no ties).
    last = producer[model.graph.output[0].name]
    assert last.op_type == "Gemm", last.op_type
    info = json.loads({p.key: p.value for p in model.metadata_props}["porter.quantization"])
    assert info["float_outputs"] == [model.graph.output[0].name]
    logits = OnnxRuntimeRunner(untrained["int8"], providers=["CPUExecutionProvider"])
    with logits as r:
        out = r.infer({"input": untrained["images"]})[r.logits_output()]
    top2 = np.sort(out, axis=1)[:, -2:]
    assert (top2[:, 1] > top2[:, 0]).all()  # no exact ties between the two best classes
    # X -> Q1 -> DQ1 -> Relu -> Q2: Q1 rounds on Q2's grid (one rounding of the kept values).
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    relus = [n for n in model.graph.node if n.op_type == "Relu"]
    assert relus and info["relu_input_scales_tied"] == len(relus)
    for relu in relus:
        q1 = producer[producer[relu.input[0]].input[0]]
        assert q1.op_type == "QuantizeLinear"
        for q2 in readers[relu.output[0]]:
            assert inits[q1.input[1]] == inits[q2.input[1]]


class _ScaledHead(nn.Module):
    """conv -> relu -> pool -> linear -> * 0.125: a logit scale after the last layer (ResNet-9)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)) * 0.125


def _export_small(net: nn.Module, arch: str, images: np.ndarray, folder: Path) -> tuple[Path, Path]:
    """``net`` (seeded before it was built) exported by the legacy exporter: (fp32, int8 path)."""
    card = ModelCard(arch=arch, num_classes=10, classes=[f"c{i}" for i in range(10)],
                     preprocess=Preprocess.for_size(32, CIFAR10_MEAN, CIFAR10_STD))
    fp32, int8 = folder / f"{arch}.onnx", folder / f"{arch}.int8.onnx"
    export_onnx(net.eval(), card, fp32, sample=images[:4], exporter="torchscript")
    return fp32, int8


def test_logits_stay_float_through_a_logit_scale(untrained: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    fp32, int8 = _export_small(_ScaledHead(), "scaled", untrained["images"], tmp_path)
    metrics = quantize_int8(fp32, int8, untrained["images"], progress=False)
    model = onnx.load(str(int8))
    producer = {out: n for n in model.graph.node for out in n.output}
    tail = producer[model.graph.output[0].name]
    assert metrics["float_outputs"] == [model.graph.output[0].name]
    # Mul(Gemm output, scale): the Gemm's output reaches the Mul in float, no Q/DQ between.
    assert tail.op_type == "Mul"
    assert "Gemm" in {producer[i].op_type for i in tail.input if i in producer}


class _LayerNormNet(nn.Module):
    """ConvNeXt's pattern in miniature: conv, channels-last LayerNorm, GELU, pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x).permute(0, 2, 3, 1))
        return self.fc(nn.functional.gelu(x).mean((1, 2)))


def test_layernorm_weights_get_one_scale_without_warnings(
        untrained: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A LayerNorm's 1-D gamma has no channel axis: quantized with one symmetric scale, asked
    for up front, instead of ORT warning 'Axis 1 is out-of-range' per layer and falling back."""
    import logging

    from onnx import numpy_helper

    torch.manual_seed(0)
    fp32, int8 = _export_small(_LayerNormNet(), "ln", untrained["images"], tmp_path)
    assert "LayerNormalization" in {n.op_type for n in onnx.load(str(fp32)).graph.node}
    with caplog.at_level(logging.WARNING):
        metrics = quantize_int8(fp32, int8, untrained["images"], progress=False)
    assert not [r for r in caplog.records if "out-of-range" in r.getMessage()]
    assert metrics["per_tensor_weights"] == 1
    model = onnx.load(str(int8))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    norm = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    dq = producer[norm.input[1]]
    assert dq.op_type == "DequantizeLinear"
    assert inits[dq.input[1]].ndim == 0 and int(inits[dq.input[2]]) == 0  # one scale, symmetric
    x = untrained["images"][:8]
    got, want = (_logits(p, x) for p in (int8, fp32))
    assert np.abs(got - want).max() < 0.5 * np.abs(want).max()
