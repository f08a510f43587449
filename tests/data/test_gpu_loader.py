"""The device-resident loader on the CPU: shapes, determinism, augmentation statistics, sharding,
and bit-equality with the DataLoader path when nothing is augmented."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from port.data.datasets import as_uint8_tensors, load_split
from port.data.gpu_loader import Augment, DeviceLoader, resident_bytes

SIZE = 16
IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def _position_images(n: int) -> torch.Tensor:
    """n images whose pixel value encodes its position: value = 16 * row + column."""
    grid = (torch.arange(SIZE)[:, None] * SIZE + torch.arange(SIZE)[None, :]).to(torch.uint8)
    return grid.expand(n, 3, SIZE, SIZE).contiguous()


def _loader(images: torch.Tensor, augment: Augment, **kw) -> DeviceLoader:
    labels = torch.arange(images.shape[0])
    return DeviceLoader(images, labels, batch_size=kw.pop("batch_size", 64), augment=augment,
                        **{**IDENTITY, **kw})


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """Back from [0, 1] floats to the uint8 values (identity normalisation)."""
    return torch.round(x * 255).to(torch.int64)


def test_shapes_dtypes_and_length() -> None:
    images = torch.randint(0, 256, (100, 3, SIZE, SIZE), dtype=torch.uint8)
    loader = _loader(images, Augment.standard(SIZE, cutout=4), batch_size=32, shuffle=True,
                     drop_last=True, dtype=torch.bfloat16, channels_last=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 3  # 100 // 32, last partial batch dropped
    x, y = batches[0]
    assert x.shape == (32, 3, SIZE, SIZE) and x.dtype == torch.bfloat16
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == torch.int64 and y.shape == (32,)
    keep_last = _loader(images, Augment(), batch_size=32)
    assert len(keep_last) == 4 and list(keep_last)[-1][1].shape == (4,)
    assert resident_bytes(100, SIZE, 2) == 100 * 3 * 20 * 20


def test_same_seed_and_epoch_same_batches_other_epoch_differs() -> None:
    images = torch.randint(0, 256, (64, 3, SIZE, SIZE), dtype=torch.uint8)
    aug = Augment.standard(SIZE, cutout=4)
    a = _loader(images, aug, batch_size=16, shuffle=True, seed=3)
    b = _loader(images, aug, batch_size=16, shuffle=True, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    first = [y for _, y in a]
    assert all(torch.equal(u, v) for u, v in zip(first, [y for _, y in a], strict=True))
    a.set_epoch(3)
    assert not torch.equal(torch.cat(first), torch.cat([y for _, y in a]))
    assert sorted(torch.cat(first).tolist()) == list(range(64))  # a permutation of the split


def test_crops_cover_every_offset_and_match_reflect_padding() -> None:
    n, pad = 400, 2
    images = _position_images(n)
    loader = _loader(images, Augment(crop_pad=pad), batch_size=n)
    x, _ = next(iter(loader))
    values = _pixels(x[:, 0])
    # Away from the border no reflection is involved: pixel (8, 8) holds position
    # (8 + dy - pad, 8 + dx - pad), so the offsets can be read back.
    centre = values[:, 8, 8]
    dy, dx = centre // SIZE - 8 + pad, centre % SIZE - 8 + pad
    assert set(dy.tolist()) == set(dx.tolist()) == set(range(2 * pad + 1))
    padded = F.pad(images[:1].float(), (pad,) * 4, mode="reflect")[0, 0]
    for k in range(20):
        want = padded[dy[k] : dy[k] + SIZE, dx[k] : dx[k] + SIZE]
        assert torch.equal(values[k], want.to(torch.int64))


def test_flip_rate_is_about_half() -> None:
    n = 2000
    images = _position_images(n)
    x, _ = next(iter(_loader(images, Augment(flip=True), batch_size=n)))
    values = _pixels(x)
    original = images[:1].to(torch.int64)
    flipped = (values == original.flip(3)).flatten(1).all(1)
    kept = (values == original).flatten(1).all(1)
    assert bool((flipped ^ kept).all())  # every image is either mirrored or untouched
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_cutout_zeroes_one_clipped_square() -> None:
    n, size = 500, 6
    images = torch.full((n, 3, SIZE, SIZE), 255, dtype=torch.uint8)
    x, _ = next(iter(_loader(images, Augment(cutout=size), batch_size=n)))
    zero = x == 0
    assert bool((zero[:, :1] == zero).all())  # the same square in every channel
    full_squares = 0
    for mask in zero[:, 0]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= size and 1 <= len(cols) <= size
        # A solid rectangle: exactly the product of its row and column extents.
        assert mask.sum().item() == len(rows) * len(cols)
        assert rows.max() - rows.min() + 1 == len(rows)
        full_squares += int(len(rows) == len(cols) == size)
    assert full_squares > n // 3  # most centres are far enough from the border


def test_eval_batches_equal_the_dataloader_path(synthetic_spec) -> None:
    split = load_split(synthetic_spec, "val", limit=100, seed=0)
    images, labels = as_uint8_tensors(split)
    p = split.preprocess
    device = DeviceLoader(images, labels, batch_size=32, mean=p.mean, std=p.std)
    reference = DataLoader(split.dataset, batch_size=32, shuffle=False)
    for (xd, yd), (xr, yr) in zip(device, reference, strict=True):
        assert torch.equal(yd, yr)
        assert torch.equal(xd, xr)  # bit-identical to ToTensor + Normalize


def test_ranks_split_each_global_batch_and_keep_per_image_augmentation() -> None:
    images = torch.randint(0, 256, (130, 3, SIZE, SIZE), dtype=torch.uint8)
    aug = Augment.standard(SIZE, cutout=4)
    common = {"shuffle": True, "drop_last": True, "seed": 5}
    single = _loader(images, aug, batch_size=32, **common)
    ranks = [_loader(images, aug, batch_size=16, rank=r, world_size=2, **common)
             for r in range(2)]
    for loader in (single, *ranks):
        loader.set_epoch(1)
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 4
    for (x, y), *per_rank in zip(single, *ranks, strict=True):
        for r, (xr, yr) in enumerate(per_rank):
            # Rank r holds positions r, r+2, ... of the global batch, augmented identically.
            assert torch.equal(y[r::2], yr) and torch.equal(x[r::2], xr)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8 NCHW"):
        DeviceLoader(torch.zeros(2, 3, 4, 4), torch.zeros(2), batch_size=1, **IDENTITY)
    with pytest.raises(ValueError, match="rank"):
        _loader(_position_images(4), Augment(), rank=2, world_size=2)
