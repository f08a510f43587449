"""Evaluation preprocessing with Pillow and numpy only: what apps run, without torch.

:func:`port.data.transforms.eval_transform` (torchvision) is what porter evaluates with; this
module computes the same numbers, bit for bit, from the same :class:`Preprocess`, so
``port.load(...).predict`` needs neither torch nor torchvision. The steps and their rules are
torchvision's (``Resize`` with an int size, ``CenterCrop``, ``ToTensor``, ``Normalize``):

1. RGB: grayscale, palette, RGBA, 16-bit... converted like porter's loaders do; for a
   1-channel model (a one-value mean/std, ``card.channels == 1``) then to PIL's "L" (ITU-R 601-2
   luma, what torchvision's ``Grayscale`` computes).
2. Resize the shorter side to ``resize`` (the longer one to ``int(resize * long / short)``) with
   PIL's bilinear filter, which antialiases (widens the filter) when it shrinks; an image that
   already has that size is left alone.
3. Centre-crop ``crop`` x ``crop``: top/left offsets ``int(round((size - crop) / 2))``; an image
   smaller than the crop is zero-padded first (left/top get the smaller half).
4. float32: ``x / 255``, then ``(x - mean) / std`` per channel, in float32, as NCHW (C = 1 or
   3: porter's canonical batch; runners convert it to the graph's layout and dtype).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from port.data.preprocess import Preprocess
from port.ground.errors import DataError, UsageError
from port.ground.vocab import CHANNELS

# Decoding errors PIL raises on broken files (see port.data.imageio for the full story).
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert grayscale, RGBA, palette, CMYK, 16-bit... images to 8-bit RGB.

    The one conversion of porter (training transforms use it too). Palette images with a
    transparent colour go through RGBA first, which is what PIL asks for (it warns otherwise);
    alpha is then dropped like torchvision's default loader does.
    """
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale (PNG): PIL's convert("L") clips at 255 instead of scaling, which
        # would turn most images white; scale the 16-bit range down to 8 bits instead.
        wide = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
    return img.convert("RGB")


def image_channels(pre: Preprocess, channels: int | None = None) -> int:
    """The channel count a preprocessing feeds: ``channels`` when given, else one per mean value.

    A card's mean/std hold one value per channel (1 for grayscale, 3 for colour); a ``channels``
    that contradicts them is refused, since normalising would silently broadcast.
    """
    per_mean = len(pre.mean)
    found = channels if channels is not None else (1 if per_mean == 1 else 3)
    if found not in CHANNELS or per_mean not in (1, found) or len(pre.std) not in (1, found):
        raise UsageError(f"a {found}-channel model cannot be normalised with {per_mean} mean and "
                         f"{len(pre.std)} std values: give one value per channel (1 or 3)")
    return found


def to_gray(img: Image.Image) -> Image.Image:
    """8-bit grayscale ("L"): any mode through :func:`to_rgb`, then PIL's 601-2 luma.

    An "L" image is returned as is (its RGB copy would convert back to the same values).
    """
    return img if img.mode == "L" else to_rgb(img).convert("L")


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """``img`` as the 8-bit mode a ``channels``-channel model reads: "L" (1) or "RGB" (3)."""
    return to_gray(img) if channels == 1 else to_rgb(img)


def open_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully into an RGB image; ``DataError`` naming the file when it is broken."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except FileNotFoundError:
        raise DataError(f"image {path} not found: check the path") from None
    except _READ_ERRORS as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"cannot read image {path} ({reason}): remove or replace the "
                        "file") from None
    return to_rgb(img)


def resized_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to ``resize`` (torchvision's rule)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def geometry(img: Image.Image, pre: Preprocess, channels: int | None = None) -> np.ndarray:
    """RGB (or "L" for 1 channel), resized and centre-cropped: a uint8 (crop, crop, C) array."""
    img = to_channels(img, image_channels(pre, channels))
    size = resized_size(img.width, img.height, pre.resize)
    if size != img.size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.uint8)
    if pixels.ndim == 2:  # "L": one channel axis, like RGB's three
        pixels = pixels[:, :, None]
    crop = pre.crop
    height, width = pixels.shape[:2]
    if crop > width or crop > height:
        pad_w, pad_h = max(crop - width, 0), max(crop - height, 0)
        pixels = np.pad(pixels, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2),
                                 (0, 0)))
        height, width = pixels.shape[:2]
    top = round((height - crop) / 2.0)  # Python's round: half to even, as torchvision
    left = round((width - crop) / 2.0)
    return np.ascontiguousarray(pixels[top:top + crop, left:left + crop])


def luma(rgb: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) RGB -> uint8 (..., 1) grayscale, exactly PIL's ``convert("L")``.

    PIL's fixed-point ITU-R 601-2 luma: ``(R*19595 + G*38470 + B*7471 + 2**15) >> 16``.
    """
    x = rgb.astype(np.uint32)
    y = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16
    return y.astype(np.uint8)[..., None]


def normalize(batch: np.ndarray, pre: Preprocess, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W): ``x / 255``, ``- mean``, ``/ std``.

    RGB pixels for a 1-channel preprocess (in-memory arrays already at the input size) become
    grayscale first (:func:`luma`, the same values the per-image ``"L"`` conversion gives); a
    ``color_order`` of ``BGR`` reverses the channels before ``mean``/``std`` (given in BGR).
    ``out``: a float32 NCHW buffer to write into (e.g. a slice of a chunk), else a new array.

    The same float32 operations in the same order as torchvision's ``ToTensor`` +
    ``Normalize``, hence identical bits.
    """
    if batch.shape[-1] == 3 and image_channels(pre) == 1:
        batch = luma(batch)
    elif batch.shape[-1] == 3 and pre.color_order == "BGR":
        # A model trained on BGR (OpenCV, Caffe): its mean/std are in its own channel order.
        batch = batch[..., ::-1]
    n, h, w, c = batch.shape
    if out is None:
        out = np.empty((n, c, h, w), dtype=np.float32)
    elif out.shape != (n, c, h, w) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {(n, c, h, w)}")
    # In place, one buffer: the same float32 operations as ToTensor + Normalize (exact uint8 ->
    # float32, / 255, - mean, / std), without three temporaries the size of the batch (they
    # made this ~2x slower at 224 px and it runs in evaluate's main process, beside the model).
    np.copyto(out, batch.transpose(0, 3, 1, 2), casting="unsafe")
    out /= np.float32(255)
    out -= np.asarray(pre.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    out /= np.asarray(pre.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return out


def as_images(images: Any) -> list[Image.Image | np.ndarray]:
    """One image or a batch, as a list: paths, PIL images, uint8 HWC arrays or NHWC batches."""
    if isinstance(images, str | Path | Image.Image):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            return [images]
        if images.ndim == 4:
            return list(images)
        raise UsageError(f"an image array must be HWC or NHWC uint8, got shape {images.shape}")
    if isinstance(images, Sequence) and not isinstance(images, bytes | bytearray):
        return list(images)
    raise UsageError(f"cannot read images from a {type(images).__name__}: pass file paths, PIL "
                     "images or uint8 HWC arrays")


def _to_pil(image: Any) -> Image.Image:
    if isinstance(image, str | Path):
        return open_image(image)
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise UsageError(f"image arrays must be uint8 HWC with 1, 3 or 4 channels (RGB order),"
                             f" got {image.dtype} {image.shape}")
        return Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    raise UsageError(f"cannot read an image from a {type(image).__name__}: pass a file path, a "
                     "PIL image or a uint8 HWC array")


def preprocess_images(images: Any, pre: Preprocess, *, channels: int | None = None
                      ) -> np.ndarray:
    """Any accepted image input -> porter's canonical float32 NCHW batch for the model
    (``channels``: the card's; by default one per mean value)."""
    items = as_images(images)
    if not items:
        raise UsageError("no images given: pass at least one image")
    count = image_channels(pre, channels)
    return normalize(np.stack([geometry(_to_pil(item), pre, count) for item in items]), pre)
