"""Training configuration: ``TrainConfig``, YAML recipes, and how flags override them.

Resolution order (timm style): the dataclass defaults, then a recipe (a YAML file of
``key: value`` pairs, either a name from ``port/train/recipes/`` or a path), then explicit
overrides (CLI flags, ``--set KEY=VALUE``). Every value is type-checked and range-checked here,
once, so the training loop can trust its config. ``TrainConfig.to_dict()`` is what the checkpoint
and the manifest record; :func:`save_recipe` writes it back as YAML (``RUN/train.yaml``), a recipe
that resolves to the same config.

``porter train``'s flags are derived from the fields: a field made with :func:`_flag` is offered as
``--name`` with the help text it carries (:func:`flag_fields`), every other field through
``--set KEY=VALUE`` or a recipe. Adding a setting is one edit here.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

from port.ground.atomic import atomic_write_text
from port.ground.errors import UsageError
from port.ground.limits import MAX_BATCH, MAX_IMAGE_SIZE, MAX_IMAGES, MAX_WIDTH
from port.ground.vocab import ACTIVATIONS

SCHEDULES = ("step", "exponential", "cosine", "onecycle")
LOADERS = ("auto", "device", "dataloader")
AMP_DTYPES = ("float16", "bfloat16")
WHITEN_KERNELS = (0, 2, 3)
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
Auto = Literal["auto"]


def _flag(default: Any, help: str) -> Any:
    """A field that ``porter train`` offers as a flag (``--batch-size`` for ``batch_size``,
    ``--x/--no-x`` for a bool) with ``help`` as its help text."""
    return field(default=default, metadata={"help": help})


def _one_of(choices: tuple[Any, ...]) -> str:
    return " | ".join(map(str, choices))


@dataclass
class TrainConfig:
    """Everything that decides what a training run produces (plus a few how-to-run knobs).

    Comments say why a setting exists; ``_flag(default, help)`` makes it a ``porter train`` flag
    whose help is the user-facing line. Fields with a plain default are set by a recipe or
    ``--set KEY=VALUE`` (tri-state or launcher-owned values, rarely changed knobs).
    """

    # -- what to train on ---------------------------------------------------------------------
    data: str = _flag("synthetic", "synthetic | cifar10[:DIR] | cifar100[:DIR] | ImageFolder DIR")
    arch: str = _flag("resnet18_cifar", "Model name (see `porter models`).")
    # Channel multiplier of resnet18_cifar and resnet9: < 1 for quick CPU runs.
    width: float = _flag(1.0, "Width multiplier (CIFAR-size ResNets).")
    # Zero the last BN gamma of each residual branch so every block starts as the identity
    # (Goyal et al. 2017); helps large-batch training, costs nothing.
    zero_init_residual: bool = False
    image_size: int | None = _flag(None, "Input size (default: from the data).")
    # Class-balanced seeded subsets of the train / val split (None = all): quick experiments,
    # faster per-epoch evaluation.
    limit: int | None = _flag(None, "Use a seeded subset of N training images.")
    val_limit: int | None = _flag(None, "Use a seeded subset of N validation images.")

    # -- optimisation -------------------------------------------------------------------------
    epochs: int = _flag(30, "Passes over the training set.")
    # Images per optimizer step *per process*; with N processes (DDP) each step sees
    # batch_size * N images (the global batch), like torchvision's --batch-size per GPU.
    batch_size: int = _flag(128, "Images per optimizer step, per process.")
    # Peak learning rate, meant for a global batch of lr_scale_batch images.
    lr: float = _flag(0.1, "Base learning rate.")
    # Linear scaling rule (Goyal et al. 2017): the learning rate used is
    # lr * global_batch / lr_scale_batch, so a recipe keeps working when the batch size or the
    # number of processes changes. None or 0 = lr is meant for one process's batch_size:
    # unchanged on one process, times the number of processes under DDP.
    lr_scale_batch: int | None = _flag(None, "Scale lr linearly by global batch / this (0 = off).")
    # SGD momentum averages gradients over ~1/(1-m) steps; Nesterov's looks ahead, a little more
    # stable at high lr.
    momentum: float = _flag(0.9, "SGD momentum.")
    nesterov: bool = _flag(False, "Nesterov momentum.")
    # L2 penalty on conv/linear weights only; BatchNorm parameters and biases are never decayed
    # (decaying BN's gamma only fights the normalisation and hurts accuracy).
    weight_decay: float = _flag(5e-4, "On conv/linear weights only.")
    # Target mass spread over all classes: calmer, better-calibrated predictions.
    label_smoothing: float = _flag(0.0, "Target mass spread over all classes (0 = off).")
    schedule: str = _flag("cosine", f"Learning-rate shape: {_one_of(SCHEDULES)}")
    # Linear ramp from ~0 to lr over these epochs (step/exponential/cosine): avoids early
    # divergence at large batch sizes while BN statistics settle. onecycle has its own ramp.
    warmup_epochs: float = _flag(0.0, "Epochs of linear lr warm-up (not onecycle).")
    step_size: int = 30  # step schedule: multiply lr by gamma every step_size epochs
    gamma: float = 0.1  # step: factor per step_size epochs; exponential: factor per epoch
    # onecycle: fraction of training at which lr peaks; lr goes 0 -> lr -> 0 piecewise linearly
    # (the fast CIFAR recipes peak at about 1/5 of training).
    onecycle_peak: float = 0.25

    # -- augmentation -------------------------------------------------------------------------
    augment: bool = True  # data set's training preset: random crop (+resize) and flip
    cutout: int = _flag(0, "Cutout: side in px of a random square zeroed after normalisation "
                           "(0 = off).")

    # -- how to run ---------------------------------------------------------------------------
    seed: int = _flag(0, "Seeds init, shuffling and augmentation: same seed + CPU = same weights.")
    device: str = _flag("auto", "auto | cpu | cuda | cuda:N")  # auto: CUDA when present
    amp: bool | Auto = "auto"  # fp16 autocast + GradScaler; auto = on for CUDA, off on CPU
    channels_last: bool | Auto = "auto"  # NHWC tensors (faster convs on tensor cores); auto = CUDA
    workers: int = _flag(2, "DataLoader worker processes (0 = load in the training process).")
    # torch intra-op CPU threads for this run (None = torch's default, one per core). On a busy
    # machine fewer threads than cores avoids OpenMP threads spinning against other processes.
    # Bit-identical resume needs the same value (it changes the order of float reductions).
    threads: int | None = None
    eval_every: int = 1  # evaluate on the val split every N epochs (and always after the last)
    # fp16 needs loss scaling (GradScaler, which reads a flag back from the GPU every step);
    # bfloat16 has fp32's range, needs no scaler and also runs (autocast) on CPUs.
    amp_dtype: str = _flag("float16", f"Autocast dtype: {_one_of(AMP_DTYPES)}.")
    # auto: the whole uint8 data set on the device with batch augmentation by tensor ops when
    # the images are CIFAR-sized and fit (port.train.data); a DataLoader of PIL transforms
    # otherwise. device / dataloader force one.
    loader: str = _flag("auto", "auto | device (whole data set on the device, batch "
                                "augmentation) | dataloader")

    # -- fast-training tricks (the cifar10-fast recipe; all off by default) ------------------
    # CELU/GELU instead of ReLU: smooth gradients tolerate the high lr of short runs (ResNet-9).
    activation: str = _flag("relu", f"{_one_of(ACTIVATIONS)} (resnet9).")
    # k x k (2 or 3) fixed patch-whitening first layer computed from training images: whitened
    # inputs make the first layer well conditioned; worth epochs in a 10-epoch run. 0 = off.
    whiten: int = _flag(0, "Fixed patch-whitening first layer: 0 (off), 2 or 3 px patches "
                           "(resnet9).")
    # Ghost BatchNorm: normalise groups of this many images separately. Noisier statistics
    # regularise like small batches while steps stay large-batch fast. 0 = off. Eval: plain BN.
    ghost_batch: int = _flag(0, "Ghost BatchNorm: images per statistics group (0 = off; "
                                "resnet9).")
    # Stochastic depth (drop path): each residual branch is skipped with this probability per
    # sample in training (identity in eval, so the exported graph is the same); the regulariser
    # EfficientNet and ConvNeXt are trained with. None: the model's own default rate.
    drop_path: float | None = _flag(None, "Stochastic depth rate in [0, 1) (efficientnet_b0, "
                                          "convnext_tiny; default: the model's own).")
    # BatchNorm scales fixed at 1 (not trained): with BN after every conv the scale is redundant
    # with the next layer's weights, and freezing it removes a direction that weight decay and
    # a high lr otherwise make oscillate (Page's bag of tricks). Biases still train.
    freeze_bn_scale: bool = _flag(False, "Fix BatchNorm scales at 1.")
    # Exponential moving average of the weights (and BN statistics), updated every ema_every
    # steps: averages out the noise of the last high-lr steps; the EMA weights are what is
    # evaluated and saved. 0 = off. Early updates use min(decay, (1+n)/(10+n)).
    ema_decay: float = _flag(0.0, "EMA of the weights, evaluated and saved (0 = off).")
    ema_every: int = _flag(1, "Optimizer steps between EMA updates.")
    # Evaluation also averages the logits of each image and its mirror image (val_acc_tta):
    # free accuracy at test time. val_acc stays the plain model's (what an export reproduces).
    tta: bool = _flag(False, "Also report flip test-time-augmentation accuracy.")

    # -- distributed (set by the launcher, see port.train.launch) ----------------------------
    world_size: int = 1  # training processes (nnodes x nproc_per_node); recorded for resume
    # SyncBatchNorm (CUDA only): statistics over the global batch. Off: each process
    # normalises with its own batch (= ghost BN of batch_size images) and running statistics
    # are averaged over processes after every epoch.
    sync_bn: bool = _flag(False, "DDP: SyncBatchNorm over all processes (CUDA).")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form: what the checkpoint, ``model.pt`` and the manifest record."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`, validated (unknown keys are refused)."""
        return resolve(None, d)

    @property
    def global_batch(self) -> int:
        """Images per optimizer step over all processes."""
        return self.batch_size * self.world_size

    @property
    def effective_lr(self) -> float:
        """The learning rate training uses, after the linear scaling rule."""
        reference = self.lr_scale_batch or self.batch_size
        if self.global_batch == reference:
            return self.lr
        return self.lr * self.global_batch / reference


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))
# Fields that may differ when resuming: they change how a run executes, not what it computes.
RESUME_FREE = frozenset({"device", "workers", "eval_every", "threads"})
_HINTS = typing.get_type_hints(TrainConfig)
_FLAG_TYPES = (bool, int, float, str)


# -- flags ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlagField:
    """A :class:`TrainConfig` field that ``porter train`` offers as a flag."""

    name: str  # the field, e.g. batch_size
    type: type  # bool, int, float or str: what the flag parses (not given = None)
    help: str

    @property
    def flag(self) -> str:
        """The option's name: ``--batch-size`` for ``batch_size``."""
        return "--" + self.name.replace("_", "-")


def _flag_type(name: str) -> type:
    """The one scalar type of a field (``int | None`` -> int); a flag needs exactly one."""
    hint = _HINTS[name]
    is_union = typing.get_origin(hint) in (Union, types.UnionType)
    found = [a for a in (typing.get_args(hint) if is_union else (hint,)) if a is not type(None)]
    if len(found) != 1 or found[0] not in _FLAG_TYPES:
        # A programming error in TrainConfig, caught by tests/train/test_flags.py.
        raise TypeError(f"TrainConfig.{name} ({hint}) cannot be a flag: give it a plain default "
                        "(set through --set) or one of the types bool, int, float, str")
    return found[0]


def flag_fields() -> tuple[FlagField, ...]:
    """The fields made with ``_flag(...)``, in declaration order: ``porter train``'s flags."""
    return tuple(FlagField(f.name, _flag_type(f.name), f.metadata["help"])
                 for f in fields(TrainConfig) if "help" in f.metadata)


def set_only_fields() -> tuple[str, ...]:
    """The fields without a flag: reachable through ``--set KEY=VALUE`` or a recipe."""
    flagged = {f.name for f in flag_fields()}
    return tuple(name for name in FIELD_NAMES if name not in flagged)


# -- recipes --------------------------------------------------------------------------------------
def _recipes_dir() -> Any:
    return resources.files("port.train").joinpath("recipes")


def list_recipes() -> list[str]:
    """Names of the built-in recipes (``port/train/recipes/*.yaml``)."""
    return sorted(p.name[: -len(".yaml")] for p in _recipes_dir().iterdir()
                  if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """Read a recipe: a built-in name (``cifar``) or a YAML file path. Keys are not checked here."""
    import yaml  # lazy: the CLI imports this module for its flags, `porter --help` needs no YAML

    text_name = str(name_or_path)
    path = Path(text_name).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in text_name:
        if not path.is_file():
            raise UsageError(f"recipe file {path} not found: check the path")
        source, text = str(path), path.read_text(encoding="utf-8")
    else:
        entry = _recipes_dir().joinpath(f"{text_name}.yaml")
        if not entry.is_file():
            raise UsageError(
                f"unknown recipe {text_name!r}: use one of {', '.join(list_recipes())} "
                "or a YAML file path"
            )
        source, text = f"recipe {text_name}", entry.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise UsageError(f"{source} is not valid YAML{line}: fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{source} must be a mapping of key: value pairs")
    return data


def save_recipe(cfg: TrainConfig, path: str | Path, *, note: str = "") -> Path:
    """Write ``cfg`` as a YAML recipe, atomically: ``resolve(path)`` gives ``cfg`` back.

    Every field is written (defaults too), so the file does not depend on this version's
    defaults. ``note`` becomes a comment at the top.
    """
    import yaml

    header = "".join(f"# {line}\n" for line in note.splitlines())
    atomic_write_text(path, header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return Path(path)


# -- resolution -----------------------------------------------------------------------------------

def _type_name(hint: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    parts = [names.get(a, "auto" if a == Auto else "null") for a in typing.get_args(hint)]
    return " or ".join(parts) if parts else names[hint]


def _coerce(key: str, value: Any) -> Any:
    """Check ``value`` against the field's type, accepting what YAML gives ("1e-4", 3 for 3.0)."""
    hint = _HINTS[key]
    is_union = typing.get_origin(hint) in (Union, types.UnionType)
    allowed = typing.get_args(hint) if is_union else (hint,)
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, str) and Auto in allowed and value == "auto":
        return "auto"
    if bool in allowed and isinstance(value, bool):
        return value
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    if float in allowed and not isinstance(value, bool):
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # PyYAML reads 1e-4 (no dot) as a string
            except ValueError:
                pass
    if str in allowed and isinstance(value, str):
        return value
    raise UsageError(f"{key} must be {_type_name(hint)}, got {value!r}")


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise UsageError(message)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Range and consistency checks; the first problem raises ``UsageError``."""
    from port.models.registry import get_entry  # lazy: registry imports torch

    entry = get_entry(cfg.arch)  # unknown arch -> UsageError listing the models
    # inf/nan pass every "> 0" check below and would train (and record) a NaN model.
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        _check(not isinstance(value, float) or math.isfinite(value),
               f"{f.name} must be a finite number, got {value}")
    _check(0 < cfg.width <= MAX_WIDTH, f"width must be in (0, {MAX_WIDTH:g}], got {cfg.width}")
    _check(cfg.batch_size <= MAX_BATCH, f"batch_size must be <= {MAX_BATCH}, got "
           f"{cfg.batch_size}")
    _check(cfg.image_size is None or cfg.image_size <= MAX_IMAGE_SIZE,
           f"image_size must be <= {MAX_IMAGE_SIZE} px, got {cfg.image_size}")
    for key in ("limit", "val_limit"):
        value = getattr(cfg, key)
        _check(value is None or value <= MAX_IMAGES, f"{key} must be <= {MAX_IMAGES}, got {value}")
    _check(cfg.width == 1.0 or "width" in entry.kwargs,
           f"{cfg.arch} has no width option: drop width or use resnet18_cifar / resnet9")
    _check(cfg.image_size is None or cfg.image_size >= 16,
           f"image_size must be >= 16 px, got {cfg.image_size}")
    for key in ("limit", "val_limit"):
        value = getattr(cfg, key)
        _check(value is None or value >= 2, f"{key} must be >= 2 images, got {value}")
    for key in ("epochs", "batch_size", "step_size", "eval_every"):
        _check(getattr(cfg, key) >= 1, f"{key} must be >= 1, got {getattr(cfg, key)}")
    _check(cfg.lr > 0, f"lr must be > 0, got {cfg.lr}")
    _check(cfg.lr_scale_batch is None or cfg.lr_scale_batch >= 0,
           f"lr_scale_batch must be a batch size (or 0/null = off), got {cfg.lr_scale_batch}")
    _check(0 <= cfg.momentum < 1, f"momentum must be in [0, 1), got {cfg.momentum}")
    _check(not cfg.nesterov or cfg.momentum > 0, "nesterov needs momentum > 0")
    _check(cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay}")
    _check(0 <= cfg.label_smoothing < 1,
           f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    _check(cfg.schedule in SCHEDULES,
           f"unknown schedule {cfg.schedule!r}: use one of {', '.join(SCHEDULES)}")
    _check(cfg.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {cfg.warmup_epochs}")
    # A short run (--epochs 1) with a recipe that warms up longer: name both flags to change.
    _check(cfg.warmup_epochs < cfg.epochs,
           f"warmup_epochs {cfg.warmup_epochs:g} (from the recipe or --warmup-epochs) must be "
           f"below epochs={cfg.epochs}: pass --warmup-epochs 0 (or a value below "
           f"{cfg.epochs}) for a run this short, or more --epochs")
    _check(cfg.schedule != "onecycle" or cfg.warmup_epochs == 0,
           "onecycle ramps up by itself: set warmup_epochs to 0 or use another schedule")
    _check(0 < cfg.gamma <= 1, f"gamma must be in (0, 1], got {cfg.gamma}")
    _check(0 < cfg.onecycle_peak < 1, f"onecycle_peak must be in (0, 1), got {cfg.onecycle_peak}")
    _check(cfg.cutout >= 0, f"cutout must be >= 0 px, got {cfg.cutout}")
    _check(cfg.cutout == 0 or cfg.augment,
           "cutout is an augmentation: set augment to true, or cutout to 0")
    _check(cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}")
    _check(bool(_DEVICE_RE.match(cfg.device)),
           f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    _check(cfg.workers >= 0, f"workers must be >= 0, got {cfg.workers}")
    _check(cfg.threads is None or cfg.threads >= 1, f"threads must be >= 1, got {cfg.threads}")
    _check(cfg.amp_dtype in AMP_DTYPES,
           f"unknown amp_dtype {cfg.amp_dtype!r}: use one of {', '.join(AMP_DTYPES)}")
    _check(cfg.loader in LOADERS, f"unknown loader {cfg.loader!r}: use one of {', '.join(LOADERS)}")
    _validate_tricks(cfg, entry.kwargs)
    _check(cfg.world_size >= 1, f"world_size must be >= 1, got {cfg.world_size}")
    _check(not (cfg.sync_bn and cfg.ghost_batch),
           "sync_bn (statistics over all processes) and ghost_batch (over small groups) "
           "contradict each other: set one of them")
    return cfg


def _validate_tricks(cfg: TrainConfig, accepted: tuple[str, ...]) -> None:
    """The fast-recipe options: values in range, and only on models that have them."""
    _check(cfg.activation in ACTIVATIONS,
           f"unknown activation {cfg.activation!r}: use one of {', '.join(ACTIVATIONS)}")
    _check(cfg.whiten in WHITEN_KERNELS,
           f"whiten must be 0 (off), 2 or 3 (patch size), got {cfg.whiten}")
    _check(cfg.ghost_batch >= 0, f"ghost_batch must be >= 0, got {cfg.ghost_batch}")
    for key, off in (("activation", "relu"), ("whiten", 0), ("ghost_batch", 0)):
        _check(getattr(cfg, key) == off or key in accepted,
               f"{cfg.arch} has no {key} option: use arch resnet9 or drop {key}")
    if cfg.drop_path is not None:
        from port.models.torchvision_zoo import stochastic_depth_rate

        stochastic_depth_rate(cfg.drop_path)
        _check("stochastic_depth_prob" in accepted,
               f"{cfg.arch} has no stochastic depth: drop drop_path (efficientnet_b0 and "
               "convnext_tiny have it)")
    _check(not cfg.ghost_batch or cfg.batch_size % cfg.ghost_batch == 0,
           f"ghost_batch {cfg.ghost_batch} must divide batch_size {cfg.batch_size}")
    _check(0 <= cfg.ema_decay < 1, f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    _check(cfg.ema_every >= 1, f"ema_every must be >= 1, got {cfg.ema_every}")


def resolve(recipe: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- recipe <- overrides, checked. ``None`` override values mean "not given"."""
    values: dict[str, Any] = {}
    layers = [(load_recipe(recipe), f"recipe {recipe}")] if recipe is not None else []
    layers.append((dict(overrides or {}), "overrides"))
    for layer, source in layers:
        for key, value in layer.items():
            if key not in FIELD_NAMES:
                raise UsageError(
                    f"unknown training key {key!r} in {source}: valid keys are "
                    f"{', '.join(FIELD_NAMES)}"
                )
            if value is None and source == "overrides":
                continue
            values[key] = _coerce(key, value)
    return validate(TrainConfig(**values))


def config_diff(saved: dict[str, Any], wanted: TrainConfig) -> list[str]:
    """Fields (outside :data:`RESUME_FREE`) whose saved value differs from ``wanted``'s,
    as ``"key: saved -> wanted"`` strings."""
    now = wanted.to_dict()
    # A key missing from an older checkpoint had its default then (fields are only added).
    defaults = TrainConfig().to_dict()
    return [
        f"{key}: {saved.get(key, defaults[key])!r} -> {now[key]!r}"
        for key in FIELD_NAMES
        if key not in RESUME_FREE and saved.get(key, defaults[key]) != now[key]
    ]
