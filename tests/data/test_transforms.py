"""Transforms: output shapes, value ranges, colour modes, and torch-seeded randomness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from port.data.preprocess import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, Preprocess
from port.data.transforms import Cutout, eval_transform, to_rgb, train_transform

P32 = Preprocess.for_size(32, CIFAR10_MEAN, CIFAR10_STD)
P224 = Preprocess.for_size(224, IMAGENET_MEAN, IMAGENET_STD)


def _image(h: int, w: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).convert(mode)


def _bounds(p: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(p.mean).view(3, 1, 1)
    std = torch.tensor(p.std).view(3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


@pytest.mark.parametrize("p", [P32, P224], ids=["32px", "224px"])
@pytest.mark.parametrize("size", [(32, 32), (40, 57), (300, 200)])
def test_every_pipeline_gives_normalised_chw(p: Preprocess, size: tuple[int, int]) -> None:
    img = _image(*size)
    lo, hi = _bounds(p)
    for transform in (eval_transform(p), train_transform(p), train_transform(p, cutout=8)):
        x = transform(img)
        assert x.shape == (3, p.image_size, p.image_size) and x.dtype == torch.float32
        assert bool((x >= lo - 1e-5).all() and (x <= hi + 1e-5).all())


def test_eval_of_input_sized_image_is_plain_normalisation() -> None:
    img = _image(32, 32)
    expected = (torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
                - torch.tensor(P32.mean).view(3, 1, 1)) / torch.tensor(P32.std).view(3, 1, 1)
    assert torch.allclose(eval_transform(P32)(img), expected, atol=1e-6)


def test_eval_resizes_shorter_side_then_centre_crops() -> None:
    # 224 preset: 256 x 512 -> shorter side 256 -> centre 224 x 224 of the left/right halves' join.
    arr = np.zeros((256, 512, 3), dtype=np.uint8)
    arr[:, 256:] = 255  # right half white: the centre crop straddles the boundary
    x = eval_transform(P224)(Image.fromarray(arr))
    assert x.shape == (3, 224, 224)
    lo, hi = _bounds(P224)
    assert torch.allclose(x[:, :, 0], lo[:, :, 0].expand(3, 224), atol=1e-5)
    assert torch.allclose(x[:, :, -1], hi[:, :, 0].expand(3, 224), atol=1e-5)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16"])
def test_other_modes_become_rgb(mode: str) -> None:
    if mode == "I;16":
        img = Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16))
    else:
        img = _image(32, 32, mode)
    rgb = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == (32, 32)
    assert np.asarray(rgb).max() > 100  # content kept (16-bit scaled down, not clipped to white)
    assert np.asarray(rgb).min() < 100
    assert eval_transform(P32)(img).shape == (3, 32, 32)


def test_palette_with_transparency_converts_quietly(recwarn: pytest.WarningsRecorder) -> None:
    img = _image(16, 16, "P")
    img.info["transparency"] = 0
    assert to_rgb(img).mode == "RGB"
    assert not [w for w in recwarn if "Palette" in str(w.message)]


def test_augmentation_follows_torch_seed() -> None:
    img = _image(32, 32)
    t = train_transform(P32, cutout=8)
    torch.manual_seed(123)
    a = torch.stack([t(img) for _ in range(8)])
    torch.manual_seed(123)
    b = torch.stack([t(img) for _ in range(8)])
    assert torch.equal(a, b)
    assert not all(torch.equal(a[0], a[i]) for i in range(1, 8))  # it does augment


def test_cutout_zeroes_a_square_at_most() -> None:
    x = torch.ones(3, 32, 32)
    torch.manual_seed(0)
    for _ in range(20):
        out = Cutout(8)(x)
        zeros = (out == 0).all(dim=0)
        assert 0 < int(zeros.sum()) <= 64
        rows, cols = zeros.any(dim=1).nonzero(), zeros.any(dim=0).nonzero()
        assert int(rows.max() - rows.min()) < 8 and int(cols.max() - cols.min()) < 8
    assert torch.equal(x, torch.ones(3, 32, 32))  # input untouched
