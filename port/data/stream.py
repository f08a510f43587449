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
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from port.data.imageio import read_image
from port.data.listing import balanced_subset, list_images
from port.data.pixels import geometry, image_channels, normalize
from port.data.preprocess import Preprocess
from port.ground.errors import DataError, UsageError
from port.ground.vocab import MAX_WORKERS

CHUNK_BYTES = 128 * 2**20  # preprocessed float32 per chunk: ~220 images at 224 px
MAX_CHUNK = 4096  # images (48 MB at 32 px)
# uint8 crops a worker sends back per task: under 4 MB, glibc's mmap threshold as porter fixes it
# (_release_large_buffers) and numpy's huge-page threshold, so the main process unpickles each
# task into reused heap memory instead of faulting in fresh pages. Measured at 224 px with one
# worker over 5,000 images (2-core EPYC): 32-image tasks (4.8 MB) cost the main process 772k
# page faults, 1.8-2.7 s of system time and 6.2-8.1 s of wall time; 20-image tasks with the heap
# kept (M_TRIM_THRESHOLD) 32k faults (the chunk buffer's), 0.3 s and 5.3 s.
TASK_BYTES = 3 * 2**20
MAX_TASK = 32  # images per task at most (small images: fewer, larger messages)


def chunk_images(preprocess: Preprocess, batch: int = 32) -> int:
    """Images per chunk: about :data:`CHUNK_BYTES` of float32 input, up to :data:`MAX_CHUNK`,
    a whole number of ``batch``-image batches (at least one).

    Each row runs a whole chunk before the next row starts, so larger chunks mean fewer switches
    between runtimes; the bytes bound keeps large inputs from filling memory. Whole batches:
    a batch that straddles two chunks has to be copied together from both (at 224 px and batch
    32, ~19 MB per chunk into a fresh array).
    """
    per_image = 3 * preprocess.crop * preprocess.crop * 4
    fits = max(1, min(MAX_CHUNK, CHUNK_BYTES // per_image))
    return max(batch, fits // batch * batch)


def task_images(preprocess: Preprocess) -> int:
    """Images per worker task: at most :data:`TASK_BYTES` of uint8 crops, 1 to :data:`MAX_TASK`
    (20 at 224 px, 32 at 32 px)."""
    per_image = image_channels(preprocess) * preprocess.crop * preprocess.crop
    return max(1, min(MAX_TASK, TASK_BYTES // per_image))


def default_workers() -> int:
    """Decoding processes for this machine: half the CPUs this process may use (up to 8), and
    none (decode in this process) below 4 CPUs.

    The other half runs the models (ONNX Runtime and torch use every core they are given), so
    decoding the next chunk overlaps with inference on this one instead of competing with it.
    With 2 CPUs there is no half to spare: measured on a 2-core EPYC, one worker made the
    10,000-image CIFAR-10 evaluation 77 s instead of 57 s in-process, and tied at 224 px.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return 0 if cpus < 4 else min(8, cpus // 2)


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


def _task_crops(task: _FileTask | _ArrayTask) -> Iterator[np.ndarray]:
    """Each uint8 HWC crop of one task (decoded, RGB, resized, centre-cropped), in order."""
    from PIL import Image

    pre = task.preprocess
    if isinstance(task, _FileTask):
        return (geometry(read_image(p), pre) for p in task.paths)
    return (geometry(Image.fromarray(img), pre) for img in task.pixels)


def _run_task(task: _FileTask | _ArrayTask) -> np.ndarray:
    """uint8 NHWC crops of one task, stacked (what a worker process sends back).

    Normalising to float32 happens where the chunk is assembled: a uint8 crop is a quarter of the
    bytes to send between processes and to hold while chunks wait their turn.
    """
    return np.stack(list(_task_crops(task)))


_MMAP_THRESHOLD = 4 * 2**20
_TRIM_THRESHOLD = 32 * 2**20
_malloc_fixed = False


def _release_large_buffers() -> None:
    """Have glibc give every buffer of 4 MB or more back to the system when it is freed.

    Each task's batch arrives as a new ~20 MB array (32 images at 224 px). glibc's malloc raises
    its mmap threshold to the size of such a buffer once one is freed, after which they come from
    the heap, which fragments: over a 20,000-image pass the process grew by ~130 MB that way.
    A fixed threshold (``mallopt(M_MMAP_THRESHOLD)``) keeps peak memory tied to the chunks in
    flight. Fixing it also fixes the trim threshold at glibc's 128 kB, so every task's few MB
    freed at the top of the heap went back to the system and were faulted in again for the next
    one: ``M_TRIM_THRESHOLD`` keeps up to 32 MB (peak RSS over 20,000 images at 224 px with one
    worker: 163 MB, against 160 MB over 5,000). A no-op where there is no glibc.
    """
    global _malloc_fixed
    if _malloc_fixed:
        return
    _malloc_fixed = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, _MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, _TRIM_THRESHOLD)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def page_buffer(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of ``shape`` in its own anonymous memory map, in ordinary pages.

    Why not ``np.empty``: numpy asks the kernel for transparent huge pages on every array of
    4 MB or more, and where THP is in ``madvise`` mode (Debian's default) the first such fault
    of a process may stall while the kernel compacts memory into 2 MB blocks. Measured on a
    2-core KVM guest: 1.0-1.3 s of system time to first fill a 128 MB chunk with ``np.empty``,
    80 ms in ordinary pages. The map is returned to the system when the array is freed.
    """
    import mmap

    count = int(np.prod(shape))
    raw = mmap.mmap(-1, max(count, 1) * 4)
    return np.frombuffer(raw, dtype=np.float32, count=count).reshape(shape)


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
    task_size: int | None = None  # images per worker task; None: task_images(preprocess)
    prefetch: int = 2  # chunks decoded ahead of the one being consumed
    # Fewer images are decoded in this process: starting processes would cost more than it saves.
    pool_min_images: int = 256
    paths: list[str] | None = None  # image files, or
    pixels: np.ndarray | None = None  # uint8 (N, H, W, 3) images (a view; never copied whole)
    description: str = "images"
    classes: list[str] | None = None  # class names in label order
    # Write every chunk into one buffer, allocated once per pass: a chunk's array is then
    # overwritten by the next chunk, so only a consumer that is done with a chunk (or has copied
    # what it keeps) when it asks for the next may set this (evaluate_stream is one). Why: a
    # fresh 128 MB buffer per chunk is a fresh mapping whose every page the kernel must fault in
    # and zero; on a 2-core KVM guest that was 2.5 ms per 224 px image, more than decoding it.
    recycle: bool = False

    def __post_init__(self) -> None:
        if self.task_size is None:
            self.task_size = task_images(self.preprocess)
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
            spare: list[np.ndarray] = []
            for start in range(0, n, self.chunk_size):
                stop = min(start + self.chunk_size, n)
                out = self._chunk_buffer(stop - start, spare)
                yield (normalize(self.pixels[start:stop], self.preprocess, out=out),
                       self.labels[start:stop])
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

    def _chunk_buffer(self, size: int, spare: list[np.ndarray]) -> np.ndarray:
        """A float32 NCHW array for ``size`` images: a new one, or (``recycle``) the pass's one
        buffer, made on first use at the full chunk size (``spare`` holds it)."""
        pre = self.preprocess
        # One plane per mean value: 1 for a grayscale card, 3 for colour (pixels.image_channels).
        shape = (image_channels(pre), pre.crop, pre.crop)
        if not self.recycle:
            return page_buffer((size, *shape))
        if not spare or len(spare[0]) < size:
            spare[:] = [page_buffer((max(size, self.chunk_size), *shape))]
        return spare[0][:size]

    def _assemble(self, start: int, stop: int, crops: Iterator[np.ndarray],
                  spare: list[np.ndarray]) -> np.ndarray:
        """One float32 NCHW chunk, normalised part by part into one buffer."""
        out = self._chunk_buffer(stop - start, spare)
        row = 0
        for part in crops:
            normalize(part, self.preprocess, out=out[row:row + len(part)])
            row += len(part)
        if row != len(out):
            raise DataError(f"{self.description}: decoding gave {row} images where {len(out)} "
                            "were expected")
        return out

    def _in_process(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        spare: list[np.ndarray] = []
        for start, stop in self._chunk_bounds():
            # Image by image into the chunk: no per-task uint8 batch to allocate and copy.
            crops = (crop[None] for t in self._tasks(start, stop) for crop in _task_crops(t))
            yield self._assemble(start, stop, crops, spare), self.labels[start:stop]

    def _pooled(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        _release_large_buffers()
        bounds = self._chunk_bounds()
        workers = min(self.workers, -(-len(self) // self.task_size))
        # spawn, not fork: see the module docstring.
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        pending: deque[tuple[int, int, list[Future[np.ndarray]]]] = deque()
        spare: list[np.ndarray] = []
        try:
            upcoming = iter(bounds)
            for start, stop in upcoming:  # fill the pipeline: this chunk and `prefetch` more
                pending.append((start, stop, [pool.submit(_run_task, t)
                                              for t in self._tasks(start, stop)]))
                if len(pending) > self.prefetch:
                    break
            while pending:
                start, stop, futures = pending.popleft()
                try:
                    images = self._assemble(start, stop, _results(futures), spare)
                except BrokenProcessPool:  # a worker was killed (out of memory, a signal)
                    raise DataError(f"a decoding worker process died while reading "
                                    f"{self.description} (out of memory?): rerun with fewer "
                                    "--workers, or --workers 0") from None
                nxt = next(upcoming, None)
                if nxt is not None:  # keep `prefetch` chunks decoding while this one is used
                    pending.append((*nxt, [pool.submit(_run_task, t)
                                           for t in self._tasks(*nxt)]))
                yield images, self.labels[start:stop]
        finally:
            for _, _, futures in pending:  # an error or an early stop: drop the queued work
                for f in futures:
                    if f is not None:
                        f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def _results(futures: list[Future[np.ndarray]]) -> Iterator[np.ndarray]:
    """Each future's result in order, dropping the reference as soon as it is used."""
    for i, future in enumerate(futures):
        yield future.result()
        futures[i] = None  # type: ignore[call-overload]


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
                              "workers": check_workers(workers), "classes": list(split.classes),
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


def open_split(spec: Any, split: str, *, preprocess: Preprocess, limit: int | None = None,
               seed: int = 0, chunk_size: int | None = None, workers: int | None = None,
               recycle: bool = False, batch: int = 32) -> ImageStream:
    """The evaluation stream of ``split`` of ``spec`` without torch or torchvision.

    The same images, labels and order as ``stream_split(load_split(spec, split,
    preprocess=preprocess, limit=limit, seed=seed))``: a folder is listed the way torchvision's
    ImageFolder lists it (:func:`list_images`), a ``limit`` keeps the same class-balanced subset
    (:func:`balanced_subset`). Evaluating an ONNX model then never imports torch (seconds and
    hundreds of MB). ``recycle``: see :attr:`ImageStream.recycle`; ``batch``: the batch size
    the consumer will cut chunks into (:func:`chunk_images`).
    """
    from port.data.sources import ArraySplit

    if split not in ("train", "val"):
        raise UsageError(f"unknown split '{split}': use one of train, val")
    stored = spec.source.read_split(spec, split)
    paths: list[str] | None = None
    pixels: np.ndarray | None = None
    if isinstance(stored, ArraySplit):
        classes, labels, pixels = list(stored.classes), np.asarray(stored.labels), stored.images
    else:
        classes, samples = list_images(Path(stored.directory))
        paths = [p for p, _ in samples]
        labels = np.asarray([c for _, c in samples], dtype=np.int64)
    if limit is not None and limit < len(labels):
        kept = balanced_subset(labels, limit, seed)
        labels = labels[kept]
        if paths is not None:
            paths = [paths[i] for i in kept]
        else:
            assert pixels is not None
            pixels = pixels[kept]
    return ImageStream(labels=np.asarray(labels, dtype=np.int64), preprocess=preprocess,
                       chunk_size=chunk_size or chunk_images(preprocess, batch),
                       workers=check_workers(workers), paths=paths, pixels=pixels,
                       recycle=recycle,
                       classes=classes, description=f"{spec} {split}")
