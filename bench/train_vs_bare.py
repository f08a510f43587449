"""Throughput of porter's training epoch vs a bare PyTorch loop (target: >= 0.95 of bare).

Both sides train their own copy of the same model (same initial weights) on the same in-memory
data through the same kind of DataLoader (same batch size, shuffled with the same seed), on the
CPU, with SGD + momentum + weight decay:

- porter: :func:`port.train.loop.train_one_epoch` exactly as ``train()`` calls it (autocast
  context, LambdaLR step per batch, on-device loss/accuracy sums, timed progress reporting);
- bare: ``for x, y in loader: loss = ce(model(x), y); zero_grad; backward; step``.

Rounds alternate which side goes first; each round gives one porter/bare ratio of images/s
measured back to back, so a shared machine's load drift hits both sides of a ratio alike. The
last line is the median ratio.

    .venv/bin/python bench/train_vs_bare.py [--rounds 10] [--images 512] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))


def main() -> None:
    """Time porter's epoch vs a bare epoch, interleaved; print the ratio last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18_cifar")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--images", type=int, default=512, help="images per epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved epochs per side")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 = steadier on a busy machine)")
    parser.add_argument("--progress", action="store_true",
                        help="give porter its rich progress bar (as `porter train` shows it)")
    args = parser.parse_args()

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from port.models.registry import create_model
    from port.train.loop import train_one_epoch
    from port.train.optim import build_loss, build_optimizer
    from port.train.progress import Reporter, RichReporter
    from port.train.recipe import resolve
    from port.train.runtime import Runtime
    from port.train.schedule import build_scheduler

    torch.set_num_threads(args.threads)
    cfg = resolve(None, {"arch": args.arch, "width": args.width, "batch_size": args.batch_size,
                         "epochs": args.rounds + 1, "device": "cpu", "workers": 0,
                         "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine"})
    runtime = Runtime.from_config(cfg)

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, args.image_size, args.image_size, generator=gen)
    labels = torch.randint(0, 10, (args.images,), generator=gen)
    dataset = TensorDataset(images, labels)

    def loader(seed: int) -> DataLoader:
        return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(seed))

    torch.manual_seed(0)
    porter_model = create_model(args.arch, 10, width=args.width)
    bare_model = copy.deepcopy(porter_model)
    steps = len(loader(0))

    # porter: the objects train() builds.
    optimizer = build_optimizer(porter_model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    scaler = runtime.grad_scaler()
    criterion = build_loss(cfg)
    if args.progress:
        reporter: Reporter = RichReporter(cfg.epochs, steps, args.batch_size)
        reporter.__enter__()
        reporter.start_epoch(1)
    else:
        reporter = Reporter()

    # bare: the minimal loop.
    bare_opt = torch.optim.SGD(bare_model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    bare_loss = torch.nn.CrossEntropyLoss()

    def porter_epoch(seed: int) -> float:
        stats = train_one_epoch(porter_model, loader(seed), optimizer, scheduler, criterion,
                                runtime, scaler, reporter)
        return stats.images_per_s

    def bare_epoch(seed: int) -> float:
        bare_model.train()
        n = 0
        start = time.perf_counter()
        for x, y in loader(seed):
            loss = bare_loss(bare_model(x), y)
            bare_opt.zero_grad(set_to_none=True)
            loss.backward()
            bare_opt.step()
            n += y.shape[0]
        return n / (time.perf_counter() - start)

    porter_epoch(0)  # warm-up: allocator, kernels, first-call overheads
    bare_epoch(0)
    porter_ips: list[float] = []
    bare_ips: list[float] = []
    for r in range(1, args.rounds + 1):
        order = (porter_epoch, bare_epoch) if r % 2 else (bare_epoch, porter_epoch)
        for side in order:
            (porter_ips if side is porter_epoch else bare_ips).append(side(r))
    if args.progress:
        reporter.__exit__(None, None, None)

    ratios = [p / b for p, b in zip(porter_ips, bare_ips, strict=True)]
    ratio = statistics.median(ratios)
    print(f"{args.arch} width {args.width} @ {args.image_size} px, batch {args.batch_size}, "
          f"{steps} steps/epoch, {args.threads} thread(s), progress bar "
          f"{'on' if args.progress else 'off'}")
    print(f"porter {statistics.median(porter_ips):8.1f} img/s   bare "
          f"{statistics.median(bare_ips):8.1f} img/s   paired ratios {min(ratios):.3f}.."
          f"{max(ratios):.3f} over {args.rounds} rounds")
    print(f"porter/bare training images/s ratio: {ratio:.3f} "
          f"(target >= 0.95: {'yes' if ratio >= 0.95 else 'NO'})")


if __name__ == "__main__":
    main()
