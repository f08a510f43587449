"""Training throughput: porter's training step vs a bare PyTorch loop (target: >= 0.95 of bare).

Both sides train their own copy of the same model (same initial weights) on the same data, fed
by the same loader (porter's device-resident loader by default, or a DataLoader over an
in-memory TensorDataset), at the same precision, with SGD + momentum + weight decay:

- porter: :func:`port.train.loop.train_one_epoch` exactly as ``train()`` calls it (autocast
  context, GradScaler for fp16, LambdaLR step per batch, on-device loss/accuracy sums, timed
  progress reporting, EMA when asked);
- bare: ``for x, y in loader: loss = ce(model(x), y); zero_grad; backward; step`` (with the same
  autocast, and a GradScaler for fp16).

Per device (the CPU, and CUDA when present), rounds alternate which side goes first; each
round gives one porter/bare ratio of images/s measured back to back (CUDA work is synchronised
before a clock is read), so a shared machine's load drift hits both sides of a ratio alike.
The last line gives the median ratio per device.

    .venv/bin/python bench/train_throughput.py [--devices cpu,cuda]
        [--precision auto|fp32|bf16|fp16] [--arch resnet9 --width 1.0]
        [--loader device|dataloader] [--rounds 10] [--ema]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default=None,
                        help="comma-separated: cpu, cuda (default: cpu, plus cuda when present)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto = fp32 on the CPU, bf16 autocast on CUDA")
    parser.add_argument("--arch", default="resnet9")
    parser.add_argument("--width", type=float, default=None,
                        help="default: 0.25 on the CPU, 1.0 on CUDA")
    parser.add_argument("--images", type=int, default=None,
                        help="images per epoch (default: 512 on the CPU, 10,240 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: 64 on the CPU, 512 on CUDA")
    parser.add_argument("--loader", choices=("device", "dataloader"), default="device")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved epochs per side")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op CPU threads (1 = steadier on a busy machine)")
    parser.add_argument("--ema", action="store_true",
                        help="give porter an EMA of the weights every 5 steps (a recipe cost)")
    parser.add_argument("--progress", action="store_true",
                        help="give porter its rich progress bar (as `porter train` shows it)")
    return parser.parse_args()


def _devices(text: str | None) -> list[str]:
    import torch

    if text:
        return [d.strip() for d in text.split(",") if d.strip()]
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def _loader_factory(args: argparse.Namespace, device: Any, images: Any, labels: Any,
                    batch: int, channels_last: bool) -> Callable[[int], Iterable]:
    """A function epoch -> iterable of (x, y), the same for both sides."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from port.data.gpu_loader import Augment, DeviceLoader
    from port.data.preprocess import CIFAR10_MEAN, CIFAR10_STD

    if args.loader == "device":
        loader = DeviceLoader(images, labels, batch_size=batch, mean=CIFAR10_MEAN,
                              std=CIFAR10_STD, device=device,
                              augment=Augment.standard(images.shape[-1], cutout=8),
                              shuffle=True, drop_last=True, channels_last=channels_last)

        def epoch_of(seed: int) -> Iterable:
            loader.set_epoch(seed)
            return loader

        return epoch_of
    data = TensorDataset(images.float().div(255), labels)

    def dataloader_of(seed: int) -> Iterable:
        return DataLoader(data, batch_size=batch, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(seed),
                          pin_memory=device.type == "cuda")

    return dataloader_of


def bench_device(args: argparse.Namespace, device_name: str) -> float:
    """Interleaved porter/bare epochs on one device; prints a summary, returns the median ratio."""
    import torch

    from port.models.registry import create_model
    from port.train.ema import ModelEma
    from port.train.loop import train_one_epoch
    from port.train.optim import build_loss, build_optimizer
    from port.train.progress import Reporter, RichReporter
    from port.train.recipe import resolve
    from port.train.runtime import Runtime
    from port.train.schedule import build_scheduler

    on_cuda = device_name.startswith("cuda")
    precision = args.precision if args.precision != "auto" else ("bf16" if on_cuda else "fp32")
    width = args.width if args.width is not None else (1.0 if on_cuda else 0.25)
    n_images = args.images or (10_240 if on_cuda else 512)
    batch = args.batch_size or (512 if on_cuda else 64)
    cfg = resolve(None, {
        "arch": args.arch, "width": width, "batch_size": batch, "epochs": args.rounds + 1,
        "device": device_name, "workers": 0, "lr": 0.05, "weight_decay": 5e-4,
        "schedule": "cosine", "amp": precision != "fp32",
        "amp_dtype": "float16" if precision == "fp16" else "bfloat16",
        "channels_last": on_cuda,
    })
    runtime = Runtime.from_config(cfg)
    device = runtime.device
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_images, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n_images,), generator=gen)
    loader_of = _loader_factory(args, device, images, labels, batch, runtime.channels_last)

    torch.manual_seed(0)
    porter_model = create_model(args.arch, 10, width=width).to(
        device, memory_format=runtime.memory_format)
    bare_model = copy.deepcopy(porter_model)
    steps = n_images // batch

    # porter: the objects train() builds.
    optimizer = build_optimizer(porter_model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    scaler = runtime.grad_scaler()
    criterion = build_loss(cfg)
    ema = ModelEma(porter_model, 0.99, every=5) if args.ema else None
    reporter: Reporter = (RichReporter(cfg.epochs, steps, batch) if args.progress
                          else Reporter())
    if args.progress:
        reporter.__enter__()  # type: ignore[attr-defined]
        reporter.start_epoch(1)

    # bare: the minimal loop, same precision.
    bare_opt = torch.optim.SGD(bare_model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    bare_loss = torch.nn.CrossEntropyLoss()
    bare_scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    amp_dtype = torch.float16 if precision == "fp16" else torch.bfloat16

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize(device)

    def porter_epoch(seed: int) -> float:
        stats = train_one_epoch(porter_model, loader_of(seed), optimizer, scheduler, criterion,
                                runtime, scaler, reporter, ema=ema)
        return stats.images_per_s

    def bare_epoch(seed: int) -> float:
        bare_model.train()
        n = 0
        sync()
        start = time.perf_counter()
        for x, y in loader_of(seed):
            x = x.to(device, non_blocking=True, memory_format=runtime.memory_format)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=precision != "fp32"):
                loss = bare_loss(bare_model(x), y)
            bare_opt.zero_grad(set_to_none=True)
            bare_scaler.scale(loss).backward()
            bare_scaler.step(bare_opt)
            bare_scaler.update()
            n += y.shape[0]
        sync()
        return n / (time.perf_counter() - start)

    porter_epoch(0)  # warm-up: allocator, kernels, cuDNN autotuning, first-call overheads
    bare_epoch(0)
    porter_ips: list[float] = []
    bare_ips: list[float] = []
    for r in range(1, args.rounds + 1):
        order = (porter_epoch, bare_epoch) if r % 2 else (bare_epoch, porter_epoch)
        for side in order:
            (porter_ips if side is porter_epoch else bare_ips).append(side(r))
    if args.progress:
        reporter.__exit__(None, None, None)  # type: ignore[attr-defined]

    ratios = [p / b for p, b in zip(porter_ips, bare_ips, strict=True)]
    ratio = statistics.median(ratios)
    name = torch.cuda.get_device_name(device) if on_cuda else "cpu"
    print(f"[{name}] {args.arch} width {width} @ 32 px, batch {batch}, {steps} steps/epoch, "
          f"{precision}, {args.loader} loader, {args.threads} CPU thread(s), EMA "
          f"{'on' if args.ema else 'off'}, progress bar {'on' if args.progress else 'off'}")
    print(f"[{name}] porter {statistics.median(porter_ips):10.1f} img/s   bare "
          f"{statistics.median(bare_ips):10.1f} img/s   paired ratios {min(ratios):.3f}.."
          f"{max(ratios):.3f} over {args.rounds} rounds")
    return ratio


def main() -> None:
    """Benchmark each device; print the median porter/bare ratios last."""
    args = _parse()
    import torch

    torch.set_num_threads(args.threads)
    results = {d: bench_device(args, d) for d in _devices(args.devices)}
    shown = ", ".join(f"{d} {r:.3f}" for d, r in results.items())
    verdict = "yes" if all(r >= 0.95 for r in results.values()) else "NO"
    print(f"porter/bare training images/s ratio: {shown} (target >= 0.95: {verdict})")


if __name__ == "__main__":
    main()
