"""`porter import` of state dicts saved by other code bases (issue 8, item 4).

Every file here is a real ``torch.save`` of a real state dict in the layout another tool writes
(training-script containers, DDP and torch.compile prefixes, an EMA next to the weights,
renamed modules, torchvision's own ResNet-18), imported through the real CLI entry point. Each
case checks the exit code, the single error line of a refusal, and that the weights porter saved
are the source tensors bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from port.models.checkpoint import load_model
from port.models.registry import create_model
from tests.inprocess import cli, refused

ARCH = ["--arch", "resnet18_cifar", "--width", "0.125", "--data", "synthetic"]


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    """A narrow resnet18_cifar's state dict (10 classes): real parameters and BN buffers."""
    torch.manual_seed(1)
    return create_model("resnet18_cifar", 10, width=0.125).state_dict()


def _imported(run: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights porter saved in the run, and the import record's params."""
    model, _, _ = load_model(run / "model.pt")
    record = json.loads((run / "manifest.json").read_text())["artifacts"][0]
    return model.state_dict(), record["params"]


def _assert_same(loaded: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> None:
    assert loaded.keys() == source.keys()
    for key, value in source.items():
        assert torch.equal(loaded[key], value), key


# Each layout: how another code base wraps the weights -> the key porter reads them from.
LAYOUTS = {
    "bare": (lambda sd: sd, None),
    "state_dict": (lambda sd: {"state_dict": sd, "epoch": 90}, "state_dict"),
    "model_state_dict": (lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}},
                         "model_state_dict"),
    "model_state": (lambda sd: {"model_state": sd, "best_acc1": 0.7}, "model_state"),
    "model": (lambda sd: {"model": sd, "lr_scheduler": {"last_epoch": 3}}, "model"),
    "DDP module.": (lambda sd: {f"module.{k}": v for k, v in sd.items()}, None),
    "torch.compile _orig_mod.": (lambda sd: {"model": {f"_orig_mod.{k}": v
                                                       for k, v in sd.items()}}, "model"),
    "DDP around compile": (lambda sd: {f"module._orig_mod.{k}": v for k, v in sd.items()}, None),
    "porter's own EMA only": (lambda sd: {"ema": {"module": sd, "steps": 5, "updates": 5}},
                              "ema.module"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_container_layouts_import_bit_exact(layout: str, weights: dict, tmp_path: Path) -> None:
    wrap, key = LAYOUTS[layout]
    path = tmp_path / "w.pt"
    torch.save(wrap(weights), path)
    result = cli("import", path, "--run", tmp_path / "run", *ARCH)
    assert result.code == 0, result.err
    loaded, params = _imported(tmp_path / "run")
    _assert_same(loaded, weights)
    assert params["weights_key"] == key
    if key:
        assert f"weights from '{key}'" in result.out


def test_ema_is_taken_only_when_asked(weights: dict, tmp_path: Path) -> None:
    # torchvision's reference scripts: {"model": ..., "model_ema": AveragedModel.state_dict()}.
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"model": weights, "epoch": 3,
                "model_ema": {"n_averaged": torch.tensor(7),
                              **{f"module.{k}": v for k, v in ema.items()}}}, path)
    plain = cli("import", path, "--run", tmp_path / "plain", *ARCH)
    assert plain.code == 0, plain.err
    assert "also in the file: 'model_ema'" in plain.out
    _assert_same(_imported(tmp_path / "plain")[0], weights)

    asked = cli("import", path, "--run", tmp_path / "ema", *ARCH, "--weights-key", "model_ema")
    assert asked.code == 0, asked.err
    loaded, params = _imported(tmp_path / "ema")
    _assert_same(loaded, ema)
    assert params["weights_key"] == "model_ema"
    assert params["stripped_prefixes"] == ["module."] and params["dropped_keys"] == ["n_averaged"]

    refused(cli("import", path, "--run", tmp_path / "none", *ARCH, "--weights-key", "swa"),
            "--weights-key 'swa'", "model", "model_ema")
    assert not (tmp_path / "none").exists()


def test_renamed_keys_are_listed_then_mapped(weights: dict, tmp_path: Path) -> None:
    # A backbone/head code base: every key under backbone., the classifier called head.
    renamed = {("head." + k[3:]) if k.startswith("fc.") else f"backbone.{k}": v
               for k, v in weights.items()}
    path = tmp_path / "renamed.pt"
    torch.save({"state_dict": renamed}, path)
    line = refused(cli("import", path, "--run", tmp_path / "run", *ARCH),
                   "does not fit the model", "missing conv1.weight [8, 3, 3, 3]",
                   "closest in the file: backbone.conv1.weight [8, 3, 3, 3]",
                   "unexpected backbone.conv1.weight", "try --key-map backbone.=")
    assert f"{len(weights)} missing, {len(weights)} unexpected" in line  # every key renamed
    assert not (tmp_path / "run").exists()

    # With the backbone mapped, what is left is the head, and the hint names its rename.
    refused(cli("import", path, "--run", tmp_path / "run", *ARCH, "--key-map", "backbone.="),
            "2 missing, 2 unexpected", "missing fc.weight [10, 64] (closest in the file: "
            "head.weight [10, 64])", "try --key-map head.=fc.")

    result = cli("import", path, "--run", tmp_path / "run", *ARCH,
                 "--key-map", "backbone.=", "--key-map", "head.=fc.")
    assert result.code == 0, result.err
    loaded, params = _imported(tmp_path / "run")
    _assert_same(loaded, weights)
    assert params["key_map"] == ["backbone.=", "head.=fc."]


@pytest.mark.parametrize(("flag", "fragment"), [
    ("backbone", "is not OLD=NEW"),
    ("nope.=x.", "matches no key of"),
    ("layer1.=layer2.", "gives two entries the name"),
])
def test_bad_key_maps_are_refused(flag: str, fragment: str, weights: dict,
                                  tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(weights, path)
    refused(cli("import", path, "--run", tmp_path / "run", *ARCH, "--key-map", flag), fragment)
    assert not (tmp_path / "run").exists()


def test_extra_and_reshaped_keys_are_named(weights: dict, tmp_path: Path) -> None:
    extra = dict(weights, **{"aux.weight": torch.zeros(3)})
    extra["fc.bias"] = torch.zeros(11)
    path = tmp_path / "w.pt"
    torch.save(extra, path)
    refused(cli("import", path, "--run", tmp_path / "run", *ARCH),
            "0 missing, 1 unexpected, 1 of other shape", "unexpected aux.weight [3]",
            "fc.bias is [11] in the file but [10] in the model", "check --arch resnet18_cifar")


def test_torchvision_resnet18_loads_into_porters_resnet18(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18-tv.pth"
    torch.save(source, path)
    imagenet = ["--image-size", "224", "--mean", "0.485,0.456,0.406",
                "--std", "0.229,0.224,0.225"]
    result = cli("import", path, "--run", tmp_path / "run", "--arch", "resnet18",
                 "--num-classes", "1000", *imagenet)
    assert result.code == 0, result.err
    _assert_same(_imported(tmp_path / "run")[0], source)

    # The CIFAR variant shares every name but the stem is 3x3: said as exactly that.
    refused(cli("import", path, "--run", tmp_path / "cifar", "--arch", "resnet18_cifar",
                "--num-classes", "1000", *imagenet),
            "0 missing, 0 unexpected, 1 of other shape",
            "conv1.weight is [64, 3, 7, 7] in the file but [64, 3, 3, 3] in the model")


def test_key_map_on_an_onnx_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not read")
    refused(cli("import", path, "--run", tmp_path / "run", "--key-map", "a.=b."),
            "apply to state_dict files")
