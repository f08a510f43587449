"""The training loop: ``train(cfg, run_dir)`` -> ``model.pt`` plus the record of how it was made.

Layout of a run directory after training::

    model.pt               the trained model + ModelCard (port.models.checkpoint format)
    checkpoints/last.pt    model, optimizer, scheduler, scaler, RNG states after the last epoch
    metrics.jsonl          one JSON line per completed epoch
    curves.png             loss and accuracy per epoch

The loop never touches the manifest: it returns a :class:`TrainResult` and the caller records
it. Seeded CPU runs are bit-reproducible, and a run interrupted at any moment (Ctrl-C, kill -9)
and resumed with ``resume=True`` ends with exactly the weights of an uninterrupted run (see
:mod:`port.train.state` for how).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from port.errors import DataError, UsageError
from port.models.card import ModelCard
from port.models.checkpoint import save_model
from port.models.registry import create_model, get_entry
from port.train.curves import draw_curves
from port.train.optim import build_loss, build_optimizer
from port.train.progress import Reporter, make_reporter
from port.train.recipe import TrainConfig, config_diff
from port.train.runtime import Runtime, synchronize
from port.train.schedule import build_scheduler
from port.train.state import load_train_state, save_train_state, seed_epoch, set_rng_state

EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class TrainResult:
    """What a finished run produced, for the caller to record."""

    model_path: Path  # run_dir/model.pt
    card: ModelCard  # architecture, classes, preprocessing
    params: dict[str, Any]  # the resolved TrainConfig (cfg.to_dict())
    metrics: dict[str, Any]  # final val/train accuracy and loss, speed, device


@dataclass(frozen=True)
class RunPaths:
    """Where a run directory keeps each training artifact."""

    root: Path

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"


@dataclass
class EpochStats:
    """Training statistics of one epoch."""

    loss: float  # mean training loss (with label smoothing, like the optimised objective)
    acc: float  # top-1 accuracy on the augmented training batches
    images: int
    seconds: float  # wall time of the epoch's training steps (data loading included)
    lr: float  # learning rate of the epoch's last step

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


# -- the step ---------------------------------------------------------------------------------
def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: nn.Module,
    runtime: Runtime,
    scaler: torch.amp.GradScaler,
    reporter: Reporter | None = None,
) -> EpochStats:
    """One pass over ``loader``: forward, loss, backward, step, lr step, per batch.

    Lean on purpose: loss and accuracy accumulate on the device and are read back (a sync)
    only when the progress display asks, at most a few times per second.
    """
    model.train()
    device, fmt = runtime.device, runtime.memory_format
    sync = synchronize(device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    images = 0
    next_report = 0.0
    lr = float("nan")
    start = time.perf_counter()
    for x, y in loader:
        x = x.to(device, non_blocking=True, memory_format=fmt)
        y = y.to(device, non_blocking=True)
        with runtime.autocast():
            out = model(x)
            loss = criterion(out, y)
        optimizer.zero_grad(set_to_none=True)
        if runtime.amp:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the lr this step used (before the schedule moves)
        scheduler.step()
        n = y.shape[0]
        images += n
        with torch.no_grad():
            loss_sum += loss.detach().float() * n
            correct += (out.argmax(1) == y).sum()
        if reporter is not None and time.perf_counter() >= next_report:
            elapsed = time.perf_counter() - start
            reporter.batch(images, (loss_sum / images).item(), correct.item() / images,
                           images / elapsed if elapsed > 0 else 0.0)
            next_report = time.perf_counter() + 0.25
    sync()
    seconds = time.perf_counter() - start
    if images == 0:
        raise DataError("the training split produced no batches: use more images or a smaller "
                        "batch_size")
    return EpochStats(
        loss=(loss_sum / images).item(),
        acc=correct.item() / images,
        images=images,
        seconds=seconds,
        lr=float(lr),
    )


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    criterion: nn.Module,
    runtime: Runtime,
) -> tuple[float, float]:
    """Mean loss and top-1 accuracy of ``model`` over ``loader`` (eval mode, no gradients)."""
    model.eval()
    device, fmt = runtime.device, runtime.memory_format
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    images = 0
    for x, y in loader:
        x = x.to(device, non_blocking=True, memory_format=fmt)
        y = y.to(device, non_blocking=True)
        with runtime.autocast():
            out = model(x)
            loss_sum += criterion(out, y).float() * y.shape[0]
        correct += (out.argmax(1) == y).sum()
        images += y.shape[0]
    if images == 0:
        raise DataError("the val split is empty: check the data set or val_limit")
    return (loss_sum / images).item(), correct.item() / images


# -- run directory ----------------------------------------------------------------------------
def _prepare(paths: RunPaths, cfg: TrainConfig, resume: bool) -> dict[str, Any] | None:
    """Refuse to overwrite recorded work; with ``resume`` load and check the last checkpoint."""
    run = paths.root
    if not resume:
        if paths.model.exists():
            raise UsageError(
                f"run {run} already has a trained model ({paths.model.name}): pass --resume to "
                "continue it or choose a new --run"
            )
        if paths.checkpoint.exists():
            raise UsageError(
                f"run {run} holds an unfinished training ({paths.checkpoint}): pass --resume to "
                "continue it or choose a new --run"
            )
        return None
    if not paths.checkpoint.exists():
        raise UsageError(
            f"nothing to resume in {run}: no {paths.checkpoint.relative_to(run)}; "
            "train without --resume"
        )
    state = load_train_state(paths.checkpoint)
    diff = config_diff(state["config"], cfg)
    if diff:
        shown = "; ".join(diff[:4]) + (f" (+{len(diff) - 4} more)" if len(diff) > 4 else "")
        raise UsageError(
            f"cannot resume {run}: settings differ from the checkpoint ({shown}); "
            "pass the original settings or choose a new --run"
        )
    return state


def saved_config(run_dir: str | Path) -> TrainConfig | None:
    """The config a run's last checkpoint was trained with (``None`` without a checkpoint).

    Lets a caller resume with ``porter train --run R --resume`` and no other flags.
    """
    path = RunPaths(Path(run_dir)).checkpoint
    if not path.exists():
        return None
    return TrainConfig.from_dict(load_train_state(path)["config"])


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl from ``history`` (atomically): after a resume it holds exactly the
    checkpoint's epochs, so a re-run epoch never appears twice."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(line) + "\n" for line in history)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _append_metrics(path: Path, line: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


# -- the run ------------------------------------------------------------------------------------
def _model_kwargs(cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(kwargs to build with, kwargs that define the architecture for the card)."""
    accepted = get_entry(cfg.arch).kwargs
    arch = {"width": cfg.width} if "width" in accepted else {}
    build = dict(arch)
    if cfg.zero_init_residual:
        build["zero_init_residual"] = True  # init only: not needed to rebuild the model
    return build, arch


def _loader(
    dataset: Dataset, cfg: TrainConfig, runtime: Runtime, *, train: bool,
    generator: torch.Generator,
) -> DataLoader:
    n = len(dataset)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=train,
        generator=generator,  # shuffle order and worker base seed come from it
        num_workers=cfg.workers,
        pin_memory=runtime.device.type == "cuda",
        # Full batches only in training: equal steps per epoch, and no 1-image batch that
        # BatchNorm cannot normalise.
        drop_last=train and n >= cfg.batch_size,
        # Fresh workers every epoch, so their RNGs are re-seeded from (seed, epoch).
        persistent_workers=False,
    )


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    download: bool = False,
    on_epoch_end: EpochCallback | None = None,
) -> TrainResult:
    """Train ``cfg`` into ``run_dir``; with ``resume`` continue from ``checkpoints/last.pt``.

    ``download`` lets torchvision fetch CIFAR. ``on_epoch_end(epoch, metrics_line)`` is called
    after each epoch's checkpoint is on disk (an exception raised there stops the run, which
    can then be resumed). Refuses (``UsageError``) to train over a run that already has a model
    or an unfinished checkpoint unless resuming, and to resume with different settings.
    """
    paths = RunPaths(Path(run_dir))
    state = _prepare(paths, cfg, resume)
    with _torch_threads(cfg.threads):
        return _run(cfg, paths, state, progress=progress, download=download,
                    on_epoch_end=on_epoch_end)


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op threads for the run, then restore the caller's setting."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(
    cfg: TrainConfig,
    paths: RunPaths,
    state: dict[str, Any] | None,
    *,
    progress: bool,
    download: bool,
    on_epoch_end: EpochCallback | None,
) -> TrainResult:
    """The body of :func:`train` once the run directory has been checked."""
    from port.data.datasets import load_split
    from port.data.spec import parse_data_spec

    runtime = Runtime.from_config(cfg)
    spec = parse_data_spec(cfg.data, download=download)
    train_split = load_split(spec, "train", image_size=cfg.image_size, augment=cfg.augment,
                             cutout=cfg.cutout, limit=cfg.limit, seed=cfg.seed)
    val_split = load_split(spec, "val", preprocess=train_split.preprocess, limit=cfg.val_limit,
                           seed=cfg.seed)
    if list(val_split.classes) != list(train_split.classes):
        raise DataError(f"{spec}: the val split's classes differ from the train split's: "
                        "give both splits the same class folders")
    paths.checkpoint.parent.mkdir(parents=True, exist_ok=True)

    classes = list(train_split.classes)
    build_kwargs, arch_kwargs = _model_kwargs(cfg)
    torch.manual_seed(cfg.seed)  # weight initialisation
    model = create_model(cfg.arch, len(classes), **build_kwargs)
    model.to(runtime.device, memory_format=runtime.memory_format)
    card = ModelCard(arch=cfg.arch, num_classes=len(classes), classes=classes,
                     preprocess=train_split.preprocess, model_kwargs=arch_kwargs)

    generator = torch.Generator()
    train_loader = _loader(train_split.dataset, cfg, runtime, train=True, generator=generator)
    val_loader = _loader(val_split.dataset, cfg, runtime, train=False,
                         generator=torch.Generator().manual_seed(cfg.seed))
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(train_loader))
    scaler = runtime.grad_scaler()
    criterion = build_loss(cfg)

    history: list[dict[str, Any]] = []
    if state is not None:
        history = _restore(state, model, optimizer, scheduler, scaler, runtime)
    start_epoch = len(history)
    _write_metrics(paths.metrics, history)  # drops lines of epochs after the checkpoint

    info = {**runtime.describe(), "threads": torch.get_num_threads()}
    with make_reporter(progress, cfg.epochs, len(train_loader), cfg.batch_size) as reporter:
        reporter.note(f"training {cfg.arch} on {spec} ({len(train_split)} train / "
                      f"{len(val_split)} val images, {len(classes)} classes) on {info['device']}"
                      + (f", resuming after epoch {start_epoch}" if start_epoch else ""))
        for epoch in range(start_epoch, cfg.epochs):
            seed_epoch(cfg.seed, epoch, generator)
            reporter.start_epoch(epoch + 1)
            stats = train_one_epoch(model, train_loader, optimizer, scheduler, criterion,
                                    runtime, scaler, reporter)
            val_loss = val_acc = None
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                val_loss, val_acc = evaluate(model, val_loader, criterion, runtime)
            line = {
                "epoch": epoch + 1, "lr": stats.lr, "train_loss": stats.loss,
                "train_acc": stats.acc, "val_loss": val_loss, "val_acc": val_acc,
                "images_per_s": stats.images_per_s, "seconds": stats.seconds,
            }
            history.append(line)
            # metrics first, checkpoint second: a crash in between leaves a line that the
            # resume (which rewrites metrics.jsonl from the checkpoint) drops again.
            _append_metrics(paths.metrics, line)
            save_train_state(paths.checkpoint, epoch=epoch + 1, config=cfg.to_dict(),
                             model=model, optimizer=optimizer, scheduler=scheduler,
                             scaler=scaler, history=history, runtime=info)
            draw_curves(history, paths.curves)
            reporter.end_epoch(line)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, line)

    metrics = _final_metrics(history, info, cfg, len(train_split), len(val_split))
    save_model(paths.model, model, card, extra={"config": cfg.to_dict(), "metrics": metrics})
    return TrainResult(model_path=paths.model, card=card, params=cfg.to_dict(), metrics=metrics)


def _restore(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    runtime: Runtime,
) -> list[dict[str, Any]]:
    """Load a ``last.pt`` state into freshly built objects; returns the epochs' history."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state["scaler"] and runtime.amp:  # empty when the run was saved without AMP
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    history = list(state["history"])
    if len(history) != int(state["epoch"]):
        raise ValueError("checkpoint history does not match its epoch")  # written by us: a bug
    return history


def _final_metrics(
    history: list[dict[str, Any]], info: dict[str, Any], cfg: TrainConfig, n_train: int,
    n_val: int,
) -> dict[str, Any]:
    """What the manifest records for the run: last epoch's numbers, totals, where it ran."""
    last = history[-1]
    return {
        "val_acc": last["val_acc"],
        "val_loss": last["val_loss"],
        "train_acc": last["train_acc"],
        "train_loss": last["train_loss"],
        "epochs": len(history),
        "train_seconds": sum(h["seconds"] for h in history),
        "images_per_s": last["images_per_s"],
        "train_images": n_train,
        "val_images": n_val,
        "effective_lr": cfg.effective_lr,
        **info,
    }
