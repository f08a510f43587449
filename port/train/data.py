"""The training run's data: both splits, and the loader that feeds each (device or DataLoader).

Loader choice (``loader: auto``): the device-resident :class:`port.data.gpu_loader.DeviceLoader`
when the images are CIFAR-sized (input <= 64 px, where augmentation is pad-crop-flip-cutout)
and the uint8 copy of both splits fits the budget: half the free memory of the GPU (the rest is
for the model and its activations), or :data:`CPU_BUDGET_BYTES` of RAM on the CPU. Otherwise
a DataLoader with PIL transforms in worker processes. ``device`` / ``dataloader`` force one;
forcing ``device`` for large images or data that cannot fit at all is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from port.data.datasets import SplitData, as_uint8_tensors, default_preprocess, load_split
from port.data.gpu_loader import MAX_IMAGE_SIZE, Augment, DeviceLoader, resident_bytes
from port.data.preprocess import Preprocess
from port.data.spec import parse_data_spec
from port.ground.errors import DataError, UsageError
from port.train.distributed import DistContext
from port.train.recipe import TrainConfig
from port.train.runtime import Runtime
from port.train.state import seed_epoch
from port.train.tricks import whiten_positions

# RAM the uint8 copy may take on the CPU (CIFAR-10 train + test: 0.3 GB). Above it, the
# DataLoader path, which decodes per batch and holds nothing, is the safer default.
CPU_BUDGET_BYTES = 2 * 1024**3
# Share of the GPU's free memory the uint8 copy may take (the rest: weights, activations).
GPU_BUDGET_FRACTION = 0.5

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TrainData:
    """Both splits of a run and how they are fed."""

    train: Batches  # DeviceLoader or DataLoader (this process's shard under DDP)
    val: Batches | None  # None on ranks > 0 (rank 0 evaluates)
    classes: list[str]
    preprocess: Preprocess
    n_train: int
    n_val: int
    kind: str  # "device" | "dataloader"
    reason: str  # why that loader (for the log)
    description: str  # the data spec, for logs
    _set_epoch: Callable[[int], None]
    _whiten_images: Callable[[], torch.Tensor]

    def set_epoch(self, epoch: int) -> None:
        """Seed everything ``epoch`` draws (shuffle, augmentation, global RNGs)."""
        self._set_epoch(epoch)

    def whiten_images(self) -> torch.Tensor:
        """uint8 NCHW training images to fit a patch-whitening layer on (init_whitening picks
        its spread-out subset of them)."""
        return self._whiten_images()

    def __len__(self) -> int:
        """Optimizer steps per epoch."""
        return len(self.train)  # type: ignore[arg-type]


def choose_loader(
    wanted: str, image_size: int, n_images: int, crop_pad: int, device: torch.device
) -> tuple[str, str]:
    """``("device" | "dataloader", why)`` for ``n_images`` of ``image_size`` px."""
    if wanted == "dataloader":
        return "dataloader", "asked for"
    need = resident_bytes(n_images, image_size, crop_pad)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    small = image_size <= MAX_IMAGE_SIZE
    if wanted == "device":
        if not small:
            raise UsageError(
                f"the device-resident loader handles images up to {MAX_IMAGE_SIZE} px (crop, "
                f"flip, cutout); this run uses {image_size} px: use --loader dataloader or auto"
            )
        if free is not None and need > free:
            raise UsageError(
                f"the data set needs {need / 2**30:.1f} GiB on {device}, more than is free "
                f"({free / 2**30:.1f} GiB): use --loader dataloader or auto"
            )
        return "device", "asked for"
    if free is not None:
        budget, where = int(free * GPU_BUDGET_FRACTION), f"half the free memory of {device}"
    else:
        budget, where = CPU_BUDGET_BYTES, f"the {CPU_BUDGET_BYTES / 2**30:.0f} GiB CPU budget"
    if not small:
        return "dataloader", f"{image_size} px images need the DataLoader's augmentation"
    if need > budget:
        return "dataloader", f"{need / 2**30:.1f} GiB of images exceed {where}"
    return "device", f"{need / 2**20:.0f} MiB of images fit on {device}"


def build_data(
    cfg: TrainConfig, runtime: Runtime, ctx: DistContext, *, download: bool
) -> TrainData:
    """Load both splits and build their loaders (this process's shard of the training set)."""
    spec = parse_data_spec(cfg.data, download=download)
    preprocess = default_preprocess(spec, cfg.image_size)
    size = preprocess.image_size
    # The device path augments by itself and wants the split without transforms; load the
    # split once in the form the likely loader needs (a folder of 1.3 M images is slow to scan).
    maybe_device = cfg.loader != "dataloader" and size <= MAX_IMAGE_SIZE
    train_split = load_split(spec, "train", preprocess=preprocess,
                             augment=cfg.augment and not maybe_device,
                             cutout=0 if maybe_device else cfg.cutout, limit=cfg.limit,
                             seed=cfg.seed)
    val_split = load_split(spec, "val", preprocess=preprocess, limit=cfg.val_limit, seed=cfg.seed)
    if list(val_split.classes) != list(train_split.classes):
        raise DataError(f"{spec}: the val split's classes differ from the train split's: "
                        "give both splits the same class folders")
    augment = Augment.standard(size, cfg.cutout) if cfg.augment else Augment()
    kind, why = choose_loader(cfg.loader, size, len(train_split) + len(val_split),
                              augment.crop_pad, runtime.device)
    common = {"classes": list(train_split.classes), "preprocess": preprocess,
              "n_train": len(train_split), "n_val": len(val_split), "kind": kind,
              "reason": why, "description": str(spec)}
    if kind == "device":
        return _device_data(cfg, runtime, ctx, train_split, val_split, augment, common)
    if maybe_device and cfg.augment:  # did not fit after all: the transforms are needed
        train_split = load_split(spec, "train", preprocess=preprocess, augment=True,
                                 cutout=cfg.cutout, limit=cfg.limit, seed=cfg.seed)
    return _dataloader_data(cfg, runtime, ctx, train_split, val_split, common)


def _device_data(
    cfg: TrainConfig, runtime: Runtime, ctx: DistContext, train_plain: SplitData,
    val_split: SplitData, augment: Augment, common: dict,
) -> TrainData:
    p = train_plain.preprocess
    images, labels = as_uint8_tensors(train_plain)
    train = DeviceLoader(
        images, labels, batch_size=cfg.batch_size, mean=p.mean, std=p.std,
        device=runtime.device, augment=augment, shuffle=True,
        # Full batches only (when there is one): equal steps per epoch, and no 1-image batch
        # that BatchNorm cannot normalise (as in the DataLoader path).
        drop_last=True,
        seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size,
        channels_last=runtime.channels_last,
    )
    val = None
    if ctx.is_main:
        val_images, val_labels = as_uint8_tensors(val_split)
        val = DeviceLoader(val_images, val_labels, batch_size=cfg.batch_size, mean=p.mean,
                           std=p.std, device=runtime.device,
                           channels_last=runtime.channels_last)

    def set_epoch(epoch: int) -> None:
        seed_epoch(cfg.seed, epoch, rank=ctx.rank)
        train.set_epoch(epoch)

    return TrainData(train=train, val=val, _set_epoch=set_epoch,
                     _whiten_images=lambda: images, **common)


def _dataloader(
    dataset: Dataset, cfg: TrainConfig, runtime: Runtime, *, train: bool,
    generator: torch.Generator, sampler: DistributedSampler | None = None,
) -> DataLoader:
    n = len(sampler) if sampler is not None else len(dataset)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        generator=generator,  # shuffle order and worker base seed come from it
        num_workers=cfg.workers,
        pin_memory=runtime.device.type == "cuda",
        # Full batches only in training: equal steps per epoch, and no 1-image batch that
        # BatchNorm cannot normalise.
        drop_last=train and n >= cfg.batch_size,
        # Fresh workers every epoch, so their RNGs are re-seeded from (seed, epoch).
        persistent_workers=False,
    )


def _dataloader_data(
    cfg: TrainConfig, runtime: Runtime, ctx: DistContext, train_split: SplitData,
    val_split: SplitData, common: dict,
) -> TrainData:
    p = train_split.preprocess
    sampler = None
    if ctx.distributed:
        # Rank r takes positions r, r+W, ... of a permutation seeded by (seed, epoch).
        sampler = DistributedSampler(train_split.dataset, num_replicas=ctx.world_size,
                                     rank=ctx.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    generator = torch.Generator()
    train = _dataloader(train_split.dataset, cfg, runtime, train=True, generator=generator,
                        sampler=sampler)
    val = None
    if ctx.is_main:
        val = _dataloader(val_split.dataset, cfg, runtime, train=False,
                          generator=torch.Generator().manual_seed(cfg.seed))

    def set_epoch(epoch: int) -> None:
        # Per-rank seeds: each process augments its shard with its own random stream.
        seed_epoch(cfg.seed, epoch, generator, rank=ctx.rank)
        if sampler is not None:
            sampler.set_epoch(epoch)

    def whiten_images() -> torch.Tensor:
        # Decode only the images whitening uses, not the whole split.
        positions = whiten_positions(len(train_split))
        kept = train_split.indices
        chosen = [int(kept[i]) for i in positions] if kept is not None else positions
        subset = load_split(train_split.spec, "train", preprocess=p, indices=chosen)
        return as_uint8_tensors(subset)[0]

    return TrainData(train=train, val=val, _set_epoch=set_epoch, _whiten_images=whiten_images,
                     **common)
