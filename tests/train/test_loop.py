"""A real (tiny) training run: it learns, and leaves every artifact the contract promises."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from port.ground.errors import UsageError
from port.models.checkpoint import load_model
from port.train.loop import train
from port.train.recipe import TrainConfig, resolve
from port.train.runtime import Runtime


def test_tiny_run_learns_and_writes_artifacts(tiny: TrainConfig, tmp_path: Path) -> None:
    # ResNet-9 learns fastest per CPU second (about 60% val accuracy here in a few seconds).
    cfg = dataclasses.replace(tiny, arch="resnet9", width=0.25, epochs=4, limit=480,
                              val_limit=200, schedule="onecycle", eval_every=2)
    result = train(cfg, tmp_path, progress=False)

    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4]
    assert set(lines[0]) == {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
                             "images_per_s", "seconds"}
    assert lines[0]["val_acc"] is None and lines[1]["val_acc"] is not None  # eval_every=2
    # Learning: the loss falls and the model beats chance (10 classes) clearly.
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert result.metrics["val_acc"] > 0.3

    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert (tmp_path / "checkpoints" / "last.pt").exists()
    assert result.model_path == tmp_path / "model.pt"
    assert result.params == cfg.to_dict()
    assert result.metrics["device"] == "cpu" and result.metrics["amp"] is False
    assert result.metrics["threads"] == 1

    model, card, payload = load_model(result.model_path)
    assert card == result.card
    assert card.arch == "resnet9" and card.model_kwargs == {"width": 0.25}
    assert card.num_classes == 10 and len(card.classes) == 10
    assert card.preprocess.image_size == 16
    assert payload["config"] == cfg.to_dict()
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 10)


def test_threads_setting_is_restored(tiny: TrainConfig, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    seen: list[int] = []
    train(dataclasses.replace(tiny, epochs=1), tmp_path, progress=False,
          on_epoch_end=lambda epoch, line: seen.append(torch.get_num_threads()))
    assert seen == [1]
    assert torch.get_num_threads() == before


def test_same_seed_same_weights_other_seed_differs(tiny: TrainConfig, tmp_path: Path) -> None:
    cfg = dataclasses.replace(tiny, epochs=1)
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False)
    train(dataclasses.replace(cfg, seed=8), tmp_path / "c", progress=False)
    a, b, c = (load_model(tmp_path / n / "model.pt")[0].state_dict() for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc.weight"], c["fc.weight"])


def test_progress_display_runs(tiny: TrainConfig, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    train(dataclasses.replace(tiny, epochs=1), tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "epoch   1/1" in err and "img/s" in err


def test_runtime_on_cpu() -> None:
    rt = Runtime.from_config(resolve(None, {"device": "auto"}))
    if torch.cuda.is_available():
        pytest.skip("CUDA present: auto picks it")
    assert rt.device.type == "cpu" and not rt.amp and not rt.channels_last
    with pytest.raises(UsageError, match=r"amp .* needs a CUDA device"):
        Runtime.from_config(resolve(None, {"device": "cpu", "amp": True}))


def test_cuda_requested_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    from port.ground.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="use --device cpu"):
        Runtime.from_config(resolve(None, {"device": "cuda"}))
