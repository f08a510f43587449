"""torchvision's other classifier families as porter architectures (issue 23, first step).

Each entry is torchvision's own model: built by name, it runs at CIFAR size, exports to ONNX
with ONNX Runtime reproducing its logits, and a torchvision state_dict imports into it key for
key through the real CLI. One family is driven through train, export and evaluate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from port.models.registry import create_model, get_entry
from tests.inprocess import cli

ZOO = ["mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny",
       "regnet_x_400mf", "shufflenet_v2_x0_5", "squeezenet1_1"]


@pytest.mark.parametrize("name", ZOO)
def test_the_entry_is_torchvisions_model(name: str) -> None:
    import torchvision

    ours = create_model(name, 10)
    theirs = getattr(torchvision.models, name)(weights=None, num_classes=10)
    assert type(ours) is type(theirs)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    with torch.inference_mode():
        assert ours.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert get_entry(name).native_size == 224


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0", "convnext_tiny",
                                  "shufflenet_v2_x0_5", "squeezenet1_1"])
def test_export_reproduces_the_logits(name: str, tmp_path: Path) -> None:
    """HardSwish + SE, SiLU + SE, LayerNorm + GELU + layer scale, channel shuffle, a conv head."""
    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    x = torch.randn(2, 3, 64, 64)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    with torch.inference_mode():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bad_stochastic_depth_is_refused() -> None:
    from port.ground.errors import UsageError

    with pytest.raises(UsageError, match=r"drop path\) rate must be in \[0, 1\)"):
        create_model("efficientnet_b0", 10, stochastic_depth_prob=1.5)
    with pytest.raises(UsageError, match="does not accept width"):
        create_model("mobilenet_v3_small", 10, width=0.5)


def test_a_torchvision_checkpoint_imports_key_for_key(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(1)
    state = torchvision.models.efficientnet_b0(weights=None, num_classes=10).state_dict()
    torch.save(state, tmp_path / "effnet.pth")
    run = tmp_path / "run"
    result = cli("import", tmp_path / "effnet.pth", "--run", run, "--arch", "efficientnet_b0",
                 "--num-classes", "10", "--image-size", "32", "--mean", "0.485,0.456,0.406",
                 "--std", "0.229,0.224,0.225")
    assert result.code == 0, result.err
    saved = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], state[k]) for k in state)


def test_mobilenet_v3_trains_exports_and_evaluates(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = cli("train", "--run", run, "--arch", "mobilenet_v3_small", "--data", "synthetic",
                 "--epochs", "1", "--limit", "128", "--val-limit", "64", "--workers", "0",
                 "--warmup-epochs", "0")
    assert result.code == 0, result.err
    for precision in ("fp32", "fp16", "int8"):
        result = cli("export", "--run", run, "--to", "onnx", "--precision", precision,
                     *(["--calib-images", "64"] if precision == "int8" else []))
        assert result.code == 0, (precision, result.err)
    result = cli("evaluate", "--run", run, "--compare", "--limit", "64", "--batch-sizes", "1",
                 "--backends", "onnxruntime")
    assert result.code in (0, 1), result.err  # an untrained model: the verdict is not the point
    report = json.loads((run / "report" / "report.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert {"onnx-fp32@onnxruntime", "onnx-fp16@onnxruntime", "onnx-int8@onnxruntime"} <= set(rows)
    assert rows["onnx-fp32@onnxruntime"]["max_abs_diff"] < 1e-4
    # No ReLU after most layers: the INT8 CPU form's zero-point-128 pairs carry them.
    assert rows["onnx-int8@onnxruntime"]["int8_cpu"]["graph"]["signed_uint8_pairs"] > 0
    # Layerwise maps the INT8 graph's tensors to MobileNetV3's modules: the exporter's node
    # metadata is given back after quantization (ORT's pre-processing dropped all of it here).
    result = cli("evaluate", "--run", run, "--layerwise", "onnx-int8", "--images", "4")
    assert result.code in (0, 1), result.err
    layerwise = json.loads((run / "layerwise" / "onnx-int8.json").read_text())
    assert layerwise["compared"] > 50, layerwise["compared"]


def test_drop_path_reaches_the_models_that_have_stochastic_depth() -> None:
    from torchvision.ops import StochasticDepth

    from port.ground.errors import UsageError
    from port.train.model import model_kwargs
    from port.train.recipe import resolve

    cfg = resolve(None, {"arch": "efficientnet_b0", "drop_path": 0.3})
    build, card_kwargs = model_kwargs(cfg)
    assert build["stochastic_depth_prob"] == 0.3 and "stochastic_depth_prob" not in card_kwargs
    rates = [m.p for m in create_model("efficientnet_b0", 10, **build).modules()
             if isinstance(m, StochasticDepth)]
    assert rates and 0.25 < max(rates) <= 0.3  # torchvision ramps it up to the rate over depth
    with pytest.raises(UsageError, match="mobilenet_v3_small has no stochastic depth"):
        resolve(None, {"arch": "mobilenet_v3_small", "drop_path": 0.1})
    with pytest.raises(UsageError, match=r"drop path\) rate must be in \[0, 1\)"):
        resolve(None, {"arch": "convnext_tiny", "drop_path": 1.0})
