"""Bounds for every number that reaches an allocation, and for model cards read from files.

A flag or a card field that sizes memory (an image size, a batch size, a class count, a name)
is checked here *before* anything is allocated, against a sane range and against the memory
this machine has free: a typo must end in one line on stderr, not in the kernel's OOM killer.
Ground floor: no torch, no numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from port.ground.errors import ModelError, UsageError
from port.ground.vocab import CHANNELS, COLOR_ORDERS, INPUT_DTYPES, LAYOUTS, OUTPUT_LAYOUTS

MIN_IMAGE_SIZE = 8  # px: below this no registered network keeps a spatial map
MAX_IMAGE_SIZE = 4096  # px: one 4096 px float32 image is 201 MB already
MAX_CLASSES = 100_000  # ImageNet-21k has 21,843 classes
MAX_CLASS_NAME = 256  # characters; names land in the manifest, the ONNX metadata, reports
MAX_TENSOR_NAME = 256  # an ONNX input/output name
MAX_BATCH = 65_536  # images in one latency/evaluation batch
MAX_IMAGES = 10_000_000  # --limit, --calib-images
MAX_WIDTH = 16.0  # width multiplier: 16x channels is already ~256x the parameters
# Share of the available memory one allocation may take: the rest is the framework's working
# set (model, activations, ONNX Runtime arenas) and the other processes of the machine.
MEMORY_SHARE = 0.5


def check_int(flag: str, value: int | None, lo: int, hi: int) -> int | None:
    """``value`` when None or an integer in ``[lo, hi]``, else a ``UsageError`` naming ``flag``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise UsageError(f"{flag} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def check_float(flag: str, value: float | None, *, lo: float | None = None,
                hi: float | None = None, lo_open: bool = False) -> float | None:
    """``value`` when None or a finite number in range (``lo`` excluded when ``lo_open``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{flag} must be a finite number, got {value!r}")
    low_ok = lo is None or (value > lo if lo_open else value >= lo)
    if not low_ok or (hi is not None and value > hi):
        left = "(" if lo_open else "["
        raise UsageError(f"{flag} must be in {left}{lo if lo is not None else '-inf'}, "
                         f"{hi if hi is not None else 'inf'}], got {value!r}")
    return float(value)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_allocation(what: str, nbytes: int, fix: str, *, free: int | None = None,
                     where: str = "this machine") -> None:
    """Refuse an allocation of ``nbytes`` for ``what`` that this machine cannot hold.

    ``fix`` says which flag to lower. ``free`` is the memory to compare with (default: the
    host's ``MemAvailable``; a GPU's free memory for device allocations, named by ``where``).
    Unknown free memory (not Linux) checks nothing.
    """
    free = available_memory() if free is None else free
    if free is not None and nbytes > MEMORY_SHARE * free:
        raise UsageError(f"{what} needs {_gib(nbytes)} but {where} has {_gib(free)} free: "
                         f"{fix}")


# Training keeps, per image of a batch, the input, its augmented copy and every layer's
# activations for the backward pass: far more than the input itself. 20x the input is a floor
# that every porter network exceeds (a CIFAR ResNet-9 keeps ~250x), so a refusal from it is a
# typo (a batch or image size off by orders of magnitude), never a tight but workable setting.
TRAIN_BYTES_PER_INPUT_BYTE = 20


def check_training_batch(batch_size: int, image_size: int, *, free: int | None = None,
                         where: str = "this machine") -> None:
    """Refuse a training batch that cannot fit: the floor estimate of one step's memory."""
    need = batch_size * image_bytes(image_size) * TRAIN_BYTES_PER_INPUT_BYTE
    check_allocation(f"a training step of {batch_size} images at {image_size} px", need,
                     "lower --batch-size or --image-size", free=free, where=where)


def image_bytes(image_size: int, channels: int = 3) -> int:
    """Bytes of one preprocessed float32 image."""
    return channels * image_size * image_size * 4


def check_class_names(names: Sequence[str], source: str) -> None:
    """Class names: at most :data:`MAX_CLASSES`, each non-empty and of bounded length."""
    if len(names) > MAX_CLASSES:
        raise ModelError(f"{source} names {len(names)} classes; at most {MAX_CLASSES} are "
                         "supported")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ModelError(f"{source}: class name {i} is empty: give every class a name")
        if len(name) > MAX_CLASS_NAME or "\n" in name:
            raise ModelError(f"{source}: class name {i} is {len(name)} characters long or spans "
                             f"lines; names must be one line of at most {MAX_CLASS_NAME}")


def check_card(card: Mapping[str, Any], source: str, *, outputs: int | None = None) -> None:
    """Validate a model card read from a file or built from flags, before anything uses it.

    The card's fields decide allocations (image size, class count, fixed batch) and what apps
    print (class names): channels is 1 or 3 with one mean and std value each, std is finite and
    > 0, the image size is in ``[MIN_IMAGE_SIZE, MAX_IMAGE_SIZE]``, a fixed batch in
    ``[1, MAX_BATCH]``, the input dtype, output layout and preprocessing layout/colour order are
    names porter knows, there is one bounded class name per output (and ``outputs``, when the
    file says it, equals the class count). ``ModelError`` naming ``source``. Keys absent from a
    card written before they existed take porter's own defaults (3 channels, NCHW, float32).
    """
    def bad(what: str) -> ModelError:
        return ModelError(f"{source}: the model card {what}: fix the card (or pass the values "
                          "as flags to `porter import` for a model without one)")

    try:
        num_classes = int(card["num_classes"])
        classes = list(card["classes"])
        pre = dict(card["preprocess"])
        mean, std = list(pre["mean"]), list(pre["std"])
        size = pre["image_size"]
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"is incomplete ({type(exc).__name__}: {exc})") from None
    if not 1 <= num_classes <= MAX_CLASSES:
        raise bad(f"has {num_classes} classes; 1 to {MAX_CLASSES} are supported")
    if outputs is not None and outputs != num_classes:
        raise bad(f"says {num_classes} classes but the model has {outputs} outputs")
    if len(classes) != num_classes:
        raise bad(f"names {len(classes)} classes for {num_classes} outputs")
    check_class_names(classes, source)
    # The resize before the centre crop may exceed the crop (256 for 224), hence twice the max.
    for key, hi in (("image_size", MAX_IMAGE_SIZE), ("crop", MAX_IMAGE_SIZE),
                    ("resize", 2 * MAX_IMAGE_SIZE)):
        value = pre.get(key, size)
        if (isinstance(value, bool) or not isinstance(value, int)
                or not MIN_IMAGE_SIZE <= value <= hi):
            raise bad(f"has {key} {value!r}; it must be an integer in "
                      f"[{MIN_IMAGE_SIZE}, {hi}] px")
    scale = pre.get("scale", 1.0)
    if not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
        raise bad(f"has scale {scale!r}; it must be a finite number > 0")
    channels = card.get("channels", 3)
    if channels not in CHANNELS or isinstance(channels, bool):
        raise bad(f"has channels {channels!r}; porter feeds 1 (grayscale) or 3 (colour)")
    for key, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise bad(f"has {len(values)} {key} values for {channels} channels")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                   for v in values):
            raise bad(f"has a non-finite or non-numeric {key} {values!r}")
    if not all(v > 0 for v in std):
        raise bad(f"has std {std!r}; every std must be > 0 (images are divided by it)")
    batch = card.get("batch")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int)
                              or not 1 <= batch <= MAX_BATCH):
        raise bad(f"has a fixed batch of {batch!r}; it must be an integer in [1, {MAX_BATCH}] "
                  "or null (any batch)")
    # The card's named fields must be words porter feeds or reads (port.ground.vocab);
    # absent = default.
    for key, allowed, default, where in (
            ("input_dtype", INPUT_DTYPES, "float32", card),
            ("output_layout", OUTPUT_LAYOUTS, "NC", card),
            ("layout", LAYOUTS, "NCHW", pre),
            ("color_order", COLOR_ORDERS, "RGB", pre)):
        value = where.get(key, default)
        if value not in allowed:
            raise bad(f"has {key} {value!r}; it must be one of {', '.join(allowed)}")
    if not isinstance(card.get("output_softmax", False), bool):
        raise bad(f"has output_softmax {card.get('output_softmax')!r}; it must be true or false")
    for key in ("input_name", "output_name", "arch"):
        value = card.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_TENSOR_NAME):
            raise bad(f"has a {key} longer than {MAX_TENSOR_NAME} characters")
