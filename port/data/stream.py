"""Evaluation data in chunks: decode and preprocess a split piece by piece, in worker processes.

``materialize`` holds every preprocessed image of a split at once (0.6 MB per 224 px image: the
50,000-image ImageNet validation set would need 30 GB). :func:`stream_split` instead yields
``(images, labels)`` chunks of at most ``chunk_size`` images, each preprocessed exactly once, so
the memory an evaluation needs is bounded by the chunk size and the prefetch depth, not by the
number of images.

The numbers are those of ``materialize`` bit for bit: files are decoded by
:func:`port.data.imageio.read_image` (the loader of :class:`~port.data.datasets.FolderDataset`)
and preprocessed by :mod:`port.data.pixels`, which computes torchvision's eval transform
(``Resize``/``CenterCrop`` are PIL operations, ``ToTensor``/``Normalize`` the same float32
operations in the same order) without torch. Workers are *spawned* (never forked: the main process
may hold ONNX Runtime or torch thread pools, which do not survive a fork) and import only Pillow
and numpy, so a pool starts in well under a second.

Where decoding happens:

- in-memory arrays already at the input size (CIFAR, synthetic at 32 px): sliced and normalised
  in this process, vectorised (there is nothing to decode);
- every other split (image folders; arrays that must be resized): ``workers`` processes, each
  handed ``task_size`` images at a time, at most ``prefetch`` chunks ahead of the consumer;
  ``workers=0`` does the same work in this process.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from port.data.imageio import read_image
from port.data.pixels import geometry, normalize
from port.data.preprocess import Preprocess
from port.errors import UsageError

CHUNK_BYTES = 128 * 2**20  # preprocessed float32 per chunk: ~220 images at 224 px
MAX_CHUNK = 4096  # images (48 MB at 32 px)
MAX_WORKERS = 64


def chunk_images(preprocess: Preprocess) -> int:
    """Images per chunk: about :data:`CHUNK_BYTES` of float32 input, 32 to :data:`MAX_CHUNK`.

    Each row runs a whole chunk before the next row starts, so larger chunks mean fewer switches
    between runtimes; the bytes bound keeps large inputs from filling memory.
    """
    per_image = 3 * preprocess.crop * preprocess.crop * 4
    return max(32, min(MAX_CHUNK, CHUNK_BYTES // per_image))


def default_workers() -> int:
    """Decoding processes for this machine: half the CPUs this process may use, 1 to 8.

    The other half runs the models (ONNX Runtime and torch use every core they are given), so
    decoding the next chunk overlaps with inference on this one instead of competing with it.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus // 2))


def check_workers(workers: int | None) -> int:
    """``--workers``: ``None`` = :func:`default_workers`; 0 = in this process; refuse the rest."""
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers {workers} is out of range: use 0 (decode in this process) "
                         f"to {MAX_WORKERS}")
    return workers


# -- what one task does (runs in a worker process) -----------------------------------------------
@dataclass(frozen=True)
class _FileTask:
    """Decode and preprocess these files."""

    paths: tuple[str, ...]
    preprocess: Preprocess


@dataclass(frozen=True)
class _ArrayTask:
    """Resize/crop and normalise these in-memory uint8 HWC images."""

    pixels: np.ndarray
    preprocess: Preprocess


def _run_task(task: _FileTask | _ArrayTask) -> np.ndarray:
    """float32 NCHW batch of one task (the eval transform of every image, in order)."""
    from PIL import Image

    pre = task.preprocess
    if isinstance(task, _FileTask):
        crops = [geometry(read_image(p), pre) for p in task.paths]
    else:
        crops = [geometry(Image.fromarray(img), pre) for img in task.pixels]
    return normalize(np.stack(crops), pre)


# -- the stream ------------------------------------------------------------------------------------
@dataclass
class ImageStream:
    """A split's evaluation images as chunks; iterate it (once per pass) for ``(images, labels)``.

    ``images`` is float32 NCHW, ``labels`` int64; chunks have ``chunk_size`` images except the
    last. ``workers`` is how many processes decode (0: this process); ``decoded`` says whether the
    images need decoding at all (False: in-memory pixels at the input size).
    """

    labels: np.ndarray
    preprocess: Preprocess
    chunk_size: int = 256
    workers: int = 0
    task_size: int = 32
    prefetch: int = 2  # chunks decoded ahead of the one being consumed
    # Fewer images are decoded in this process: starting processes would cost more than it saves.
    pool_min_images: int = 256
    paths: list[str] | None = None  # image files, or
    pixels: np.ndarray | None = None  # uint8 (N, H, W, 3) images (a view; never copied whole)
    description: str = "images"

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise UsageError(f"chunk size must be positive, got {self.chunk_size}")
        if (self.paths is None) == (self.pixels is None):
            raise ValueError("an ImageStream reads either files (paths) or arrays (pixels)")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def decoded(self) -> bool:
        """True when each image goes through decode/resize/crop (files, or arrays to resize)."""
        if self.pixels is None:
            return True
        crop = self.preprocess.crop
        return not (self.preprocess.resize == crop and self.pixels.shape[1:3] == (crop, crop))

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n = len(self)
        if not self.decoded:  # vectorised: nothing to decode, one slice per chunk
            assert self.pixels is not None
            for start in range(0, n, self.chunk_size):
                stop = min(start + self.chunk_size, n)
                yield normalize(self.pixels[start:stop], self.preprocess), self.labels[start:stop]
            return
        use_pool = self.workers > 0 and n >= self.pool_min_images
        yield from (self._pooled() if use_pool else self._in_process())

    # Tasks are sub-chunks: a chunk is the concatenation of its tasks' batches, in order.
    def _tasks(self, start: int, stop: int) -> Iterator[_FileTask | _ArrayTask]:
        for lo in range(start, stop, self.task_size):
            hi = min(lo + self.task_size, stop)
            if self.paths is not None:
                yield _FileTask(tuple(self.paths[lo:hi]), self.preprocess)
            else:
                assert self.pixels is not None
                yield _ArrayTask(np.ascontiguousarray(self.pixels[lo:hi]), self.preprocess)

    def _chunk_bounds(self) -> list[tuple[int, int]]:
        n = len(self)
        return [(s, min(s + self.chunk_size, n)) for s in range(0, n, self.chunk_size)]

    def _in_process(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start, stop in self._chunk_bounds():
            parts = [_run_task(t) for t in self._tasks(start, stop)]
            yield np.concatenate(parts), self.labels[start:stop]

    def _pooled(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        bounds = self._chunk_bounds()
        workers = min(self.workers, -(-len(self) // self.task_size))
        # spawn, not fork: see the module docstring.
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        pending: deque[tuple[int, int, list[Future[np.ndarray]]]] = deque()
        try:
            upcoming = iter(bounds)
            for start, stop in upcoming:  # fill the pipeline: this chunk and `prefetch` more
                pending.append((start, stop, [pool.submit(_run_task, t)
                                              for t in self._tasks(start, stop)]))
                if len(pending) > self.prefetch:
                    break
            while pending:
                start, stop, futures = pending.popleft()
                images = np.concatenate([f.result() for f in futures])
                nxt = next(upcoming, None)
                if nxt is not None:  # keep `prefetch` chunks decoding while this one is used
                    pending.append((*nxt, [pool.submit(_run_task, t)
                                           for t in self._tasks(*nxt)]))
                yield images, self.labels[start:stop]
        finally:
            for _, _, futures in pending:  # an error or an early stop: drop the queued work
                for f in futures:
                    f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def stream_split(split: Any, *, chunk_size: int | None = None, workers: int | None = None,
                 ) -> ImageStream:
    """An :class:`ImageStream` over an evaluation split from ``load_split(..., augment=False)``.

    ``chunk_size`` defaults to :func:`chunk_images`, ``workers`` to :func:`default_workers`.

    The images and their order are those of ``materialize(split)``; only files are listed here
    (no image is read until the stream is iterated).
    """
    from port.data.datasets import ArrayDataset, FolderDataset, _unwrap

    if split.augment:
        raise UsageError("an evaluation stream takes a split loaded without augmentation")
    base, indices = _unwrap(split)
    labels = np.asarray(split.targets, dtype=np.int64)
    common: dict[str, Any] = {"labels": labels, "preprocess": split.preprocess,
                              "chunk_size": chunk_size or chunk_images(split.preprocess),
                              "workers": check_workers(workers),
                              "description": f"{split.spec} {split.split}"}
    if isinstance(base, ArrayDataset):
        whole = np.arange(len(base.images))
        # A whole split is a view of the stored array; a subset is gathered once (uint8 pixels).
        pixels = base.images if np.array_equal(indices, whole) else base.images[indices]
        return ImageStream(pixels=pixels, **common)
    if isinstance(base, FolderDataset):
        return ImageStream(paths=[str(Path(base.samples[i][0])) for i in indices], **common)
    raise UsageError(f"cannot stream a {type(base).__name__}: porter evaluates in-memory arrays "
                     "and image folders")


