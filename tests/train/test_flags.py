"""`porter train`'s settings come from TrainConfig: every field is a flag or a --set key, the
flags reach the resolved config, and RUN/train.yaml reproduces a run."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

import port.stages.train
from port.cli import app
from port.models.checkpoint import load_model
from port.train.recipe import FIELD_NAMES, TrainConfig, flag_fields, resolve, set_only_fields

FLAGS = {f.name: f for f in flag_fields()}
DEFAULTS = TrainConfig()


def _tokens(values: dict[str, Any]) -> list[str]:
    """The command-line words that set ``values``: the field's flag, else ``--set KEY=VALUE``."""
    words: list[str] = []
    for name, value in values.items():
        flag = FLAGS.get(name)
        if flag is None:
            words += ["--set", f"{name}={json.dumps(value)}"]  # JSON is valid YAML
        elif flag.type is bool:
            words.append(flag.flag if value else f"--no-{flag.flag[2:]}")
        else:
            words += [flag.flag, str(value)]
    return words


def _other_value(name: str) -> Any:
    """A value of the field's type that differs from its default (not necessarily valid)."""
    default = getattr(DEFAULTS, name)
    allowed = typing.get_args(typing.get_type_hints(TrainConfig)[name]) or (
        type(default),)
    if bool in allowed:
        return not default if isinstance(default, bool) else False
    if int in allowed:
        return (default or 0) + 3
    if float in allowed:
        return (default or 0.0) + 0.25
    return f"{default}-other"


def _invoke(*args: str | Path) -> Any:
    result = CliRunner().invoke(app, ["train", *map(str, args)])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.mark.parametrize("name", FIELD_NAMES)
def test_every_field_is_reachable_from_the_cli(name: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # The command's own parsing, up to the stage it calls (the stage is what the next tests run).
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(port.stages.train, "run_train",
                        lambda run, **kwargs: seen.append(kwargs["overrides"]))
    value = _other_value(name)
    _invoke("--run", tmp_path, *_tokens({name: value}))
    assert seen == [{name: value}]
    assert type(seen[0][name]) is type(value)


def test_each_flag_has_its_fields_spelling_and_help() -> None:
    # (Its type is checked above: the parsed value has the field's type.)
    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    options = {param.name: param for param in command.params}
    for flag in FLAGS.values():
        option = options[flag.name]
        assert option.opts == [flag.flag] and option.help == flag.help
        assert option.secondary_opts == ([f"--no-{flag.flag[2:]}"] if flag.type is bool else [])
    own = {"run", "recipe", "nproc_per_node", "nnodes", "node_rank", "rdzv_endpoint", "resume",
           "download", "set_"}
    assert set(options) == own | set(FLAGS)


def test_help_shows_every_flag_and_every_set_only_key() -> None:
    text = _invoke("--help").output
    assert set(FLAGS) | set(set_only_fields()) == set(FIELD_NAMES)
    for flag in FLAGS.values():
        shown = f"{flag.flag} / --no-{flag.flag[2:]}" if flag.type is bool else flag.flag
        assert re.search(rf"^  {shown}\b", text, re.MULTILINE), shown
    epilog = text.split("Settings without a flag", 1)[1]
    for name in set_only_fields():
        assert re.search(rf"\b{name}\b", epilog), name


# A valid configuration in which most fields differ from their defaults, set through flags and
# --set: every value must arrive in the run's resolved config. Tiny: trains in a few seconds.
SETTINGS: dict[str, Any] = {
    "data": "synthetic", "arch": "resnet9", "width": 0.125, "zero_init_residual": True,
    "image_size": 16, "limit": 96, "val_limit": 32, "epochs": 2, "batch_size": 32,
    "lr": 0.05, "lr_scale_batch": 64, "momentum": 0.8, "nesterov": True,
    "weight_decay": 0.001, "label_smoothing": 0.1, "schedule": "onecycle",
    "warmup_epochs": 0.0, "step_size": 5, "gamma": 0.5, "onecycle_peak": 0.3, "augment": True,
    "cutout": 4, "seed": 3, "device": "cpu", "amp": False, "channels_last": False,
    "workers": 0, "threads": 1, "eval_every": 2, "amp_dtype": "bfloat16",
    "loader": "dataloader", "activation": "celu", "whiten": 2, "ghost_batch": 16,
    "freeze_bn_scale": True, "ema_decay": 0.9, "ema_every": 2, "tta": True,
}


@pytest.fixture(scope="module")
def flagged_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained by the real CLI from :data:`SETTINGS` (no recipe file given)."""
    run = tmp_path_factory.mktemp("flagged") / "run"
    _invoke("--run", run, *_tokens(SETTINGS))
    return run


def _resolved(run: Path) -> dict[str, Any]:
    """The config the run trained with, as model.pt records it."""
    return load_model(run / "model.pt")[2]["config"]


def test_flags_and_set_reach_the_resolved_config(flagged_run: Path) -> None:
    recorded = _resolved(flagged_run)
    assert {k: recorded[k] for k in SETTINGS} == SETTINGS
    # Fields left out keep their defaults (the cifar recipe sets none of them).
    assert recorded["world_size"] == 1 and recorded["sync_bn"] is False
    assert yaml.safe_load((flagged_run / "train.yaml").read_text()) == recorded


def test_train_yaml_reproduces_the_run(flagged_run: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    _invoke("--run", again, "--recipe", flagged_run / "train.yaml")
    assert _resolved(again) == _resolved(flagged_run)
    assert resolve(flagged_run / "train.yaml") == TrainConfig(**_resolved(flagged_run))
    assert (again / "train.yaml").read_text().split("\n", 2)[2] == \
        (flagged_run / "train.yaml").read_text().split("\n", 2)[2]  # after the 2 comment lines
    # Seeded CPU run: the same settings train the same weights.
    a, b = (load_model(run / "model.pt")[0].state_dict() for run in (flagged_run, again))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_yaml_round_trips_every_builtin_recipe(tmp_path: Path) -> None:
    from port.train.recipe import list_recipes, save_recipe

    for name in list_recipes():
        cfg = dataclasses.replace(resolve(name, {}), weight_decay=1 / 32768, limit=None)
        assert resolve(save_recipe(cfg, tmp_path / f"{name}.yaml", note="a\nb")) == cfg
