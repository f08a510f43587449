"""Streaming evaluation on real CIFAR-10 JPEGs: the same bits as the in-memory path."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from port import engines
from port.data.datasets import load_split, materialize
from port.data.preprocess import Preprocess
from port.data.spec import parse_data_spec
from port.data.stream import check_workers, default_workers, stream_split
from port.evaluate.compare import Candidate, evaluate, evaluate_stream
from port.ground.errors import DataError, UsageError

from .conftest import FAST_LATENCY


def _split(root: Path, limit: int | None = None, preprocess: Preprocess | None = None) -> object:
    return load_split(parse_data_spec(str(root)), "val", limit=limit, seed=0,
                      preprocess=preprocess)


def _chunks(stream: object) -> np.ndarray:
    return np.concatenate([x for x, _ in stream])  # type: ignore[attr-defined]


def test_streamed_images_are_materialize_bit_for_bit(cifar_subset_dir: Path) -> None:
    split = _split(cifar_subset_dir, limit=60)
    images, labels = materialize(split)
    # In a worker pool (forced for 60 images), chunks not a multiple of anything.
    pooled = stream_split(split, chunk_size=13, workers=2)
    pooled.pool_min_images, pooled.task_size = 0, 5
    got = list(pooled)
    assert [len(x) for x, _ in got] == [13, 13, 13, 13, 8]
    assert np.array_equal(np.concatenate([x for x, _ in got]), images)
    assert np.array_equal(np.concatenate([y for _, y in got]), labels)
    # Resized and centre-cropped (the 224 px path, smaller), in this process.
    big = replace(split.preprocess, image_size=40, resize=46, crop=40)
    resized = _split(cifar_subset_dir, limit=12, preprocess=big)
    assert np.array_equal(_chunks(stream_split(resized, chunk_size=5, workers=0)),
                          materialize(resized)[0])


def test_in_memory_arrays_stream_as_slices(synthetic_spec: object) -> None:
    split = load_split(synthetic_spec, "val", limit=50, seed=0)  # type: ignore[arg-type]
    stream = stream_split(split, chunk_size=16, workers=3)
    assert not stream.decoded  # 32 px arrays at the input size: nothing to decode
    assert np.array_equal(_chunks(stream), materialize(split)[0])
    # Arrays that must be resized go through the same per-image code as files.
    big = replace(split.preprocess, image_size=40, resize=40, crop=40)
    resized = load_split(synthetic_spec, "val", limit=6, seed=0, preprocess=big)  # type: ignore[arg-type]
    assert stream_split(resized, workers=0).decoded
    assert np.array_equal(_chunks(stream_split(resized, workers=0)), materialize(resized)[0])


def test_stream_evaluation_equals_the_in_memory_path(cifar_subset_dir: Path,
                                                     artifacts: dict[str, Path]) -> None:
    """Same logits and report numbers as every row run over the whole array at once."""
    split = _split(cifar_subset_dir, limit=45)
    images, labels = materialize(split)
    onnx_path = artifacts["onnx"]  # ONNX Runtime for both rows: the torch runner is slow here
    ref = Candidate("model", "fp32", "onnx", onnx_path, None, lambda: engines.load(onnx_path))
    cand = Candidate("onnx-fp32", "fp32", "onnx", onnx_path, None,
                     lambda: engines.load(onnx_path))
    stream = stream_split(split, chunk_size=7, workers=0)  # batches of 16 cross chunk borders
    report, outputs = evaluate_stream(ref, [cand], stream, batch_sizes=(16,), progress=False,
                                      **FAST_LATENCY)
    in_memory = evaluate(ref, [cand], images, labels, batch_sizes=(16,), progress=False,
                         **FAST_LATENCY)
    for streamed, whole in zip(report["rows"], in_memory["rows"], strict=True):
        for key in ("top1", "top5", "top1_drop_pp", "agreement", "max_abs_diff",
                    "mean_abs_diff", "passed"):
            assert streamed[key] == whole[key], key
    assert np.array_equal(outputs.labels, labels)
    # The logits are the runner's own on the whole array in batches of 16 (the old loop).
    with engines.load(onnx_path) as runner:
        name = runner.input_metadata()[0].name
        direct = np.concatenate([runner.infer({name: images[i:i + 16]})[runner.logits_output()]
                                 for i in range(0, len(images), 16)])
    assert np.array_equal(outputs.logits["onnx-fp32@onnxruntime"], direct)
    assert report["dataset"]["images"] == 45


def test_a_recycling_stream_writes_every_chunk_into_one_buffer(
        cifar_subset_dir: Path, synthetic_spec: object, artifacts: dict[str, Path]) -> None:
    """recycle: the same images, chunk by chunk, from one buffer per pass (files in this
    process, files in workers, in-memory arrays); evaluate_stream's numbers do not change."""
    split = _split(cifar_subset_dir, limit=45)
    images, labels = materialize(split)
    arrays = load_split(synthetic_spec, "val", limit=50, seed=0)  # type: ignore[arg-type]
    for source, want, workers in ((split, images, 0), (split, images, 2),
                                  (arrays, materialize(arrays)[0], 0)):
        stream = stream_split(source, chunk_size=7, workers=workers)
        stream.recycle, stream.pool_min_images, stream.task_size = True, 0, 3
        bases, offset = set(), 0
        for chunk, _ in stream:  # used before the next is asked for, as evaluate_stream does
            assert np.array_equal(chunk, want[offset:offset + len(chunk)])
            offset += len(chunk)
            bases.add(id(chunk.base if chunk.base is not None else chunk))
        assert offset == len(want) and len(bases) == 1, (workers, bases)
    # Kept as a list, recycled chunks alias: only a consumer like evaluate_stream may recycle.
    stream = stream_split(split, chunk_size=7, workers=0)
    stream.recycle = True
    kept = [x for x, _ in stream]
    assert not np.array_equal(np.concatenate(kept), images)

    onnx_path = artifacts["onnx"]
    ref = Candidate("model", "fp32", "onnx", onnx_path, None, lambda: engines.load(onnx_path))
    results = []
    for recycle in (False, True):
        stream = stream_split(split, chunk_size=7, workers=0)  # batches of 16 cross chunks
        stream.recycle = recycle
        _, outputs = evaluate_stream(ref, [], stream, batch_sizes=(16,), progress=False,
                                     **FAST_LATENCY)
        results.append(outputs)
    row = "model@onnxruntime"
    assert np.array_equal(results[0].logits[row], results[1].logits[row])
    assert np.array_equal(results[1].labels, labels)


def test_a_broken_file_is_named_from_a_worker(cifar_subset_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for src in sorted((cifar_subset_dir / "test" / cls).glob("*.jpg"))[:3]:
                (root / split / cls / src.name).write_bytes(src.read_bytes())
    bad = root / "test" / "dog" / "zz_broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    stream = stream_split(_split(root), chunk_size=4, workers=1)
    stream.pool_min_images = 0
    with pytest.raises(DataError, match=r"zz_broken\.jpg"):
        list(stream)


def test_workers_out_of_range_are_refused() -> None:
    assert check_workers(0) == 0
    with pytest.raises(UsageError, match="--workers -1"):
        check_workers(-1)


def test_open_split_lists_what_load_split_does_without_torch(cifar_subset_dir: Path) -> None:
    import subprocess
    import sys

    from torchvision.datasets.folder import IMG_EXTENSIONS

    from port.data.listing import IMG_EXTENSIONS as OURS
    from port.data.stream import open_split

    assert tuple(OURS) == tuple(IMG_EXTENSIONS)
    spec = parse_data_spec(str(cifar_subset_dir))
    for limit in (None, 37):
        split = _split(cifar_subset_dir, limit=limit)
        want = stream_split(split, workers=0)
        got = open_split(spec, "val", preprocess=split.preprocess, limit=limit, workers=0)
        assert got.paths == want.paths and got.classes == split.classes
        assert np.array_equal(got.labels, want.labels)
    # The evaluate stage's modules and the ONNX Runtime runner import no torch.
    code = ("import sys, port.stages.evaluate, port.data.stream, port.evaluate.report, "
            "port.engines.onnxrt; sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_default_workers_leave_small_machines_in_process(monkeypatch) -> None:
    # Below 4 CPUs a decoding worker only competes with the model for the cores (measured:
    # 77 s instead of 57 s for 10,000 CIFAR-10 images on 2 cores); above, half the CPUs, <= 8.
    for cpus, want in ((1, 0), (2, 0), (3, 0), (4, 2), (6, 3), (16, 8), (64, 8)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)))
        assert default_workers() == want, cpus
    assert check_workers(None) == default_workers()
