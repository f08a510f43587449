"""A device-resident loader for data sets that fit in device memory (CIFAR-style, <= 64 px).

The whole split lives on the device as one uint8 NCHW tensor (CIFAR-10 train: 150 MB, 240 MB
with the crop padding). Every epoch draws, on the device and from a generator seeded with
``(seed, epoch)``: a permutation, and for every image its crop offset, flip bit and cutout
centre. Batches are then gathered and augmented with a handful of tensor ops: no per-sample
Python work, no worker processes, no host-to-device copies. This is what makes the fast CIFAR
recipes (Myrtle.ai, airbench) fast; a DataLoader decoding PIL images is the bottleneck there.

Augmentation matches :func:`port.data.transforms.train_transform` for small images: reflect-pad
``size // 8`` px and crop back at a random offset, flip half the images horizontally, zero a
``cutout`` px square (clipped at the border) after normalisation. Without augmentation a batch
is bit-identical to what the DataLoader path yields for the eval transform.

Because the random draws are per *image* (indexed by its position in the split), an image is
augmented the same way whatever the batch size or the number of processes: ``rank`` /
``world_size`` shard every epoch's permutation like ``DistributedSampler`` (rank r takes
positions r, r+W, r+2W, ...), so the r-th slice of a global batch is exactly what rank r gets.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

# A device-resident copy is only attempted for CIFAR-style images: larger ones need
# RandomResizedCrop-style augmentation, which this loader does not do.
MAX_IMAGE_SIZE = 64


@dataclass(frozen=True)
class Augment:
    """Batch augmentation of the training split (all off = no augmentation)."""

    crop_pad: int = 0  # reflect padding before a random crop back to the input size (0 = none)
    flip: bool = False  # horizontal flip of half the images
    cutout: int = 0  # side of a square zeroed after normalisation (0 = none)

    @classmethod
    def standard(cls, image_size: int, cutout: int = 0) -> Augment:
        """The CIFAR preset: ``image_size // 8`` px padding (4 at 32 px), flip, optional cutout."""
        return cls(crop_pad=max(1, image_size // 8), flip=True, cutout=cutout)

    @property
    def active(self) -> bool:
        """True when any augmentation is on."""
        return bool(self.crop_pad or self.flip or self.cutout)


def epoch_generator_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for ``epoch`` of a run seeded with ``seed``."""
    state = np.random.SeedSequence([seed, epoch, 0x6C0ADE]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def resident_bytes(n_images: int, image_size: int, crop_pad: int = 0) -> int:
    """Device bytes the uint8 copy of ``n_images`` square RGB images takes (padding included)."""
    side = image_size + 2 * crop_pad
    return n_images * 3 * side * side


def _reflect_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-pad uint8 NCHW images by ``pad`` px on every side (like torchvision's
    ``RandomCrop(padding_mode="reflect")``), in chunks to bound the temporary memory."""
    n, c, h, w = images.shape
    out = torch.empty((n, c, h + 2 * pad, w + 2 * pad), dtype=images.dtype, device=images.device)
    for start in range(0, n, 4096):
        chunk = images[start : start + 4096]
        out[start : start + 4096] = torch.nn.functional.pad(chunk, (pad,) * 4, mode="reflect")
    return out


class DeviceLoader:
    """Iterates ``(images, labels)`` batches of a uint8 split held on ``device``.

    ``images``: uint8 NCHW tensor (any device; copied to ``device`` once), ``labels``: int64.
    ``mean``/``std``: per-channel normalisation of [0, 1] pixels. ``shuffle`` draws a new
    permutation per epoch; ``drop_last`` drops the last partial batch (only when at least one
    full batch exists, like the DataLoader path). ``dtype`` and ``channels_last`` set the
    output format (e.g. bfloat16 + NHWC for tensor cores). Call :meth:`set_epoch` before each
    epoch; iterating twice in the same epoch gives the same batches.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        augment: Augment | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 NCHW tensor, got {images.dtype} "
                             f"{tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError("labels must hold one label per image")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.device = torch.device(device)
        self.augment = augment if augment is not None and augment.active else Augment()
        self.size = images.shape[-1]
        if self.augment.cutout > self.size:
            raise ValueError(f"cutout {self.augment.cutout} px is larger than the image")
        pad = self.augment.crop_pad
        # Pad once (on the host, where uint8 reflect padding is always available), not per
        # batch: a crop is then a pure gather on the device.
        self.images = (_reflect_pad(images.cpu(), pad) if pad else images).to(self.device)
        self.labels = labels.to(self.device, dtype=torch.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.epoch = 0

    # -- size ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches per epoch (for this rank)."""
        n = self.images_per_rank
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    @property
    def num_images(self) -> int:
        """Images in the split."""
        return int(self.labels.shape[0])

    @property
    def images_per_rank(self) -> int:
        """Images this rank sees per epoch (the split, truncated to a multiple of world_size)."""
        return self.num_images // self.world_size

    # -- epochs ---------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle and augmentation draws the next iteration uses."""
        self.epoch = int(epoch)

    def _draws(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """This epoch's permutation and per-image augmentation parameters, in a fixed order."""
        n, dev = self.num_images, self.device
        gen = torch.Generator(device=dev)
        gen.manual_seed(epoch_generator_seed(self.seed, self.epoch))
        order = (torch.randperm(n, generator=gen, device=dev) if self.shuffle
                 else torch.arange(n, device=dev))
        aug, draws = self.augment, {}
        if aug.crop_pad:
            span = 2 * aug.crop_pad + 1
            draws["dy"] = torch.randint(0, span, (n,), generator=gen, device=dev)
            draws["dx"] = torch.randint(0, span, (n,), generator=gen, device=dev)
        if aug.flip:
            draws["flip"] = torch.randint(0, 2, (n,), generator=gen, device=dev).bool()
        if aug.cutout:
            draws["cy"] = torch.randint(0, self.size, (n,), generator=gen, device=dev)
            draws["cx"] = torch.randint(0, self.size, (n,), generator=gen, device=dev)
        return order, draws

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, draws = self._draws()
        # Rank r takes positions r, r+W, ... of the permutation (DistributedSampler's split),
        # truncated so that every rank gets the same number of images.
        mine = order[: self.images_per_rank * self.world_size][self.rank :: self.world_size]
        b = self.batch_size
        for i in range(len(self)):
            idx = mine[i * b : (i + 1) * b]
            yield self._batch(idx, draws), self.labels[idx]

    # -- one batch ------------------------------------------------------------------------------
    def _batch(self, idx: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        s, aug = self.size, self.augment
        if aug.crop_pad:
            # Gather each image's crop from the padded copy with broadcast index tensors.
            ar = torch.arange(s, device=self.device)
            rows = (draws["dy"][idx, None] + ar)[:, None, :, None]  # B, 1, S, 1
            cols = (draws["dx"][idx, None] + ar)[:, None, None, :]  # B, 1, 1, S
            chans = torch.arange(self.images.shape[1], device=self.device)[None, :, None, None]
            x = self.images[idx[:, None, None, None], chans, rows, cols]
        else:
            x = self.images[idx]
        # The same float ops, in the same order, as ToTensor + Normalize (bit-identical).
        x = x.to(torch.float32).div_(255).sub_(self.mean).div_(self.std)
        if aug.flip:
            x = torch.where(draws["flip"][idx].view(-1, 1, 1, 1), x.flip(3), x)
        if aug.cutout:
            x.masked_fill_(self._cutout_mask(draws["cy"][idx], draws["cx"][idx]), 0.0)
        return x.to(dtype=self.dtype, memory_format=self.memory_format)

    def _cutout_mask(self, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
        """B x 1 x S x S mask of each image's square (DeVries & Taylor: the centre may sit near
        the border, and the square is clipped there), like :class:`port.data.transforms.Cutout`."""
        size, ar = self.augment.cutout, torch.arange(self.size, device=self.device)
        y0 = (cy - size // 2)[:, None]
        x0 = (cx - size // 2)[:, None]
        in_rows = (ar >= y0) & (ar < y0 + size)  # B, S
        in_cols = (ar >= x0) & (ar < x0 + size)
        return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
