"""The training loop: ``train(cfg, run_dir)`` -> ``model.pt`` plus the record of how it was made.

The run directory's files and how each is written: :mod:`port.train.run_dir`; the network and
its card: :mod:`port.train.model`. With an EMA of the weights (``ema_decay``), the average is
what is evaluated and saved as ``model.pt``. Under DDP (:mod:`port.train.distributed`) only
rank 0 evaluates and writes. The loop never touches the manifest: it returns a
:class:`TrainResult` and the caller records it. Seeded CPU runs are bit-reproducible, and a run
interrupted at any moment (Ctrl-C, kill -9) and resumed with ``resume=True`` ends with exactly
the weights of an uninterrupted run (see :mod:`port.train.state` for how).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from port.ground.errors import DataError, UsageError
from port.ground.limits import check_training_batch
from port.models.card import ModelCard
from port.models.checkpoint import save_model
from port.train.curves import draw_curves
from port.train.data import build_data
from port.train.distributed import (
    DistContext,
    all_sum,
    average_buffers,
    process_group,
    unwrap,
    wrap_model,
)
from port.train.ema import ModelEma
from port.train.model import build_model
from port.train.optim import build_loss, build_optimizer
from port.train.progress import Reporter, make_reporter
from port.train.recipe import TrainConfig
from port.train.run_dir import RunPaths, append_metrics, shared_prepare, write_config, write_metrics
from port.train.runtime import Runtime, synchronize
from port.train.schedule import build_scheduler
from port.train.state import save_train_state, set_rng_state
from port.train.tricks import tta_logits

EpochCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class TrainResult:
    """What a finished run produced, for the caller to record."""

    model_path: Path  # run_dir/model.pt
    card: ModelCard  # architecture, classes, preprocessing
    params: dict[str, Any]  # the resolved TrainConfig (cfg.to_dict())
    metrics: dict[str, Any]  # final val/train accuracy and loss, speed, device
    # Distributed runs: this process's rank. Only rank 0 wrote model.pt and has metrics; the
    # caller records the result only where rank == 0.
    rank: int = 0

    @property
    def is_main(self) -> bool:
        """True for the process that wrote the run's files (always, without DDP)."""
        return self.rank == 0


@dataclass
class EpochStats:
    """Training statistics of one epoch (over all processes of a distributed run)."""

    loss: float  # mean training loss (with label smoothing, like the optimised objective)
    acc: float  # top-1 accuracy on the augmented training batches
    images: int
    seconds: float  # wall time of the epoch's training steps (data loading included)
    lr: float  # learning rate of the epoch's last step

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class EvalStats:
    """Mean loss and top-1 accuracy over a split; ``tta_acc`` with flip TTA (when asked)."""

    loss: float
    acc: float
    tta_acc: float | None = None


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
    *,
    ema: ModelEma | None = None,
    ctx: DistContext | None = None,
) -> EpochStats:
    """One pass over ``loader``: forward, loss, backward, step, lr step (and EMA), per batch.

    Lean on purpose: loss and accuracy accumulate on the device and are read back (a sync)
    only when the progress display asks, at most a few times per second. Under DDP (``ctx``)
    the epoch's totals are summed over processes once, at the end.
    """
    model.train()
    device, fmt = runtime.device, runtime.memory_format
    sync = synchronize(device)
    averaged = unwrap(model)
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
        if scaler.is_enabled():  # fp16: scale the loss so small gradients do not underflow
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the lr this step used (before the schedule moves)
        scheduler.step()
        if ema is not None:
            ema.step(averaged)
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
    if ctx is not None and ctx.distributed:
        totals = all_sum(torch.stack([loss_sum.double(), correct.double(),
                                      torch.tensor(float(images), device=device,
                                                   dtype=torch.float64)]), ctx)
        return EpochStats(loss=(totals[0] / totals[2]).item(), acc=(totals[1] / totals[2]).item(),
                          images=int(totals[2].item()), seconds=seconds, lr=float(lr))
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
    *,
    tta: bool = False,
) -> EvalStats:
    """Mean loss and top-1 accuracy of ``model`` over ``loader`` (eval mode, no gradients);
    with ``tta`` also the accuracy of flip test-time augmentation (:func:`tta_logits`)."""
    model.eval()
    device, fmt = runtime.device, runtime.memory_format
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    correct_tta = torch.zeros((), device=device, dtype=torch.int64)
    images = 0
    for x, y in loader:
        x = x.to(device, non_blocking=True, memory_format=fmt)
        y = y.to(device, non_blocking=True)
        with runtime.autocast():
            out = model(x)
            loss_sum += criterion(out, y).float() * y.shape[0]
            if tta:
                correct_tta += (tta_logits(model, x, out).argmax(1) == y).sum()
        correct += (out.argmax(1) == y).sum()
        images += y.shape[0]
    if images == 0:
        raise DataError("the val split is empty: check the data set or val_limit")
    return EvalStats(loss=(loss_sum / images).item(), acc=correct.item() / images,
                     tta_acc=correct_tta.item() / images if tta else None)


# -- the run ------------------------------------------------------------------------------------
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

    Inside a launcher's worker (``RANK``/``WORLD_SIZE`` set, see :mod:`port.train.distributed`)
    this process trains its share of a DDP run; ``cfg.world_size`` must match the job.
    """
    paths = RunPaths(Path(run_dir))
    ctx = DistContext.from_env()
    if ctx.world_size != cfg.world_size:
        raise UsageError(
            f"the settings say world_size {cfg.world_size} but {ctx.world_size} process(es) "
            f"are running: start {cfg.world_size} with --nproc-per-node/--nnodes"
        )
    with _torch_threads(cfg.threads), _sigchld_kept():
        runtime = Runtime.from_config(cfg, local_rank=ctx.local_rank if ctx.distributed
                                      else None)
        with process_group(ctx, runtime.device):
            state = shared_prepare(paths, cfg, resume, ctx)
            return _run(cfg, paths, state, runtime, ctx, progress=progress and ctx.is_main,
                        download=download, on_epoch_end=on_epoch_end)


@contextlib.contextmanager
def _sigchld_kept() -> Iterator[None]:
    """Give SIGCHLD back the handler it had before training.

    A DataLoader with worker processes installs a Python SIGCHLD handler for the whole process
    and never removes it (torch.utils.data._utils.signal_handling). An app that trains and then
    evaluates in the same process kept it: with OpenVINO's CPU plugin loaded, a later wait for
    a child process then ended in a kernel-sent SIGSEGV (seen in porter's own tests)."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGCHLD) if main else None
    try:
        yield
    finally:
        if main and signal.getsignal(signal.SIGCHLD) is not before:
            signal.signal(signal.SIGCHLD, before if before is not None else signal.SIG_DFL)


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
    runtime: Runtime,
    ctx: DistContext,
    *,
    progress: bool,
    download: bool,
    on_epoch_end: EpochCallback | None,
) -> TrainResult:
    """The body of :func:`train` once the run directory has been checked."""
    data = build_data(cfg, runtime, ctx, download=download)
    # Before the model and the first batch exist: a batch that cannot fit is a one-line refusal.
    check_training_batch(cfg.batch_size, data.preprocess.image_size,
                         **runtime.free_memory())
    if ctx.is_main:
        paths.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        write_config(paths, cfg)  # train.yaml: how to reproduce this run
    # A resumed run loads the fitted whitening filters with the weights.
    model, card = build_model(cfg, data.classes, data.preprocess, runtime,
                              data.whiten_images if state is None else None)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(data))
    scaler = runtime.grad_scaler()
    criterion = build_loss(cfg)
    ema = ModelEma(model, cfg.ema_decay, cfg.ema_every) if cfg.ema_decay > 0 else None

    history: list[dict[str, Any]] = []
    if state is not None:
        history = _restore(state, model, optimizer, scheduler, scaler, ema)
    start_epoch = len(history)
    if ctx.is_main:
        write_metrics(paths.metrics, history)  # drops lines of epochs after the checkpoint
    net = wrap_model(model, ctx, runtime.device, sync_bn=cfg.sync_bn) if ctx.distributed else model
    deployed = ema.module if ema is not None else model  # what is evaluated and saved

    info = {**runtime.describe(), "threads": torch.get_num_threads(), "loader": data.kind,
            "world_size": ctx.world_size, "global_batch": cfg.global_batch}
    with make_reporter(progress, cfg.epochs, len(data), cfg.batch_size) as reporter:
        reporter.note(
            f"training {cfg.arch} on {data.description} ({data.n_train} train / {data.n_val} val "
            f"images, {len(data.classes)} classes) on {info['device']}, {data.kind} loader "
            f"({data.reason})"
            + (f", {ctx.world_size} processes x {cfg.batch_size} images" if ctx.distributed
               else "")
            + (f", resuming after epoch {start_epoch}" if start_epoch else ""))
        for epoch in range(start_epoch, cfg.epochs):
            data.set_epoch(epoch)
            reporter.start_epoch(epoch + 1)
            stats = train_one_epoch(net, data.train, optimizer, scheduler, criterion,
                                    runtime, scaler, reporter, ema=ema, ctx=ctx)
            # Per-process BatchNorm statistics -> their mean (a no-op for one process).
            average_buffers(model, ctx)
            if ema is not None:
                average_buffers(ema.module, ctx)
            scores = None
            if data.val is not None and ((epoch + 1) % cfg.eval_every == 0
                                         or epoch + 1 == cfg.epochs):
                scores = evaluate(deployed, data.val, criterion, runtime, tta=cfg.tta)
            line = _metrics_line(epoch + 1, stats, scores, tta=cfg.tta)
            history.append(line)
            if ctx.is_main:
                # metrics first, checkpoint second: a crash in between leaves a line that the
                # resume (which rewrites metrics.jsonl from the checkpoint) drops again.
                append_metrics(paths.metrics, line)
                save_train_state(paths.checkpoint, epoch=epoch + 1, config=cfg.to_dict(),
                                 model=model, optimizer=optimizer, scheduler=scheduler,
                                 scaler=scaler, history=history, runtime=info,
                                 ema=ema.state_dict() if ema is not None else None)
                draw_curves(history, paths.curves)
            reporter.end_epoch(line)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, line)

    if not ctx.is_main:
        return TrainResult(model_path=paths.model, card=card, params=cfg.to_dict(), metrics={},
                           rank=ctx.rank)
    metrics = _final_metrics(history, info, cfg, data.n_train, data.n_val)
    save_model(paths.model, deployed, card, extra={"config": cfg.to_dict(), "metrics": metrics})
    return TrainResult(model_path=paths.model, card=card, params=cfg.to_dict(), metrics=metrics)


def _metrics_line(
    epoch: int, stats: EpochStats, scores: EvalStats | None, *, tta: bool
) -> dict[str, Any]:
    """One epoch's metrics.jsonl line (val_* are None in epochs without evaluation)."""
    line = {
        "epoch": epoch, "lr": stats.lr, "train_loss": stats.loss, "train_acc": stats.acc,
        "val_loss": scores.loss if scores else None, "val_acc": scores.acc if scores else None,
        "images_per_s": stats.images_per_s, "seconds": stats.seconds,
    }
    if tta:
        line["val_acc_tta"] = scores.tta_acc if scores else None
    return line


def _restore(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    ema: ModelEma | None,
) -> list[dict[str, Any]]:
    """Load a ``last.pt`` state into freshly built objects; returns the epochs' history."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state["scaler"] and scaler.is_enabled():  # empty when the run was saved without fp16
        scaler.load_state_dict(state["scaler"])
    if ema is not None:
        if not state.get("ema"):
            raise ValueError("checkpoint has no EMA state")  # config_diff prevents this: a bug
        ema.load_state_dict(state["ema"])
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
    extra = {"val_acc_tta": last.get("val_acc_tta")} if cfg.tta else {}
    return {
        "val_acc": last["val_acc"],
        **extra,
        "val_loss": last["val_loss"],
        "train_acc": last["train_acc"],
        "train_loss": last["train_loss"],
        "epochs": len(history),
        "train_seconds": sum(h["seconds"] for h in history),
        "images_per_s": last["images_per_s"],
        "train_images": n_train,
        "val_images": n_val,
        "effective_lr": cfg.effective_lr,
        "ema": cfg.ema_decay > 0,
        **info,
    }
