"""model.pt: round trip, atomic writes, and refusal of unsafe, truncated or mismatched files."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
import torch

from port.data.preprocess import CIFAR10_MEAN, CIFAR10_STD, Preprocess
from port.ground.errors import ModelError
from port.models.card import ModelCard
from port.models.checkpoint import FORMAT, load_model, load_state_dict, save_model
from port.models.registry import create_model


def _card(num_classes: int = 10, arch: str = "resnet9") -> ModelCard:
    return ModelCard(
        arch=arch, num_classes=num_classes, classes=[f"c{i}" for i in range(num_classes)],
        preprocess=Preprocess.for_size(32, CIFAR10_MEAN, CIFAR10_STD),
        model_kwargs={"width": 0.25},
    )


def _model(num_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet9", num_classes, width=0.25)


def test_round_trip(tmp_path: Path) -> None:
    model, card = _model(), _card()
    path = save_model(tmp_path / "model.pt", model, card, extra={"config": {"lr": 0.1}})
    loaded, card2, payload = load_model(path)
    assert not loaded.training
    assert card2 == card
    assert payload["format"] == FORMAT and payload["config"] == {"lr": 0.1}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model.eval()(x))
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed away


def test_channels_last_model_saves_plain_layout(tmp_path: Path) -> None:
    model = _model().to(memory_format=torch.channels_last)
    save_model(tmp_path / "m.pt", model, _card())
    state = load_state_dict(tmp_path / "m.pt")
    assert all(t.is_contiguous() for t in state.values())


def test_overwrite_keeps_a_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_model(path, _model(), _card())
    save_model(path, _model(), _card(), extra={"note": "second"})
    assert load_model(path)[2]["note"] == "second"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nope.pt")


def test_refuses_pickled_module(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save(_model(), path)  # a whole nn.Module: loading it would run pickle code
    with pytest.raises(ModelError, match=r"^refused: .* needs arbitrary unpickling") as err:
        load_model(path)
    assert "state_dict" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelError, match="needs arbitrary unpickling"):
        load_state_dict(path)


def test_refuses_foreign_class(tmp_path: Path) -> None:
    # torchvision's reference script stores its argparse.Namespace next to the weights.
    path = tmp_path / "with_args.pt"
    torch.save({"model": _model().state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ModelError, match=r"unpickling \(it contains argparse\.Namespace\)"):
        load_state_dict(path)


def test_plain_pickle_is_not_a_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.pkl"
    with open(path, "wb") as f:
        pickle.dump({"w": [1.0, 2.0]}, f, protocol=4)
    with pytest.raises(ModelError, match=r"corrupt or not a torch\.save file"):
        load_state_dict(path)


def test_truncated_file(tmp_path: Path) -> None:
    path = save_model(tmp_path / "model.pt", _model(), _card())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_model(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04junk"])
def test_garbage_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="corrupt"):
        load_model(path)


def test_class_count_mismatch(tmp_path: Path) -> None:
    # A 100-class model stored under a 10-class card: the card cannot rebuild it.
    path = tmp_path / "model.pt"
    save_model(path, _model(100), _card(10))
    with pytest.raises(ModelError) as err:
        load_model(path)
    assert "fc.weight is [100, 128] in the file but [10, 128] in the model" in str(err.value)


def test_raw_state_dict_is_not_a_porter_model(tmp_path: Path) -> None:
    path = tmp_path / "raw.pt"
    torch.save(_model().state_dict(), path)
    with pytest.raises(ModelError, match="porter import"):
        load_model(path)


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_load_state_dict_wrappers(tmp_path: Path, wrapper: str | None) -> None:
    state = _model().state_dict()
    path = tmp_path / "sd.pt"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)
    loaded = load_state_dict(path)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_load_state_dict_strips_ddp_prefix(tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in _model().state_dict().items()}
    torch.save(state, tmp_path / "ddp.pt")
    assert all(not k.startswith("module.") for k in load_state_dict(tmp_path / "ddp.pt"))


def test_load_state_dict_rejects_non_tensor_entries(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(ModelError, match="not a plain state_dict"):
        load_state_dict(tmp_path / "meta.pt")
