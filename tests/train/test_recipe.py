"""Recipes: defaults <- YAML <- overrides, type and range checks, the built-in recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from port.ground.errors import UsageError
from port.train.recipe import FIELD_NAMES, TrainConfig, config_diff, list_recipes, resolve


def test_builtin_recipes_resolve() -> None:
    assert {"quick", "cifar", "imagenet-resnet50"} <= set(list_recipes())
    for name in list_recipes():
        assert isinstance(resolve(name, {}), TrainConfig)


def test_imagenet_recipe_values() -> None:
    cfg = resolve("imagenet-resnet50", {})
    assert cfg.arch == "resnet50" and cfg.image_size == 224 and cfg.epochs == 90
    assert cfg.momentum == 0.875
    assert cfg.weight_decay == 1 / 32768 == 3.0517578125e-05
    assert cfg.label_smoothing == 0.1
    assert cfg.schedule == "cosine" and cfg.warmup_epochs > 0
    assert cfg.lr == 0.256 and cfg.lr_scale_batch == 256
    assert cfg.effective_lr == pytest.approx(0.256)
    # Linear scaling rule: 4x the batch, 4x the learning rate.
    assert resolve("imagenet-resnet50", {"batch_size": 1024}).effective_lr == pytest.approx(1.024)


def test_quick_recipe_is_small() -> None:
    cfg = resolve("quick", {})
    assert cfg.data == "synthetic" and cfg.width < 1 and cfg.epochs <= 5


def test_override_wins_over_recipe_and_none_means_unset() -> None:
    cfg = resolve("quick", {"epochs": 7, "lr": None, "arch": "resnet9"})
    assert cfg.epochs == 7 and cfg.arch == "resnet9"
    assert cfg.lr == resolve("quick", {}).lr


def test_yaml_style_values_are_coerced() -> None:
    cfg = resolve(None, {"lr": "1e-3", "weight_decay": 0, "amp": "auto", "channels_last": False})
    assert cfg.lr == 1e-3 and isinstance(cfg.weight_decay, float)
    assert cfg.amp == "auto" and cfg.channels_last is False


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(UsageError) as err:
        resolve("quick", {"learning_rate": 0.1})
    msg = str(err.value)
    assert "learning_rate" in msg and all(name in msg for name in FIELD_NAMES)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"epochs": -1}, "epochs must be >= 1"),
        ({"epochs": 2.5}, "epochs must be an integer"),
        ({"schedule": "linear"}, "unknown schedule 'linear': use one of step, exponential"),
        ({"lr": 0}, "lr must be > 0"),
        ({"momentum": 1.0}, "momentum"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"warmup_epochs": 30}, "warmup_epochs"),
        ({"schedule": "onecycle", "warmup_epochs": 1}, "onecycle ramps up by itself"),
        ({"cutout": 8, "augment": False}, "cutout is an augmentation"),
        ({"device": "gpu"}, "device must be auto, cpu, cuda or cuda:N"),
        ({"amp": "yes"}, "amp must be"),
        ({"arch": "vgg16"}, "unknown model 'vgg16'"),
        ({"arch": "resnet50", "width": 0.5}, "resnet50 has no width option"),
        ({"nesterov": True, "momentum": 0.0}, "nesterov needs momentum"),
        ({"augment": "yes"}, "augment must be true or false"),
    ],
)
def test_invalid_values(overrides: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        resolve(None, overrides)


def test_recipe_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("arch: resnet9\nwidth: 0.5\nepochs: 2\n")
    cfg = resolve(str(path), {"epochs": 3})
    assert (cfg.arch, cfg.width, cfg.epochs) == ("resnet9", 0.5, 3)


def test_recipe_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"unknown recipe 'nope': use one of .*quick"):
        resolve("nope", {})
    with pytest.raises(UsageError, match="not found"):
        resolve(str(tmp_path / "missing.yaml"), {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        resolve(str(bad), {})
    typo = tmp_path / "typo.yaml"
    typo.write_text("epoch: 3\n")
    with pytest.raises(UsageError, match=r"unknown training key 'epoch' in recipe .*typo\.yaml"):
        resolve(str(typo), {})


def test_to_dict_round_trip() -> None:
    cfg = resolve("cifar", {"image_size": 40})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_config_diff_ignores_execution_settings() -> None:
    cfg = resolve("quick", {})
    saved = cfg.to_dict() | {"workers": 8, "device": "cuda", "eval_every": 3}
    assert config_diff(saved, cfg) == []
    assert config_diff(saved | {"seed": 1}, cfg) == ["seed: 1 -> 0"]


def test_checkpoints_from_before_new_fields_still_resume() -> None:
    cfg = resolve("quick", {})
    older = {k: v for k, v in cfg.to_dict().items()
             if k not in ("activation", "whiten", "ema_decay", "world_size", "loader")}
    assert config_diff(older, cfg) == []
    assert TrainConfig.from_dict(older) == cfg
