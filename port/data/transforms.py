"""Image transforms: the evaluation pipeline of a :class:`Preprocess` and two training presets.

Every pipeline takes a PIL image of any mode and size and returns a float32 CHW tensor,
normalised with the preprocess mean/std:

Images become RGB, or 8-bit grayscale ("L") for a 1-channel model (a preprocess with one
mean/std value), so the tensor has the model's channel count.

- eval: RGB, resize the shorter side to ``resize``, centre-crop ``crop``, scale, normalise. This is
  exactly what an app feeding an exported model must do (see :mod:`port.data.preprocess`).
- train, small images (<= 64 px, CIFAR-style): resize to the input size if needed, reflect-pad
  ``size // 8`` (4 px at 32) and random-crop back, random horizontal flip, optional Cutout.
- train, large images (ImageNet-style): RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) and a random
  horizontal flip, optional Cutout.

Randomness comes only from torch's generator (torchvision's random transforms use it too), never
from python's ``random``: DataLoader seeds torch per worker from the loader's generator, so a seeded
run draws the same augmentations every time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T

# The one RGB / grayscale conversion (torch-free; to_rgb re-exported here).
from port.data.pixels import image_channels, to_channels, to_rgb
from port.data.preprocess import Preprocess

SMALL_IMAGE_MAX = 64  # input sizes up to this use the CIFAR-style pad-and-crop preset
Transform = Callable[[Image.Image], torch.Tensor]


class ToRGB:
    """Transform wrapper of :func:`to_rgb` (a class, so DataLoader workers can pickle it)."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return to_rgb(img)

    def __repr__(self) -> str:
        return "ToRGB()"


class ToChannels:
    """PIL image -> "RGB" (3 channels) or "L" (1 channel): :func:`port.data.pixels.to_channels`."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, img: Image.Image) -> Image.Image:
        return to_channels(img, self.channels)

    def __repr__(self) -> str:
        return f"ToChannels({self.channels})"


def _colour(preprocess: Preprocess) -> Callable:
    # ToRGB for colour models (unchanged pipeline), ToChannels(1) for grayscale ones.
    channels = image_channels(preprocess)
    return ToRGB() if channels == 3 else ToChannels(channels)


class Cutout:
    """Zero a ``size`` x ``size`` square at a random centre of a normalised CHW tensor.

    DeVries & Taylor (2017): the centre may lie near the border, so the square can be clipped.
    Zero after normalisation is the data set's mean colour.
    """

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"cutout size must be positive, got {size}")
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        cy = int(torch.randint(0, h, ()).item())
        cx = int(torch.randint(0, w, ()).item())
        half = self.size // 2
        y0, y1 = max(0, cy - half), min(h, cy - half + self.size)
        x0, x1 = max(0, cx - half), min(w, cx - half + self.size)
        x = x.clone()
        x[..., y0:y1, x0:x1] = 0.0
        return x

    def __repr__(self) -> str:
        return f"Cutout(size={self.size})"


class ToBGR:
    """CHW tensor in RGB -> BGR (models trained on OpenCV/Caffe channel order)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(0)

    def __repr__(self) -> str:
        return "ToBGR()"


def _tensor_steps(preprocess: Preprocess) -> list[Callable]:
    # ToTensor scales uint8 by 1/255, which is what Preprocess.scale records; a BGR model's
    # channels are swapped before Normalize (its mean/std are in BGR order), as pixels.normalize.
    swap = [ToBGR()] if preprocess.color_order == "BGR" and image_channels(preprocess) == 3 else []
    return [T.ToTensor(), *swap, T.Normalize(preprocess.mean, preprocess.std)]


def eval_transform(preprocess: Preprocess) -> Transform:
    """RGB -> resize shorter side -> centre crop -> float CHW -> normalise (no randomness).

    A 32x32 image with ``resize == crop == 32`` passes through the geometry unchanged.
    """
    return T.Compose(
        [_colour(preprocess), T.Resize(preprocess.resize), T.CenterCrop(preprocess.crop),
         *_tensor_steps(preprocess)]
    )


def train_transform(preprocess: Preprocess, *, cutout: int = 0) -> Transform:
    """The augmentation preset for the input size, ending like :func:`eval_transform`.

    ``cutout`` > 0 adds a Cutout square of that many pixels after normalisation.
    """
    size = preprocess.image_size
    steps: list[Callable] = [_colour(preprocess)]
    if size <= SMALL_IMAGE_MAX:
        pad = max(1, size // 8)  # 4 px at 32 px, the CIFAR standard
        steps += [
            # Images of another size are brought to the input size first, like eval does.
            T.Resize(preprocess.resize),
            T.CenterCrop(preprocess.crop),
            T.RandomCrop(size, padding=pad, padding_mode="reflect"),
        ]
    else:
        steps.append(T.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)))
    steps.append(T.RandomHorizontalFlip())
    steps += _tensor_steps(preprocess)
    if cutout > 0:
        steps.append(Cutout(cutout))
    return T.Compose(steps)


def geometry_transform(preprocess: Preprocess) -> Callable[[Image.Image], Image.Image]:
    """The eval pipeline without the tensor steps: RGB (or "L") PIL image, ``crop`` x ``crop``."""
    return T.Compose([_colour(preprocess), T.Resize(preprocess.resize),
                      T.CenterCrop(preprocess.crop)])
